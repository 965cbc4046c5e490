"""Synthetic reasoning tasks: multi-digit arithmetic with worked solutions, and countdown.

SPEC §4 (R1-Zero: rule rewards, the plain prompt) and §4b (what small reproductions
teach): a tiny model is pre-trained on a mix of short direct answers and a minority of
worked step-by-step solutions, then GRPO must make it use the worked form where the
direct one fails. So the arithmetic task is built for that:

* **difficulty knobs**: ``ops`` among ``+ - *``, ``digits=(lo, hi)`` for each operand,
  ``mul_digits=(lo, hi)`` for the multiplier of ``*`` (1–2 keeps solutions short);
* **a worked solution per example** (``meta["solution"]``) that a tiny transformer can
  execute: every step is a true equation on single digits whose inputs are a digit
  copied from a number written earlier and the carry written in the step before, and
  the number of steps grows with the number of digits;
* **train/test disjoint by construction**: a question belongs to the test split iff a
  hash of its text falls in the test bucket, whatever the seed or the knobs.

The worked format (characters are tokens with the shipped tokenizer, every digit is
one token). A section solves ``x op y`` column by column from the right; each step is
``<digit of x><op><digit of y><±><carry>=<result>`` and the section ends with its
value, written most significant digit first::

    4567+891   4567+891: 7+1+0=08 6+9+0=15 5+8+1=14 4+0+1=05 =5458
    4567-891   4567-891: 7-1-0=6 16-9-0=7 15-8-1=6 4-0-1=3 =3676
    1234*56    1234*6: 4*6+0=24 3*6+2=20 2*6+2=14 1*6+1=07 =7404
               1234*5: 4*5+0=20 3*5+2=17 2*5+1=11 1*5+1=06 =6170
               7404+61700: 4+0+0=04 0+0+0=00 4+7+0=11 7+1+1=09 0+6+0=06 =69104

Addition and multiplication steps always write a two-digit result: its last digit is
the column's digit, its first the carry into the next step (so ``=08``). Subtraction
borrows the school way: a step whose column would go negative writes the minuend with
the borrowed ten (``16-9-0=7``) and the next step subtracts the borrow. A
multiplication by a k-digit multiplier makes one section per multiplier digit (the
partial products, right to left) and k−1 addition sections that accumulate them, each
partial shifted by its zeros; sections are separated by newlines. The last ``=N`` of a
solution is the answer (a negative difference: ``8-12=-(12-8)``, that section, ``=-4``).

Completions follow the R1-Zero form (``format_completion``):
``<think> {solution} </think> <answer> {answer} </answer>``, with ``<think> </think>``
for a direct answer; a pre-training document is ``prompt + " " + completion``
(``document``; the tokenizer encodes the two parts the same alone or joined).

Chained addition (``chain_add``, the demo's task): ``37+85+12+64`` answered directly or by
running sums, ``37+85=122 122+12=134 134+64=198``; with ``mod`` the remainder,
``3+7+2+9+4 mod 10``: ``3+7=10 0+2=2 2+9=11 1+4=5`` (see ``ChainAddTask`` for why).

Countdown (TinyZero's task): reach a target with ``+ - * /`` using **each given number
exactly once** (TinyZero's rule, checked by the ``countdown`` reward in
``r1lab.rewards.countdown``); the generator builds the target from a random expression
over the numbers, so every problem is solvable, and keeps that expression.
"""

from __future__ import annotations

import hashlib
import random
import re
from collections.abc import Iterator, Sequence
from functools import partial

from r1lab.reasoning import END_THINK, THINK, extract_answer, split_reasoning
from r1lab.tasks.base import check_style, Example, Task, TaskError, register_task
from r1lab.tokenizer import r1_zero_prompt, render_chat

# ------------------------------------------------------------------ named limits and defaults
DEFAULT_TRAIN_SIZE = 10_000
DEFAULT_TEST_SIZE = 500
DEFAULT_TEST_FRACTION = 0.05     # share of all questions (by hash) that belongs to the test split
MAX_DIGITS = 12                  # per operand; worked solutions grow linearly with it
MAX_MUL_DIGITS = 4               # multiplier digits; each adds a partial product and a sum section
MAX_SAMPLING_ATTEMPTS = 100_000  # candidates drawn for one example before giving up on the knobs
MAX_DUPLICATE_STREAK = 200       # consecutive repeats in a sized split before repeats are allowed
MAX_ANSWER_CHARS = 64            # longer answer text is not an integer answer (and never parsed)
OP_ALIASES = {"+": "+", "-": "-", "−": "-", "*": "*", "x": "*", "×": "*"}
OP_NAMES = {"+": "add", "-": "sub", "*": "mul"}

