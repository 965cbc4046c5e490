"""Write the synthetic part of the shipped tokenizer's training text (deterministic).

Arithmetic problems worked digit by digit in the two formats r1lab trains on: the R1 chat
format (SPEC §8, answer in \\boxed{}) and the R1-Zero plain prompt (SPEC §4, <answer> tags),
so that their recurring words and layout become tokens. Used by scripts/train_tokenizer.sh.

    python scripts/tokenizer_corpus.py OUT.txt [--examples N] [--seed S]
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from r1lab.tokenizer import MATH_SUFFIX, render_chat, r1_zero_prompt  # noqa: E402


def add_steps(a: int, b: int) -> str:
    xs, ys = str(a)[::-1], str(b)[::-1]
    carry, lines = 0, []
    for k in range(max(len(xs), len(ys))):
        da = int(xs[k]) if k < len(xs) else 0
        db = int(ys[k]) if k < len(ys) else 0
        s = da + db + carry
        lines.append(f"{da} + {db} + {carry} = {s}, write {s % 10}, carry {s // 10}.")
        carry = s // 10
    if carry:
        lines.append(f"Final carry {carry}.")
    return "\n".join(lines)


def mul_steps(a: int, b: int) -> str:
    lines, total = [], 0
    for k, d in enumerate(str(b)[::-1]):
        part = a * int(d) * 10**k
        total += part
        lines.append(f"{a} x {d} x {10**k} = {part}, running total {total}.")
    return "\n".join(lines)


def sub_steps(a: int, b: int) -> str:
    return f"{a} - {b}: check by adding back, {a - b} + {b} = {a}."


def problem(rng: random.Random) -> tuple[str, str, int]:
    op = rng.choice("+++x-")
    a, b = rng.randint(0, 10 ** rng.randint(1, 6)), rng.randint(0, 10 ** rng.randint(1, 6))
    if op == "+":
        return f"What is {a} + {b}?", add_steps(a, b), a + b
    if op == "x":
        b = rng.randint(2, 999)
        return f"What is {a} x {b}?", mul_steps(a, b), a * b
    a, b = max(a, b), min(a, b)
    return f"What is {a} - {b}?", sub_steps(a, b), a - b


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out")
    ap.add_argument("--examples", type=int, default=4000)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    docs = []
    for n in range(args.examples):
        q, steps, ans = problem(rng)
        if n % 3 == 2:   # R1-Zero: the model writes both tag pairs itself
            docs.append(r1_zero_prompt(q) + f" <think>\n{steps}\n</think>\n<answer>{ans}</answer>")
        else:
            msgs = [{"role": "user", "content": q if n % 2 else f"{q}\n{MATH_SUFFIX}"}]
            prompt = render_chat(msgs, add_generation_prompt=True)
            docs.append(prompt + f"{steps}\nSo the answer is {ans}.\n</think>\n\nThe answer is $\\boxed{{{ans}}}$.")
    Path(args.out).write_text("\n\n".join(docs) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
