"""`r1lab demo` (= `make demo`): R1-Zero on a CPU (SPEC §4, §4b; the training issue, item 6).

1. **Before.** The base model — by default the shipped ``r1zero-base``, pre-trained by
   ``r1lab pretrain recipes/base_tiny.yaml`` (a tiny MoE of the DeepSeek-V3 architecture;
   any checkpoint directory with ``--base``) — is evaluated on
   held-out questions of the recipe's ``eval.task`` (the task's *test* split: questions hash-disjoint from every
   training question) with the paper's protocol: k samples per question at T 0.6,
   top-p 0.95, pass@1 averaged over them (SPEC §7).
2. **R1-Zero.** GRPO straight on the base model with rule rewards only
   (``recipes/r1_zero_tiny.yaml``): correctness of the ``<answer>`` plus a small format
   term, no length term. Progress bar, metrics.jsonl, plots and checkpoints are the
   trainer's (runs/demo/grpo/).
3. **After.** The same evaluation of the trained policy; the table compares them, splits
   accuracy by response shape (direct answer vs worked reasoning) and by chain length,
   shows one completion before and after, and writes ``runs/demo/summary.json``
   (``before`` / ``after``: ``pass@1``, ``mean_response_tokens``, ``format_rate`` …) and
   ``runs/demo/length_hist.png`` (response lengths before and after).

Everything is seeded: the same command prints the same table (on the same thread count).
"""

from __future__ import annotations

import json
import os
import re
import statistics
import time
from pathlib import Path

from .files import atomic_write_text

DEMO_RECIPE = Path(__file__).resolve().parent / "recipes" / "r1_zero_tiny.yaml"   # ships in the package
DEFAULT_BASE = "r1zero-base"   # shipped in r1lab/assets/models/ (checkpoint.SHIPPED_MODELS)
EVAL_QUESTIONS = 128       # held-out questions, before and after
EVAL_K = 4                 # samples per question (pass@1 = mean over them)
EVAL_TEMPERATURE = 0.6     # SPEC §7 protocol
EVAL_TOP_P = 0.95
SAMPLE_MIN_TERMS = 5       # the sample shown is a long chain (where reasoning matters)


class DemoError(ValueError):
    """A demo problem a user can fix (one line)."""


def _evaluate(model, tokenizer, cfg, out: Path, questions: int, k: int) -> tuple[dict, list[dict]]:
    from .eval import evaluate

    summary = evaluate(cfg.eval.task, model=model, tokenizer=tokenizer, task_options=cfg.eval.options or None,
                       split="test", k=k, temperature=EVAL_TEMPERATURE, top_p=EVAL_TOP_P,
                       max_tokens=cfg.max_new_tokens, limit=questions, seed=cfg.seed, output_dir=out,
                       prompt_style=cfg.data.prompt_style, kv_cache_mb=cfg.kv_cache_mb)
    samples = [json.loads(line) for line in (out / "samples.jsonl").read_text(encoding="utf-8").splitlines()]
    return summary, samples


def _has_reasoning(completion: str) -> bool:
    """True when the <think> block holds anything (a worked solution), False for a direct answer."""
    from .reasoning import split_reasoning

    thought, _ = split_reasoning(completion, started_in_reasoning=False)
    return bool(thought and thought.strip())


def _terms(question: str) -> int:
    """Terms of a chain_add question: ``3+5+1`` or the digit string of ``digit sum of 351 mod 4``."""
    m = re.search(r"digit sum of (\d+)", question)
    return len(m.group(1)) if m else question.count("+") + 1


def _rate(rows: list[dict]) -> float | None:
    return sum(bool(r["correct"]) for r in rows) / len(rows) if rows else None


def breakdown(samples: list[dict]) -> dict:
    """Accuracy and length of direct vs reasoning responses and per chain length."""
    reasoned = [_has_reasoning(s["completion"]) for s in samples]
    direct = [s for s, r in zip(samples, reasoned) if not r]
    worked = [s for s, r in zip(samples, reasoned) if r]
    by_terms: dict[str, dict] = {}
    for n in sorted({_terms(s["question"]) for s in samples}):
        idx = [i for i, s in enumerate(samples) if _terms(s["question"]) == n]
        rows = [samples[i] for i in idx]
        by_terms[str(n)] = {"pass@1": _rate(rows),
                            "mean_response_tokens": statistics.mean(r["num_tokens"] for r in rows),
                            "reasoning_share": sum(reasoned[i] for i in idx) / len(idx)}
    return {
        "direct": {"share": len(direct) / len(samples), "accuracy": _rate(direct),
                   "mean_tokens": statistics.mean(s["num_tokens"] for s in direct) if direct else None},
        "reasoning": {"share": len(worked) / len(samples), "accuracy": _rate(worked),
                      "mean_tokens": statistics.mean(s["num_tokens"] for s in worked) if worked else None},
        "by_terms": by_terms,
    }