COUNTDOWN_NUMBERS = (3, 4)
COUNTDOWN_NUMBER_RANGE = (1, 99)
COUNTDOWN_TARGET_RANGE = (1, 100)
MAX_COUNTDOWN_NUMBERS = 6
COUNTDOWN_RULE = "each number exactly once"

_INT_RE = re.compile(r"[+-]?[0-9]+")


# ------------------------------------------------------------------ shared helpers
def answer_part(completion: str, started_in_reasoning: bool | None = None) -> str:
    """The answer part of a completion (``split_reasoning``'s rule).

    ``started_in_reasoning`` says whether the prompt opened ``<think>`` (R1 chat: True;
    R1-Zero and plain prompts: False). None (the default; ``Task.score`` knows no prompt)
    accepts both: a completion holding ``</think>`` or opening ``<think>`` is split as if
    the prompt had opened it — what follows the first ``</think>``, nothing for a think
    block never closed — and one with neither tag is all answer.
    """
    if started_in_reasoning is not None:
        return split_reasoning(completion, started_in_reasoning=started_in_reasoning)[1]
    if END_THINK in completion or completion.lstrip().startswith(THINK):
        return split_reasoning(completion, started_in_reasoning=True)[1]
    return completion.strip()


def parse_int_answer(text: str | None) -> int | None:
    """``text`` as an integer (``-12``, `` 0042 ``; U+2212 minus accepted), else None."""
    if text is None:
        return None
    s = text.strip().replace("\u2212", "-")
    if len(s) > MAX_ANSWER_CHARS or not _INT_RE.fullmatch(s):
        return None
    return int(s)


def _split_of(namespace: str, key: str, test_fraction: float) -> str:
    """"test" iff the hash of ``key`` falls in the test bucket: seed- and knob-independent."""
    h = int.from_bytes(hashlib.blake2b(f"{namespace}:{key}".encode(), digest_size=8).digest(), "big")
    return "test" if h < test_fraction * 2.0 ** 64 else "train"


