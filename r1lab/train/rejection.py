"""Rejection sampling (SPEC §5 stage 3): sample k completions per prompt, keep the correct and
readable ones, write them as SFT-ready chat JSONL with a statistics report.

The paper keeps "only correct, readable" samples of the RL checkpoint and drops "mixed
language, very long paragraphs, code blocks" in the reasoning. Each of those is a named
filter here, applied in this order; a dropped completion is charged to the *first* filter
that drops it, so the report's counts add up to the candidates:

====================  ==========================================================================
``pass_rate``         the prompt's pass rate (correct / k, before any other filter) is outside
                      ``[pass_rate_min, pass_rate_max]``: every completion of it (always- or
                      never-solved prompts; off by default: the window is [0, 1])
``truncated``         the completion hit the token limit (finish reason ``length``)
``format``            no reasoning, or no answer after ``</think>`` (nothing readable to keep)
``wrong``             the task's reward says it is not correct (score < 1)
``too_short``         fewer completion tokens than ``min_tokens``
``too_long``          more completion tokens than ``max_tokens``
``language``          language consistency of the reasoning (the share of its words written in the
                      question's script, ``rewards.format.language_consistency_reward``) below
                      ``min_language``
``paragraph``         a paragraph of the reasoning (split at blank lines) longer than
                      ``max_paragraph_chars`` characters
``code``              a fenced code block (```) inside the reasoning
``duplicate``         the same text (whitespace-normalised) as a completion already kept for the prompt
``near_duplicate``    word-3-gram Jaccard similarity ≥ ``near_duplicate`` with one already kept
``per_prompt_cap``    beyond ``keep_per_prompt`` kept completions of one prompt
====================  ==========================================================================

Each filter can be switched off (``None``/``False``). ``filter_groups`` is the pure part (used by
the tests with crafted completions); ``rejection_sample`` samples with the engine, scores with
the task and writes ``OUTPUT`` (JSONL: ``{"messages": [user, assistant], "meta": {...}}``, the
assistant content ``<think>\\nREASONING\\n</think>\\n\\nANSWER`` — what ``r1lab sft`` reads) and
``OUTPUT.stats.json`` / ``OUTPUT.stats.md`` (kept and dropped per filter, per-prompt pass rates,
length histograms).
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Sequence

from ..reasoning import END_THINK, THINK, prompt_opens_reasoning, split_reasoning
from .config import TrainError

FILTERS = ("pass_rate", "truncated", "format", "wrong", "too_short", "too_long", "language", "paragraph", "code",
           "duplicate", "near_duplicate", "per_prompt_cap")
CODE_FENCE = "```"
LENGTH_BINS = (32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384, 32768)


class RejectionError(TrainError):
    """A rejection-sampling setup problem a user can fix (one line)."""


@dataclass
class FilterConfig:
    """The filters of the module docstring; ``None``/``False`` switches one off."""

    pass_rate_min: float = 0.0
    pass_rate_max: float = 1.0
    drop_truncated: bool = True
    require_format: bool = True
    require_correct: bool = True
    min_tokens: int | None = None
    max_tokens: int | None = None
    min_language: float | None = 0.95
    max_paragraph_chars: int | None = 2000
    drop_code_in_reasoning: bool = True
    dedup: bool = True
    near_duplicate: float | None = 0.9
    keep_per_prompt: int | None = None

    def __post_init__(self):
        for name in ("pass_rate_min", "pass_rate_max", "min_language", "near_duplicate"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1):
                raise RejectionError(f"{name} must be a number in [0, 1], got {v!r}")
        if self.pass_rate_min > self.pass_rate_max:
            raise RejectionError(f"pass_rate_min ({self.pass_rate_min}) is above pass_rate_max ({self.pass_rate_max})")
        for name in ("min_tokens", "max_tokens", "max_paragraph_chars", "keep_per_prompt"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise RejectionError(f"{name} must be a positive integer, got {v!r}")
        if self.min_tokens and self.max_tokens and self.min_tokens > self.max_tokens:
            raise RejectionError(f"min_tokens ({self.min_tokens}) is above max_tokens ({self.max_tokens})")


@dataclass
class Candidate:
    """One sampled completion of a prompt, scored."""

    text: str
    correct: bool
    tokens: int | None = None
    finish_reason: str | None = None
    score: float | None = None
    dropped_by: str | None = None          # set by filter_groups


@dataclass
class Group:
    """A prompt's k candidates. ``question`` (for the language target) and ``messages`` (the
    chat prompt written to the output) come from the task; ``started_in_reasoning``: the
    prompt opened ``<think>`` (the R1 chat template does)."""

    id: str
    question: str
    messages: list[dict]
    candidates: list[Candidate]
    started_in_reasoning: bool = True
    meta: dict = field(default_factory=dict)

    @property
    def pass_rate(self) -> float:
        return sum(c.correct for c in self.candidates) / len(self.candidates) if self.candidates else 0.0


# ----------------------------------------------------------------------------- the filters
def paragraphs(text: str) -> list[str]:
    """The paragraphs of a text: split at blank lines, stripped, empty ones dropped."""
    return [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _normalise(text: str) -> str:
    return " ".join(text.split())


def shingles(text: str, n: int = 3) -> set[tuple[str, ...]]:
    """Word n-grams of a text (the whole word list when it is shorter than n)."""
    words = text.split()
    if len(words) < n:
        return {tuple(words)}
    return {tuple(words[i:i + n]) for i in range(len(words) - n + 1)}


def jaccard(a: set, b: set) -> float:
    return len(a & b) / len(a | b) if a or b else 1.0


def _language(reasoning_and_rest: str, question: str, started: bool) -> float:
    from ..rewards.format import language_consistency_reward
    return language_consistency_reward([reasoning_and_rest], [{"question": question}], started_in_reasoning=started)[0]


def _first_failing(c: Candidate, g: Group, cfg: FilterConfig) -> str | None:
    """The first per-completion filter that drops ``c`` (the order of FILTERS), or None."""
    if cfg.drop_truncated and c.finish_reason == "length":
        return "truncated"
    reasoning, answer = split_reasoning(c.text, g.started_in_reasoning)
    if cfg.require_format and (not reasoning or not answer or not _closed(c.text, g.started_in_reasoning)):
        return "format"
    if cfg.require_correct and not c.correct:
        return "wrong"
    if cfg.min_tokens is not None and c.tokens is not None and c.tokens < cfg.min_tokens:
        return "too_short"
    if cfg.max_tokens is not None and c.tokens is not None and c.tokens > cfg.max_tokens:
        return "too_long"
    if cfg.min_language is not None and _language(c.text, g.question, g.started_in_reasoning) < cfg.min_language:
        return "language"
    if cfg.max_paragraph_chars is not None and any(len(p) > cfg.max_paragraph_chars for p in paragraphs(reasoning)):
        return "paragraph"
    if cfg.drop_code_in_reasoning and CODE_FENCE in reasoning:
        return "code"
    return None


def _closed(text: str, started_in_reasoning: bool) -> bool:
    """The reasoning was closed with ``</think>`` (an unclosed one has no answer either; a
    completion that never entered reasoning has no reasoning)."""
    s = text.lstrip()
    return END_THINK in s if (started_in_reasoning or s.startswith(THINK)) else False


def filter_groups(groups: Sequence[Group], cfg: FilterConfig) -> dict[str, int]:
    """Mark every candidate's ``dropped_by`` (None: kept); returns the drop counts per filter."""
    counts = dict.fromkeys(FILTERS, 0)
    for g in groups:
        for c in g.candidates:
            c.dropped_by = None
        rate = g.pass_rate
        if not cfg.pass_rate_min <= rate <= cfg.pass_rate_max:
            for c in g.candidates:
                c.dropped_by = "pass_rate"
            counts["pass_rate"] += len(g.candidates)
            continue
        kept_norm: set[str] = set()
        kept_shingles: list[set] = []
        kept = 0
        for c in g.candidates:
            why = _first_failing(c, g, cfg)
            norm = sh = None
            if why is None:
                norm = _normalise(c.text)
                if cfg.dedup and norm in kept_norm:
                    why = "duplicate"
            if why is None and cfg.near_duplicate is not None:
                sh = shingles(norm)
                if any(jaccard(sh, other) >= cfg.near_duplicate for other in kept_shingles):
                    why = "near_duplicate"
            if why is None and cfg.keep_per_prompt is not None and kept >= cfg.keep_per_prompt:
                why = "per_prompt_cap"
            if why is not None:
                c.dropped_by = why
                counts[why] += 1
                continue
            kept += 1
            kept_norm.add(norm)
            if sh is not None:
                kept_shingles.append(sh)
    return counts