def _figures(summary: dict, samples: list[dict]) -> dict:
    return {"pass@1": summary["pass@1"], "mean_response_tokens": summary["mean_response_tokens"],
            "format_rate": summary["format_rate"], f"cons@{summary['k']}": summary[f"cons@{summary['k']}"],
            "truncation_rate": summary["truncation_rate"], **breakdown(samples)}


def _pct(x) -> str:
    return "-" if x is None else f"{x:.1%}"


def _num(x) -> str:
    return "-" if x is None else f"{x:.1f}"


def print_table(before: dict, after: dict, k: int, questions: int) -> None:
    print(f"\n== held-out questions: {questions} never trained on, {k} samples each "
          f"(T {EVAL_TEMPERATURE}, top-p {EVAL_TOP_P}) ==")
    print(f"{'':<34}{'before':>10}{'after':>10}")
    print(f"{'pass@1':<34}{_pct(before['pass@1']):>10}{_pct(after['pass@1']):>10}")
    print(f"{'mean response tokens':<34}{_num(before['mean_response_tokens']):>10}"
          f"{_num(after['mean_response_tokens']):>10}")
    print(f"{'format rate (R1-Zero tags)':<34}{_pct(before['format_rate']):>10}{_pct(after['format_rate']):>10}")
    print(f"{'share answering with reasoning':<34}{_pct(before['reasoning']['share']):>10}"
          f"{_pct(after['reasoning']['share']):>10}")
    print(f"{'accuracy, direct (short) answers':<34}{_pct(before['direct']['accuracy']):>10}"
          f"{_pct(after['direct']['accuracy']):>10}")
    print(f"{'accuracy, reasoning (long) ones':<34}{_pct(before['reasoning']['accuracy']):>10}"
          f"{_pct(after['reasoning']['accuracy']):>10}")
    if len(before["by_terms"]) < 2:
        return
    print(f"\n{'terms in the chain':<20}" + "".join(f"{n:>8}" for n in before["by_terms"]))
    for key, label, fmt in (("pass@1", "pass@1 before", _pct), ("pass@1", "pass@1 after", _pct),
                            ("mean_response_tokens", "tokens before", _num),
                            ("mean_response_tokens", "tokens after", _num)):
        src = before if "before" in label else after
        print(f"{label:<20}" + "".join(f"{fmt(src['by_terms'][n][key]):>8}" for n in before["by_terms"]))


def _pick_sample(before: list[dict], after: list[dict]) -> tuple[dict, dict]:
    """The first sample of the first long-chain question (same question before and after)."""
    for b in before:
        if b["sample"] == 0 and _terms(b["question"]) >= SAMPLE_MIN_TERMS:
            a = next(s for s in after if s["id"] == b["id"] and s["sample"] == 0)
            return b, a
    return before[0], after[0]