def _range(name: str, value, lo: int, hi: int) -> tuple[int, int]:
    """An int or a (min, max) pair, checked to lie within [lo, hi]."""
    if isinstance(value, bool):
        raise TaskError(f"{name} must be an integer or a (min, max) pair, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, int) and not isinstance(v, bool) for v in value)):
        raise TaskError(f"{name} must be an integer or a (min, max) pair, got {value!r}")
    a, b = value
    if not lo <= a <= b <= hi:
        raise TaskError(f"{name} must satisfy {lo} <= min <= max <= {hi}, got {tuple(value)}")
    return a, b


def _size(name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise TaskError(f"{name} must be a non-negative integer or None (endless), got {value!r}")
    return value


def _fraction(value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 1:
        raise TaskError(f"test_fraction must be a number strictly between 0 and 1, got {value!r}")
    return float(value)


class _SyntheticTask(Task):
    """Seeded, hash-split example streams shared by the synthetic tasks."""

    splits = ("train", "test")
    default_split = "test"
    default_style = "r1_zero"

    def __init__(self, seed: int, size, test_size, test_fraction):
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TaskError(f"seed must be an integer, got {seed!r}")
        self.seed = seed
        self.sizes = {"train": _size("size", size), "test": _size("test_size", test_size)}
        self.test_fraction = _fraction(test_fraction)

    # subclasses: draw one candidate -> (split key, builder of the Example) or None (draw again)
    def _candidate(self, rng: random.Random):
        raise NotImplementedError

    def examples(self, split: str | None = None) -> Iterator[Example]:
        """The split's examples, in a fixed order for a given seed; endless when its size is None.

        A sized split repeats no question unless the knobs leave too few of them.
        """
        split = self.default_split if split is None else split
        if split not in self.splits:
            raise TaskError(f"{self.name} has splits {', '.join(self.splits)}, not {split!r}")
        size = self.sizes[split]
        rng = random.Random(f"{self.name}:{self.seed}:{split}")
        seen: set[str] | None = set() if size is not None else None
        streak, i = 0, 0
        while size is None or i < size:
            for _ in range(MAX_SAMPLING_ATTEMPTS):
                drawn = self._candidate(rng)
                if drawn is None:
                    continue
                key, build = drawn
                if _split_of(self.name, key, self.test_fraction) != split:
                    continue
                if seen is not None and key in seen and streak < MAX_DUPLICATE_STREAK:
                    streak += 1
                    continue
                break
            else:
                raise TaskError(f"{self.name}: no {split} example found in {MAX_SAMPLING_ATTEMPTS} draws; "
                                f"widen the difficulty knobs or the test fraction")
            if seen is not None and key not in seen:
                seen.add(key)
                streak = 0
            yield build(f"{self.name}/{split}/{i}")
            i += 1

    def prompt(self, example: Example, style: str = "r1_zero") -> str | list[dict]:
        check_style(style)
        if style == "r1_zero":
            return r1_zero_prompt(example.question)
        if style == "chat":
            return [{"role": "user", "content": example.question}]
        return example.question

    def format_completion(self, example: Example, worked: bool, style: str = "r1_zero") -> str:
        return format_completion(example, worked, style)

    def document(self, example: Example, worked: bool, style: str = "r1_zero") -> str:
        return document(example, worked, style)

    def pretrain_corpus(self, n: int | None, worked_fraction: float = 0.25, seed: int = 0,
                        style: str = "r1_zero", parts: bool = False) -> Iterator[str | tuple[str, str]]:
        """``n`` pre-training documents (endless when None) from fresh *train* questions.

        Each is worked with probability ``worked_fraction``, direct otherwise. The questions
        are this task's endless train stream under ``seed`` (repeats allowed), so no test
        question ever appears. ``parts``: each document as its (prompt, completion) pair.
        """
        if isinstance(worked_fraction, bool) or not isinstance(worked_fraction, (int, float)) \
                or not 0 <= worked_fraction <= 1:
            raise TaskError(f"worked_fraction must be between 0 and 1, got {worked_fraction!r}")
        check_style(style)
        n = _size("n", n)
        stream = type(self)(**{**self.options, "seed": seed, "size": None}).examples("train")
        pick = random.Random(f"{self.name}:{seed}:worked")
        for i, ex in enumerate(stream):
            if n is not None and i >= n:
                return
            pair = document_parts(ex, pick.random() < worked_fraction, style)
            yield pair if parts else "".join(pair)


def _final_answer(example: Example) -> str:
    return example.meta["expression"] if isinstance(example.gold, dict) else str(example.gold)


def format_completion(example: Example, worked: bool, style: str = "r1_zero") -> str:
    """The target completion of ``example``: its worked solution or a direct answer.

    ``r1_zero`` / ``plain``: ``<think> {solution} </think> <answer> {answer} </answer>``
    (direct: ``<think> </think> <answer> {answer} </answer>``). ``chat``: what follows R1's
    generation prompt (which already opened ``<think>``): ``{solution}\\n</think>\\n\\n{answer}``.
    """
    check_style(style)
    answer = _final_answer(example)
    thought = example.meta["solution"] if worked else ""
    if style == "chat":
        return f"{thought}\n{END_THINK}\n\n{answer}"
    think = f"{THINK} {thought} {END_THINK}" if thought else f"{THINK} {END_THINK}"
    return f"{think} <answer> {answer} </answer>"


def document_parts(example: Example, worked: bool, style: str = "r1_zero") -> tuple[str, str]:
    """(prompt, completion) of a pre-training text: the prompt exactly as a generator is
    given it (``task.prompt``) and the rest — what a model writes after it.

    ``r1_zero``: ``r1_zero_prompt(q)`` and ``" " + completion``; ``plain``: ``q`` and
    ``" " + completion``; ``chat``: the rendered R1 chat prompt (it begins with the BOS text
    and ends with the generation prompt) and the completion.
    """
    completion = format_completion(example, worked, style)
    if style == "chat":
        return render_chat([{"role": "user", "content": example.question}], add_generation_prompt=True), completion
    prompt = r1_zero_prompt(example.question) if style == "r1_zero" else example.question
    return prompt, f" {completion}"


def document(example: Example, worked: bool, style: str = "r1_zero") -> str:
    """Prompt and completion as one pre-training text (``document_parts`` joined)."""
    return "".join(document_parts(example, worked, style))


# ------------------------------------------------------------------ arithmetic: worked solutions
def _digits_lsb(n: int) -> list[int]:
    return [int(c) for c in reversed(str(n))]


def _add_section(x: int, y: int) -> tuple[str, int]:
    """``x+y: a+b+c=zz ... =s`` and its number of steps."""
    dx, dy = _digits_lsb(x), _digits_lsb(y)
    width = max(len(dx), len(dy))
    steps, carry = [], 0
    for i in range(width):
        a = dx[i] if i < len(dx) else 0
        b = dy[i] if i < len(dy) else 0
        s = a + b + carry
        steps.append(f"{a}+{b}+{carry}={s:02d}")
        carry = s // 10
    return f"{x}+{y}: {' '.join(steps)} ={x + y}", width


def _sub_section(x: int, y: int) -> tuple[str, int]:
    """``x-y: a-b-c=d ... =s`` for x >= y; a borrowing step writes its minuend plus ten."""
    assert x >= y
    dx, dy = _digits_lsb(x), _digits_lsb(y)
    steps, borrow = [], 0
    for i in range(len(dx)):
        a = dx[i]
        b = dy[i] if i < len(dy) else 0
        d = a - b - borrow
        if d < 0:
            steps.append(f"{a + 10}-{b}-{borrow}={d + 10}")
            borrow = 1
        else:
            steps.append(f"{a}-{b}-{borrow}={d}")
            borrow = 0
    assert borrow == 0
    return f"{x}-{y}: {' '.join(steps)} ={x - y}", len(dx)


def _mul1_section(x: int, m: int) -> tuple[str, int]:
    """``x*m: a*m+c=zz ... =p`` for a one-digit multiplier m."""
    steps, carry = [], 0
    for a in _digits_lsb(x):
        p = a * m + carry
        steps.append(f"{a}*{m}+{carry}={p:02d}")
        carry = p // 10
    return f"{x}*{m}: {' '.join(steps)} ={x * m}", len(steps)


def worked_solution(a: int, op: str, b: int) -> tuple[str, int]:
    """The worked solution of ``a op b`` (non-negative operands) and its number of digit steps."""
    if op == "+":
        return _add_section(a, b)
    if op == "-":
        if a >= b:
            return _sub_section(a, b)
        text, steps = _sub_section(b, a)
        return f"{a}-{b}=-({b}-{a})\n{text}\n={a - b}", steps
    if op == "*":
        sections, total, acc = [], 0, None
        for k, m in enumerate(_digits_lsb(b)):
            text, steps = _mul1_section(a, m)
            sections.append(text)
            total += steps
            shifted = a * m * 10 ** k
            if acc is None:
                acc = shifted
            else:
                text, steps = _add_section(acc, shifted)
                sections.append(text)
                total += steps
                acc += shifted
        return "\n".join(sections), total
    raise TaskError(f"unknown operation {op!r}")


def _operand(rng: random.Random, digits: tuple[int, int]) -> int:
    n = rng.randint(*digits)
    return rng.randrange(10 ** (n - 1) if n > 1 else 0, 10 ** n)


class _IntegerAnswerTask(_SyntheticTask):
    """A synthetic task whose answer is one integer (arithmetic, chain_add)."""

    kind = "math"
    answer_format = "auto"

    def answer_key(self, completion: str, example: Example | None = None) -> str | None:
        """The completion's final integer, normalised (``"0042"`` -> ``"42"``); None if none.

        From the answer part: the ``<answer>`` / ``\\boxed{}`` content, else the whole answer
        part when it is a bare integer.
        """
        part = answer_part(completion)
        extracted = extract_answer(part)
        value = parse_int_answer(extracted if extracted is not None else part)
        return None if value is None else str(value)

    def score(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        """1.0 when the final integer equals the gold integer, else 0.0 (pure Python, fast)."""
        if len(completions) != len(examples):
            raise TaskError(f"{len(completions)} completions for {len(examples)} examples")
        out = []
        for c, ex in zip(completions, examples):
            key = self.answer_key(c, ex)
            out.append(1.0 if key is not None and int(key) == int(ex.gold) else 0.0)
        return out


@register_task("arithmetic")
class ArithmeticTask(_IntegerAnswerTask):
    """Seeded multi-digit arithmetic with worked solutions (see the module docstring).

    Options: ``ops`` ("+-*" or a list; ``x``/``×`` mean ``*``), ``digits`` (int or
    (min, max) digits of each operand, drawn uniformly and independently), ``mul_digits``
    (the multiplier's digits for ``*``, default (1, 2)), ``negative`` (subtraction may
    give negative results; default False: the larger operand comes first), ``seed``,
    ``size`` / ``test_size`` (None: endless), ``test_fraction``.

    ``gold`` is the integer as a string; ``meta``: ``solution`` (worked text), ``difficulty``
    (its number of single-digit steps), ``op``, ``digits`` ([digits of a, digits of b]),
    ``shape`` (e.g. "4*2").
    """

    name = "arithmetic"

    def __init__(self, ops="+-*", digits=(1, 4), mul_digits=(1, 2), negative: bool = False, seed: int = 0,
                 size: int | None = DEFAULT_TRAIN_SIZE, test_size: int | None = DEFAULT_TEST_SIZE,
                 test_fraction: float = DEFAULT_TEST_FRACTION):
        super().__init__(seed, size, test_size, test_fraction)
        if isinstance(ops, str):
            ops = list(ops)
        if not isinstance(ops, (list, tuple)) or not ops:
            raise TaskError(f"ops must be a non-empty string or list of + - *, got {ops!r}")
        canon = []
        for o in ops:
            if o not in OP_ALIASES:
                raise TaskError(f"unknown operation {o!r}; use + - *")
            if OP_ALIASES[o] not in canon:
                canon.append(OP_ALIASES[o])
        self.ops = tuple(canon)
        self.digits = _range("digits", digits, 1, MAX_DIGITS)
        self.mul_digits = _range("mul_digits", mul_digits, 1, MAX_MUL_DIGITS)
        if not isinstance(negative, bool):
            raise TaskError(f"negative must be true or false, got {negative!r}")
        self.negative = negative
        self.options = dict(ops="".join(self.ops), digits=self.digits, mul_digits=self.mul_digits,
                            negative=negative, seed=seed, size=size, test_size=test_size,
                            test_fraction=self.test_fraction)

    def _candidate(self, rng: random.Random):
        op = rng.choice(self.ops)
        a = _operand(rng, self.digits)
        b = _operand(rng, self.mul_digits if op == "*" else self.digits)
        if op == "-" and not self.negative and a < b:
            a, b = b, a
        question = f"{a}{op}{b}"

        def build(id_: str) -> Example:
            value = a + b if op == "+" else a - b if op == "-" else a * b
            solution, steps = worked_solution(a, op, b)
            meta = {"solution": solution, "difficulty": steps, "op": OP_NAMES[op],
                    "digits": [len(str(a)), len(str(b))], "shape": f"{len(str(a))}{op}{len(str(b))}"}
            return Example(id=id_, question=question, gold=str(value), meta=meta)

        return question, build


def pretrain_corpus(n: int | None, worked_fraction: float = 0.25, seed: int = 0, style: str = "r1_zero",
                    **knobs) -> Iterator[str]:
    """``n`` arithmetic pre-training documents (prompt + completion; endless when None).

    ``knobs`` are ``ArithmeticTask`` options (``ops``, ``digits``, ``mul_digits``, …);
    questions come only from the train split. ``worked_fraction`` of them carry the worked
    solution, the rest a direct answer.
    """
    return ArithmeticTask(**knobs).pretrain_corpus(n, worked_fraction=worked_fraction, seed=seed, style=style)


# ------------------------------------------------------------------ chained addition
MAX_CHAIN_TERMS = 16
CHAIN_TERMS = (2, 7)
CHAIN_DIGITS = (2, 2)


def _running_values(terms: Sequence[int], mod: int | None) -> list[int]:
    """The value after each term: the running sum, modulo ``mod`` when given."""
    values, acc = [], 0
    for t in terms:
        acc = (acc + t) % mod if mod else acc + t
        values.append(acc)
    return values


def chain_solution(terms: Sequence[int], mod: int | None = None) -> str:
    """The running sums of ``terms``: ``37+85=122 122+12=134 134+64=198``.

    Each step adds the next term to the value the step before left, so a step copies one
    number from just before it and one from the question, and the number of steps
    (terms − 1) grows with the difficulty. With ``mod`` each step writes the true sum and
    the next step starts from it modulo ``mod`` (``3+7=10 0+2=2 2+9=11 1+4=5`` for mod 10).
    """
    values = _running_values(terms, mod)
    return " ".join(f"{acc}+{t}={acc + t}" for acc, t in zip(values, terms[1:]))


def chain_rewrites(terms: Sequence[int], mod: int | None = None) -> str:
    """The chain rewritten until one number is left: ``8+7+4+6 = 5+4+6 = 9+6 = 5`` (mod 10).

    The first line copies the question's chain; each later line replaces the first two
    numbers of the line before by their sum (modulo ``mod``) and copies the rest, so every
    token is either one small sum of two tokens at fixed places in the line before, or a
    copy of the token two places further along in it — no counting of which term comes next.
    """
    line, lines = list(terms), []
    while True:
        lines.append("+".join(map(str, line)))
        if len(line) == 1:
            return " = ".join(lines)
        head = line[0] + line[1]
        line = [head % mod if mod else head] + line[2:]


def chain_prefix(terms: Sequence[int], mod: int | None = None, sep: str = " ") -> str:
    """The running values, one per term, and a conclusion: ``8 5 9 5 so the answer is 5``
    for ``8+7+4+6 mod 10`` (``sep=""``: ``8595 so the answer is 5`` for the digit sum of 8746).

    Value k is (value k−1 + term k) mod ``mod``: written one digit and one space apart,
    like the question's terms one digit and one ``+`` apart (or both as digit strings), so
    each value's inputs sit at the same distances for every k — the value just before it
    and the term a fixed number of tokens back — and nothing has to be counted. Written
    without a separator, the value before is the very token a step is predicted from: one
    lookup per step instead of two (measured: the spaced form was not learned, see
    recipes/base_tiny.yaml).
    """
    values = _running_values(terms, mod)
    return sep.join(map(str, values)) + f" so the answer is {values[-1]}"


def chain_pairs(terms: Sequence[int], mod: int | None = 10) -> str:
    """Each term followed by the running value's last digit: ``33 58 19 87`` for
    ``3 + 5 + 1 + 8 mod 10``.

    With one-digit terms and the question spaced ``3 + 5 + 1`` (three tokens a term, as a
    pair and its space), every pair sits the same number of tokens after its term: the
    first digit is a copy from a fixed distance back and the second one of 100 sums of the
    two digits just before it — nothing to count, nothing far to combine.
    """
    return " ".join(f"{t}{v % 10}" for t, v in zip(terms, _running_values(terms, mod)))


CHAIN_WORDINGS = ("mod", "last_digit", "digit_sum")
CHAIN_SOLUTIONS = {"running": chain_solution, "rewrite": chain_rewrites, "prefix": chain_prefix,
                   "pairs": chain_pairs}


@register_task("chain_add")
class ChainAddTask(_IntegerAnswerTask):
    """The sum of a chain of numbers, ``37+85+12+64+90``, or its remainder, ``3+7+2+9+4 mod 10``.

    Why this task (meant for the R1-Zero demo, SPEC §4b): a direct answer must combine
    every term at once — the last digit of a long sum of digits is the parity-like problem
    a small transformer does not learn to answer in one step — while each step of a worked
    solution (``meta["solution"]``) adds just two small numbers. Which worked form a tiny
    model learns within a CPU budget is the open question (recipes/base_tiny.yaml records
    the measurements), hence the ``solution`` variants.

    Options: ``terms`` (int or (min, max) numbers in the chain, default (2, 7)),
    ``digits`` (int or (min, max) digits of each number, default 2), ``mod`` (None: the
    sum; an integer m ≥ 2: the sum modulo m, and the question ends in `` mod m``),
    ``solution`` (``running``: running sums, ``chain_solution``; ``rewrite``: the chain
    rewritten with its first two numbers summed until one is left, ``chain_rewrites``;
    ``prefix``: the running values, ``chain_prefix``; ``pairs``: each term and the
    running last digit, ``chain_pairs``, for one-digit terms mod 10, with the question
    spaced ``3 + 5 + 1``), ``wording`` (``mod``: ``3+5+1 mod 10``; ``last_digit``:
    ``last digit of 3+5+1``, with mod 10 — the chain ends the prompt, so with ``prefix``
    each value is a fixed, short distance after its term; ``digit_sum``: ``digit sum of
    3102 mod 4``, for ``prefix``, one-digit terms and a ``mod`` m ≤ 10: the terms are
    digits below m written as one digit string, and so are the running values:
    ``3312 so the answer is 2``), ``seed``, ``size`` /
    ``test_size`` (None: endless), ``test_fraction``. ``gold`` is the answer as a string;
    ``meta``: ``solution``, ``difficulty`` (its steps: terms − 1), ``terms``.
    """

    name = "chain_add"

    def __init__(self, terms=CHAIN_TERMS, digits=CHAIN_DIGITS, mod: int | None = None, solution: str = "running",
                 wording: str = "mod", seed: int = 0,
                 size: int | None = DEFAULT_TRAIN_SIZE, test_size: int | None = DEFAULT_TEST_SIZE,
                 test_fraction: float = DEFAULT_TEST_FRACTION):
        super().__init__(seed, size, test_size, test_fraction)
        self.terms = _range("terms", terms, 2, MAX_CHAIN_TERMS)
        self.digits = _range("digits", digits, 1, MAX_DIGITS)
        if mod is not None and (isinstance(mod, bool) or not isinstance(mod, int) or mod < 2):
            raise TaskError(f"mod must be an integer >= 2 or null (the plain sum), got {mod!r}")
        self.mod = mod
        if solution not in CHAIN_SOLUTIONS:
            raise TaskError(f"solution must be one of {', '.join(CHAIN_SOLUTIONS)}, got {solution!r}")
        if solution == "pairs" and (self.digits != (1, 1) or mod != 10):
            raise TaskError("solution 'pairs' needs digits 1 and mod 10 (a pair is a term and one digit)")
        self.solution = solution
        if wording not in CHAIN_WORDINGS:
            raise TaskError(f"wording must be one of {', '.join(CHAIN_WORDINGS)}, got {wording!r}")
        if wording == "last_digit" and mod != 10:
            raise TaskError("wording 'last_digit' needs mod 10")
        if wording == "digit_sum" and (self.digits != (1, 1) or solution != "prefix" or mod is None or mod > 10):
            raise TaskError("wording 'digit_sum' needs digits 1, solution 'prefix' and a mod of at most 10 "
                            "(the chain is a string of digits below mod)")
        self.wording = wording
        self.options = dict(terms=self.terms, digits=self.digits, mod=mod, solution=solution, wording=wording,
                            seed=seed, size=size, test_size=test_size, test_fraction=self.test_fraction)
        # a digit-string question gets its running values as a digit string too
        self._sep = " + " if solution == "pairs" else "" if wording == "digit_sum" else "+"
        self._solve = partial(chain_prefix, sep="") if wording == "digit_sum" else CHAIN_SOLUTIONS[solution]

    def _candidate(self, rng: random.Random):
        n = rng.randint(*self.terms)
        if self.wording == "digit_sum":
            terms = [rng.randrange(self.mod) for _ in range(n)]
        else:
            terms = [_operand(rng, self.digits) for _ in range(n)]
        chain = self._sep.join(map(str, terms))
        if self.wording == "last_digit":
            question = f"last digit of {chain}"
        elif self.wording == "digit_sum":
            question = f"digit sum of {chain} mod {self.mod}"
        else:
            question = chain + (f" mod {self.mod}" if self.mod else "")

        def build(id_: str) -> Example:
            total = sum(terms) % self.mod if self.mod else sum(terms)
            meta = {"solution": self._solve(terms, self.mod), "difficulty": len(terms) - 1, "terms": len(terms)}
            return Example(id=id_, question=question, gold=str(total), meta=meta)

        return question, build


# ------------------------------------------------------------------ countdown
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}


def _combine(left: tuple[str, int], op: str, right: tuple[str, int]) -> tuple[str, int]:
    """Join two (text, precedence) expressions with the fewest parentheses."""
    p = _PREC[op]
    lt = f"({left[0]})" if left[1] < p else left[0]
    rt = f"({right[0]})" if right[1] < p or (right[1] == p and op in "-/") else right[0]
    return f"{lt}{op}{rt}", p


def countdown_question(numbers: Sequence[int], target: int) -> str:
    return (f"Using the numbers {list(numbers)}, create an equation that equals {target}. "
            f"You can use basic arithmetic operations (+, -, *, /) and each number must be used exactly once. "
            f"Return the final equation in <answer> </answer> tags, for example <answer> (1 + 2) / 3 </answer>")


@register_task("countdown")
class CountdownTask(_SyntheticTask):
    """TinyZero's countdown: reach ``target`` from ``numbers`` with + - * /, each number exactly once.

    Options: ``n_numbers`` (int or (min, max), default (3, 4)), ``number_range`` (default
    (1, 99)), ``target_range`` (default (1, 100)), ``seed``, ``size`` / ``test_size``,
    ``test_fraction``. Each problem is built from a random expression over all its
    numbers (intermediate values positive integers), so it is solvable; ``gold`` is
    ``{"numbers": [...], "target": int}``; ``meta``: ``expression`` (a solution),
    ``solution`` (its steps, ``44+19=63 63-35=28``), ``difficulty`` (how many numbers).
    """

    name = "countdown"
    kind = "countdown"
    answer_format = "answer_tag"

    def __init__(self, n_numbers=COUNTDOWN_NUMBERS, number_range=COUNTDOWN_NUMBER_RANGE,
                 target_range=COUNTDOWN_TARGET_RANGE, seed: int = 0, size: int | None = DEFAULT_TRAIN_SIZE,
                 test_size: int | None = DEFAULT_TEST_SIZE, test_fraction: float = DEFAULT_TEST_FRACTION):
        super().__init__(seed, size, test_size, test_fraction)
        self.n_numbers = _range("n_numbers", n_numbers, 2, MAX_COUNTDOWN_NUMBERS)
        self.number_range = _range("number_range", number_range, 1, 10 ** 6)
        self.target_range = _range("target_range", target_range, 1, 10 ** 9)
        self.options = dict(n_numbers=self.n_numbers, number_range=self.number_range,
                            target_range=self.target_range, seed=seed, size=size, test_size=test_size,
                            test_fraction=self.test_fraction)

    def _candidate(self, rng: random.Random):
        numbers = [rng.randint(*self.number_range) for _ in range(rng.randint(*self.n_numbers))]
        pool = [(n, (str(n), 3)) for n in numbers]
        steps = []
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            (x, ex), (y, ey) = pool[i], pool[j]
            op = rng.choice("+-*/")
            if op in "-/" and x < y:
                (x, ex), (y, ey) = (y, ey), (x, ex)
            if op == "-" and x == y or op == "/" and x % y:
                return None    # keep every intermediate value a positive integer: draw again
            z = x + y if op == "+" else x - y if op == "-" else x * y if op == "*" else x // y
            steps.append(f"{x}{op}{y}={z}")
            pool = [p for k, p in enumerate(pool) if k not in (i, j)] + [(z, _combine(ex, op, ey))]
        if not self.target_range[0] <= pool[0][0] <= self.target_range[1]:
            return None
        target, expression = pool[0][0], pool[0][1][0]
        key = f"{sorted(numbers)}|{target}"

        def build(id_: str) -> Example:
            meta = {"expression": expression, "solution": " ".join(steps), "difficulty": len(numbers),
                    "rule": COUNTDOWN_RULE}
            return Example(id=id_, question=countdown_question(numbers, target),
                           gold={"numbers": list(numbers), "target": target}, meta=meta)

        return key, build

    def answer_key(self, completion: str, example: Example | None = None) -> str | None:
        """The answer expression without spaces (and without a trailing ``= N``); None if none."""
        from r1lab.rewards.countdown import answer_expression

        expr = answer_expression(completion)
        return None if expr is None else re.sub(r"\s+", "", expr)

    def score(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        """1.0 when the expression uses each number exactly once and equals the target, else 0.0."""
        from r1lab.rewards.countdown import countdown_reward

        return [1.0 if r == 1.0 else 0.0 for r in countdown_reward(list(completions), list(examples))]


__all__ = [
    "ArithmeticTask", "ChainAddTask", "CountdownTask", "answer_part", "chain_pairs", "chain_prefix", "chain_rewrites",
    "chain_solution", "countdown_question", "document", "document_parts", "format_completion", "parse_int_answer",
    "pretrain_corpus", "worked_solution",
]