# ----------------------------------------------------------------------------- records and report
def sft_record(g: Group, c: Candidate, task: str) -> dict:
    """The chat record of a kept completion: the prompt's messages, then the assistant turn
    ``<think>\\nREASONING\\n</think>\\n\\nANSWER`` (SPEC §8)."""
    reasoning, answer = split_reasoning(c.text, g.started_in_reasoning)
    content = f"{THINK}\n{reasoning}\n{END_THINK}\n\n{answer}"
    meta = {"task": task, "id": g.id, "pass_rate": g.pass_rate, "tokens": c.tokens, "score": c.score, **g.meta}
    return {"messages": [*g.messages, {"role": "assistant", "content": content}], "meta": meta}


def _histogram(values: Sequence[float], bins: Sequence[float]) -> dict[str, int]:
    out: dict[str, int] = {}
    lo = 0
    for hi in bins:
        out[f"{lo}-{hi}"] = sum(lo <= v < hi for v in values)
        lo = hi
    out[f">={lo}"] = sum(v >= lo for v in values)
    return {k: v for k, v in out.items() if v}


def statistics(groups: Sequence[Group], counts: dict[str, int], cfg: FilterConfig, extra: dict | None = None) -> dict:
    cands = [c for g in groups for c in g.candidates]
    kept = [c for c in cands if c.dropped_by is None]
    rates = [g.pass_rate for g in groups]
    rate_bins = {f"{i / 10:.1f}-{(i + 1) / 10:.1f}": 0 for i in range(10)}
    for r in rates:
        i = min(int(r * 10), 9)
        rate_bins[f"{i / 10:.1f}-{(i + 1) / 10:.1f}"] += 1
    return {
        **(extra or {}),
        "prompts": len(groups), "candidates": len(cands), "kept": len(kept),
        "kept_fraction": len(kept) / len(cands) if cands else 0.0,
        "prompts_with_kept": sum(any(c.dropped_by is None for c in g.candidates) for g in groups),
        "dropped": counts,
        "filters": asdict(cfg),
        "pass_rate": {"mean": sum(rates) / len(rates) if rates else 0.0, "histogram": rate_bins},
        "per_prompt": [{"id": g.id, "pass_rate": g.pass_rate, "kept": sum(c.dropped_by is None for c in g.candidates)}
                       for g in groups],
        "tokens": {"kept_histogram": _histogram([c.tokens for c in kept if c.tokens is not None], LENGTH_BINS),
                   "all_histogram": _histogram([c.tokens for c in cands if c.tokens is not None], LENGTH_BINS),
                   "kept_mean": _mean([c.tokens for c in kept if c.tokens is not None]),
                   "all_mean": _mean([c.tokens for c in cands if c.tokens is not None])},
    }