def length_histogram(before: list[dict], after: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lb, la = [s["num_tokens"] for s in before], [s["num_tokens"] for s in after]
    top = max(lb + la) + 1
    bins = range(0, top + 4, 4)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.hist(lb, bins=bins, alpha=0.6, label=f"before RL (mean {statistics.mean(lb):.1f})")
    ax.hist(la, bins=bins, alpha=0.6, label=f"after RL (mean {statistics.mean(la):.1f})")
    ax.set_xlabel("response length (tokens)")
    ax.set_ylabel("held-out responses")
    ax.set_title("Response length before and after R1-Zero GRPO")
    ax.legend(loc="upper center")
    fig.tight_layout()
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def run_demo(base: str | Path, out_dir: Path = Path("runs/demo"), recipe: Path | None = None,
             steps: int | None = None, questions: int = EVAL_QUESTIONS, k: int = EVAL_K,
             threads: int | None = None, seed: int | None = None) -> int:
    import torch

    from .checkpoint import load_model, missing_path_message, resolve_checkpoint
    from .train.config import load_recipe, resolve_recipe, shipped_recipes
    from .train.grpo import GRPOConfig, grpo
    from .train.loop import load_start

    t_start = time.time()
    recipe = resolve_recipe(recipe) if recipe is not None else DEMO_RECIPE
    if not recipe.is_file():
        raise DemoError(f"demo recipe {recipe} not found; pass --recipe PATH or a shipped recipe name "
                        f"({', '.join(shipped_recipes())})")
    out_dir = Path(out_dir)
    if not resolve_checkpoint(base).exists():
        raise DemoError(f"{missing_path_message(base)}; pre-train one with r1lab pretrain base_tiny "
                        f"(writes runs/base_tiny/final)")
    if not resolve_checkpoint(base).is_dir():
        raise DemoError(f"base checkpoint {base} is not a directory (nor a shipped model: {DEFAULT_BASE}); "
                        f"pre-train one with r1lab pretrain recipes/base_tiny.yaml (writes runs/base_tiny/final)")
    overrides = [f"out_dir={out_dir / 'grpo'}", f"model.init={base}"]
    if seed is not None:
        overrides.append(f"seed={seed}")
    if steps is not None:
        overrides.append(f"steps={steps}")
    if threads is not None:
        overrides.append(f"threads={threads}")
    cfg = load_recipe(recipe, GRPOConfig, overrides)
    torch.set_num_threads(cfg.threads or max(1, os.cpu_count() or 1))
    base, tokenizer = load_start(cfg.model, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    if (out_dir / "grpo").exists():       # a fresh run each time (the demo is not resumable)
        import shutil
        shutil.rmtree(out_dir / "grpo")

    n_params = sum(p.numel() for p in base.parameters())
    c = base.config
    print(f"== r1lab demo: R1-Zero on a CPU ==\nbase model: {cfg.model.init} ({n_params / 1e6:.2f}M parameters; "
          f"DeepSeek-V3 architecture: {c.num_hidden_layers} layers, MLA, {c.n_routed_experts} routed experts "
          f"top-{c.num_experts_per_tok} + {c.n_shared_experts} shared, MTP depth {c.num_nextn_predict_layers})"
          f"\ntask: {cfg.data.task} {cfg.data.options}; "
          f"rewards {cfg.rewards} (no length term)\n")

    print("-- 1/3 evaluating the base model on held-out questions")
    s0, before_samples = _evaluate(base, tokenizer, cfg, out_dir / "eval_before", questions, k)
    del base

    print(f"\n-- 2/3 R1-Zero GRPO: {cfg.steps} steps × {cfg.prompts_per_step} prompts × G {cfg.group_size}, "
          f"lr {cfg.optim.lr}, T {cfg.temperature}")
    t_rl = time.time()
    result = grpo(cfg)
    rl_seconds = time.time() - t_rl
    if result["final"] is None:
        raise DemoError("GRPO stopped before its last step (interrupted); run the demo again")

    print("\n-- 3/3 evaluating the trained policy on the same held-out questions")
    trained = load_model(result["final"])
    s1, after_samples = _evaluate(trained, tokenizer, cfg, out_dir / "eval_after", questions, k)

    before, after = _figures(s0, before_samples), _figures(s1, after_samples)
    print_table(before, after, k, s0["examples"])
    b, a = _pick_sample(before_samples, after_samples)
    print(f"\nsample, question {b['question']} (= {b['gold']}):")
    print(f"  before: {b['completion']!r}  [{'right' if b['correct'] else 'wrong'}, {b['num_tokens']} tokens]")
    print(f"  after:  {a['completion']!r}  [{'right' if a['correct'] else 'wrong'}, {a['num_tokens']} tokens]")

    length_histogram(before_samples, after_samples, out_dir / "length_hist.png")
    total = time.time() - t_start
    summary = {
        "before": before, "after": after,
        "delta_pass@1_points": 100 * (after["pass@1"] - before["pass@1"]),
        "length_ratio": after["mean_response_tokens"] / before["mean_response_tokens"],
        "rl_seconds": rl_seconds, "total_seconds": total, "rl_steps": result["step"],
        "eval": {"task": cfg.eval.task, "options": cfg.eval.options, "split": "test", "questions": s0["examples"],
                 "k": k, "temperature": EVAL_TEMPERATURE, "top_p": EVAL_TOP_P},
        "recipe": str(recipe), "base_model": cfg.model.init, "seed": cfg.seed, "threads": torch.get_num_threads(),
    }
    atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    print(f"\npass@1 {before['pass@1']:.1%} -> {after['pass@1']:.1%} ({summary['delta_pass@1_points']:+.1f} points), "
          f"mean length ×{summary['length_ratio']:.2f}, RL {rl_seconds / 60:.1f} min, demo {total / 60:.1f} min")
    print(f"wrote {out_dir / 'summary.json'}, {out_dir / 'length_hist.png'}, {out_dir / 'grpo' / 'plots'}/ "
          f"(reward, accuracy, length over steps), {out_dir / 'grpo' / 'metrics.jsonl'}, "
          f"{out_dir / 'eval_before'}/, {out_dir / 'eval_after'}/")
    return 0