def _mean(xs: Sequence[float]) -> float | None:
    return sum(xs) / len(xs) if xs else None


def stats_markdown(stats: dict) -> str:
    lines = [f"# Rejection sampling: {stats['kept']} of {stats['candidates']} completions kept "
             f"({stats['kept_fraction']:.1%}), {stats['prompts_with_kept']} of {stats['prompts']} prompts", ""]
    if "tasks" in stats:
        lines += [f"Model `{stats.get('model', '?')}`, tasks {', '.join(stats['tasks'])}, k = {stats.get('k')}, "
                  f"temperature {stats.get('temperature')}, top-p {stats.get('top_p')}, "
                  f"{stats.get('seconds', 0):.0f} s.", ""]
    lines += ["| filter | dropped |", "|---|---|"]
    lines += [f"| {name} | {n} |" for name, n in stats["dropped"].items()]
    lines += [f"| **kept** | **{stats['kept']}** |", "", "## Per-prompt pass rate",
              f"mean {stats['pass_rate']['mean']:.3f}", "", "| pass rate | prompts |", "|---|---|"]
    lines += [f"| {k} | {v} |" for k, v in stats["pass_rate"]["histogram"].items()]
    lines += ["", "## Completion length (tokens)", "", "| tokens | all | kept |", "|---|---|---|"]
    allh, kepth = stats["tokens"]["all_histogram"], stats["tokens"]["kept_histogram"]
    for k in allh:
        lines.append(f"| {k} | {allh[k]} | {kepth.get(k, 0)} |")
    return "\n".join(lines) + "\n"


def write_outputs(output: Path, records: Sequence[dict], stats: dict) -> tuple[Path, Path, Path]:
    from ..files import atomic_write_text

    output.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(output, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    js, md = stats_paths(output)
    atomic_write_text(js, json.dumps(stats, indent=2, ensure_ascii=False) + "\n")
    atomic_write_text(md, stats_markdown(stats))
    return output, js, md


def stats_paths(output: Path) -> tuple[Path, Path]:
    base = output.with_suffix("") if output.suffix == ".jsonl" else output
    return base.parent / (base.name + ".stats.json"), base.parent / (base.name + ".stats.md")


# ----------------------------------------------------------------------------- sampling
@dataclass
class SampleConfig:
    k: int = 8
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int | None = None
    split: str = "train"
    limit: int | None = None
    seed: int = 0
    kv_cache_mb: float = 256.0


def rejection_sample(model: str, tasks: Sequence[str], output: str | Path, sample: SampleConfig | None = None,
                     filters: FilterConfig | None = None, task_options: dict | None = None,
                     device: str = "auto", dtype: str | None = None, progress: bool = True,
                     model_obj=None, tokenizer=None) -> dict:
    """Sample, score, filter and write (module docstring). ``model`` is a checkpoint directory
    or shipped name (or pass a loaded ``model_obj`` and its ``tokenizer``); returns the stats."""
    from ..eval.harness import EngineBackend, EvalError, Generation, _bar, _question_seed, _task_options
    from ..model_meta import checkpoint_meta
    from ..tasks import TaskError, get_task

    sample = sample or SampleConfig()
    filters = filters or FilterConfig()
    if not tasks:
        raise RejectionError("give at least one task (--task NAME[,NAME…])")
    if isinstance(sample.k, bool) or not isinstance(sample.k, int) or sample.k < 1:
        raise RejectionError(f"k must be a positive integer, got {sample.k!r}")
    output = Path(output)
    if output.is_dir():
        raise RejectionError(f"--output {output} is a directory; give a file name such as {output}/traces.jsonl")
    meta = checkpoint_meta(model) if model_obj is None else {}
    style = meta.get("prompt_style") or "chat"
    loaded = []
    try:
        for name in tasks:
            opts, _ = _task_options(name, task_options, meta)     # the model's own options for its task
            task = get_task(name, **opts)
            if sample.split not in task.splits:
                raise RejectionError(f"task {name} has no split {sample.split!r} (it has {', '.join(task.splits)}); "
                                     f"sample from training prompts, never from the test set (--split)")
            exs = task.load(sample.split, sample.limit)
            if not exs:
                raise RejectionError(f"task {name} split {sample.split!r} has no examples")
            loaded.append((task, exs))
    except TaskError as e:
        raise RejectionError(str(e)) from None

    if model_obj is None:
        from ..generate import load_model_and_tokenizer
        model_obj, tokenizer = load_model_and_tokenizer(str(model), None, device, dtype, error=RejectionError)
    try:
        backend = EngineBackend(model_obj, tokenizer, int(sample.kv_cache_mb * 2**20))
    except Exception as e:   # noqa: BLE001 — a cache budget too small, …: one line
        raise RejectionError(f"cannot build the engine: {e}") from None
    params = {"k": sample.k, "temperature": sample.temperature, "top_p": sample.top_p,
              "max_tokens": sample.max_new_tokens}
    start = time.time()
    groups: list[Group] = []
    task_of: list[str] = []
    for task, exs in loaded:
        prompts = [task.prompt(ex, style) for ex in exs]
        opened = [True if not isinstance(p, str) else prompt_opens_reasoning(p) for p in prompts]
        gens: list[Generation | None] = [None] * len(exs)
        bar = _bar(len(exs), f"sample {task.name}", progress)

        def on_done(i: int, gen: Generation) -> None:
            gens[i] = gen
            if bar is not None:
                bar.update(1)

        try:
            backend.generate(prompts, params, [_question_seed(sample.seed, i) for i in range(len(exs))], on_done)
        except EvalError as e:
            raise RejectionError(str(e)) from None
        finally:
            if bar is not None:
                bar.close()
        for ex, gen, started in zip(exs, gens, opened):
            scores = task.score(gen.texts, [ex] * len(gen.texts))
            chat = task.prompt(ex, "chat")
            messages = chat if isinstance(chat, list) else [{"role": "user", "content": chat}]
            groups.append(Group(ex.id, ex.question, messages,
                                [Candidate(t, s >= 1.0, n, f, s) for t, s, n, f in
                                 zip(gen.texts, scores, gen.num_tokens, gen.finish_reasons)],
                                started_in_reasoning=started))
            task_of.append(task.name)
    counts = filter_groups(groups, filters)
    records = [sft_record(g, c, t) for g, t in zip(groups, task_of) for c in g.candidates if c.dropped_by is None]
    stats = statistics(groups, counts, filters, {
        "model": str(model), "tasks": [t.name for t, _ in loaded], "split": sample.split, "k": sample.k,
        "temperature": sample.temperature, "top_p": sample.top_p, "prompt_style": style, "seed": sample.seed,
        "seconds": time.time() - start})
    write_outputs(output, records, stats)
    return stats


def parse_window(text: str) -> tuple[float, float]:
    """``MIN,MAX`` of ``--pass-rate``."""
    parts = text.split(",")
    try:
        lo, hi = (float(p) for p in parts)
    except ValueError:
        raise RejectionError(f"--pass-rate wants MIN,MAX (fractions, e.g. 0.1,0.9), got {text!r}") from None
    if not (0 <= lo <= hi <= 1) or math.isnan(lo) or math.isnan(hi):
        raise RejectionError(f"--pass-rate wants 0 <= MIN <= MAX <= 1, got {text!r}")
    return lo, hi
