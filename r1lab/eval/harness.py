"""The evaluation harness: the paper's protocol (SPEC §7) on any task, with our engine or
any OpenAI-compatible endpoint.

``evaluate(task, model=… | endpoint=…, k=16, temperature=0.6, top_p=0.95, …)`` samples k
completions per question, scores them with the task's rule, and returns a summary:
pass@1 (mean correctness over the k samples), cons@k (majority vote over extracted
answers, equivalent answers one vote), unbiased pass@k, mean response length, format rate
and truncation rate. With ``output_dir`` it writes ``samples.jsonl`` (one line per sample),
``summary.json`` and ``summary.md``.

Generation backends:
* ``EngineBackend`` — our engine on a loaded model: every question queued at once
  (continuous batching within the cache budget), one seed per question, so results do not
  depend on batching;
* ``EndpointBackend`` — the official ``openai`` client against a server (ours, vLLM, a
  hosted R1): chat prompts use ``/chat/completions`` (a separate ``reasoning_content`` is
  joined back as ``reasoning</think>answer``), text prompts ``/completions``; questions run
  concurrently, the client retries transient failures.
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_write_text, jsonable
from ..tasks import Example, Task
from .metrics import majority_vote, pass_at_k, pass_k_values

PAPER_MAX_TOKENS = 32768      # SPEC §7
LENGTH = "length"


class EvalError(ValueError):
    """An evaluation setup problem a user can fix (the message is one line)."""


@dataclass
class Generation:
    """The k completions of one question."""

    texts: list[str]
    num_tokens: list[int | None]          # per sample, when the backend knows it exactly
    finish_reasons: list[str | None]
    total_tokens: int | None = None       # all k together (endpoints report usage per request)


# ------------------------------------------------------------------------ backends
class EngineBackend:
    """Sample with r1lab's engine on an in-process model."""

    def __init__(self, model, tokenizer, kv_cache_bytes: int = 256 * 2**20, engine=None):
        from ..engine import Engine, EngineConfig

        self.engine = engine or Engine(model, tokenizer, EngineConfig(kv_cache_bytes=kv_cache_bytes))
        self.context = self.engine.cfg.max_position_embeddings

    def describe(self) -> dict:
        return {"backend": "engine", "model_type": self.engine.cfg.model_type}

    def generate(self, prompts: Sequence, params: dict, seeds: Sequence[int], on_done: Callable[[int, Generation], None]):
        from ..engine import SamplingError, SamplingParams
        from ..engine.cache import CacheError
        from ..engine.engine import EngineError

        max_tokens = params["max_tokens"] or self.context
        try:
            sp = [SamplingParams(n=params["k"], temperature=params["temperature"], top_p=params["top_p"],
                                 max_tokens=min(max_tokens, self.context), seed=s) for s in seeds]
        except SamplingError as e:
            raise EvalError(str(e)) from None
        eng = self.engine
        try:   # every question queued at once: the engine admits them as its cache budget allows
            pending = {eng.add_request(p, q): i for i, (p, q) in enumerate(zip(prompts, sp))}
        except (EngineError, CacheError, SamplingError) as e:
            raise EvalError(str(e)) from None
        try:
            while pending:
                eng.step()
                for rid in [r for r in pending if eng.requests[r].done]:
                    cs = eng.output(rid, release=True).outputs
                    on_done(pending.pop(rid), Generation([c.text for c in cs], [len(c.token_ids) for c in cs],
                                                         [c.finish_reason for c in cs]))
        finally:
            if pending:   # interrupted: free the engine for its owner (a trainer reuses it)
                for rid in pending:
                    eng.cancel(rid)
                eng.step()
                for rid in pending:
                    eng.requests.pop(rid, None)


class EndpointBackend:
    """Sample from an OpenAI-compatible server with the official ``openai`` client."""

    def __init__(self, endpoint: str, served_model: str, api_key: str | None = None, concurrency: int = 8,
                 timeout: float = 600.0, max_retries: int = 3):
        try:
            import openai
        except ImportError:
            raise EvalError("--endpoint needs the 'openai' package: pip install openai") from None
        if not served_model:
            raise EvalError("--endpoint needs --served-model NAME (the model name the server expects)")
        if not isinstance(concurrency, int) or concurrency < 1:
            raise EvalError(f"concurrency must be an integer >= 1, got {concurrency!r}")
        self.openai, self.endpoint, self.served_model, self.concurrency = openai, endpoint, served_model, concurrency
        self.client = openai.OpenAI(base_url=endpoint, api_key=api_key or "EMPTY", timeout=timeout,
                                    max_retries=max_retries)

    def describe(self) -> dict:
        return {"backend": "endpoint", "endpoint": self.endpoint, "served_model": self.served_model}

    def _call(self, fn, *args, **kwargs):
        o = self.openai
        try:
            return fn(*args, **kwargs)
        except o.APIConnectionError as e:
            raise EvalError(f"cannot reach the endpoint {self.endpoint}: {e.__cause__ or e} "
                            "(is the server running? check --endpoint, e.g. http://host:8000/v1)") from None
        except o.AuthenticationError:
            raise EvalError(f"the endpoint {self.endpoint} rejected the API key (check --api-key)") from None
        except o.NotFoundError as e:
            raise EvalError(f"the endpoint {self.endpoint} answered 404 for model {self.served_model!r}: "
                            f"{_api_message(e)} (check --served-model and --endpoint)") from None
        except o.APIStatusError as e:
            raise EvalError(f"the endpoint {self.endpoint} answered HTTP {e.status_code}: {_api_message(e)}") from None

    def _one(self, prompt, params: dict, seed: int, n: int) -> tuple[list[str], list[str | None], int | None]:
        common = dict(model=self.served_model, n=n, temperature=params["temperature"], top_p=params["top_p"],
                      seed=seed, max_tokens=params["max_tokens"] or PAPER_MAX_TOKENS)
        if isinstance(prompt, str):
            r = self._call(self.client.completions.create, prompt=prompt, **common)
            texts = [c.text or "" for c in r.choices]
        else:
            r = self._call(self.client.chat.completions.create, messages=prompt, **common)
            texts = [_chat_text(c.message) for c in r.choices]
        usage = getattr(r, "usage", None)
        return texts, [c.finish_reason for c in r.choices], getattr(usage, "completion_tokens", None)

    def generate(self, prompts: Sequence, params: dict, seeds: Sequence[int], on_done: Callable[[int, Generation], None]):
        k = params["k"]

        def job(i: int) -> tuple[int, Generation]:
            texts, reasons, total = [], [], 0
            while len(texts) < k:   # servers that ignore n return fewer choices: ask again
                t, r, used = self._one(prompts[i], params, seeds[i] + len(texts), k - len(texts))
                if not t:
                    raise EvalError(f"the endpoint {self.endpoint} returned no choices")
                texts += t[: k - len(texts)]
                reasons += r[: len(t)]
                total = None if used is None or total is None else total + used
            return i, Generation(texts, [total if k == 1 else None] * k, reasons[:k], total)

        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = [pool.submit(job, i) for i in range(len(prompts))]
            try:
                for f in futures:
                    i, gen = f.result()
                    on_done(i, gen)
            except BaseException:
                for f in futures:
                    f.cancel()
                raise


def _api_message(e) -> str:
    """The server's error message, one line."""
    body = getattr(e, "body", None)
    msg = None
    if isinstance(body, dict):
        err = body.get("error")
        msg = err.get("message") if isinstance(err, dict) else body.get("message") or body.get("detail")
    msg = msg or getattr(e, "message", None) or str(e)
    return (str(msg).splitlines() or [""])[0][:300]


def _chat_text(message) -> str:
    """A chat completion as one string: ``reasoning</think>answer`` when the server returns the
    reasoning separately (DeepSeek's API and reasoning parsers use ``reasoning_content``)."""
    content = message.content or ""
    extra = getattr(message, "model_extra", None) or {}
    reasoning = getattr(message, "reasoning_content", None)
    for key in ("reasoning_content", "reasoning"):
        if reasoning is None:
            reasoning = extra.get(key)
    return f"{reasoning}</think>{content}" if isinstance(reasoning, str) else content


# ------------------------------------------------------------------------ evaluation
def evaluate(task: str | Task, *, model=None, tokenizer=None, engine=None, endpoint: str | None = None,
             api_key: str | None = None, served_model: str | None = None, split: str | None = None, k: int = 16,
             temperature: float = 0.6, top_p: float = 0.95, max_tokens: int | None = None,
             limit: int | None = None, seed: int = 0, concurrency: int = 8, prompt_style: str | None = None,
             output_dir: str | Path | None = None, progress: bool = True, kv_cache_mb: float = 256.0,
             task_options: dict | None = None, device: str = "auto",
             dtype: str | None = None) -> dict:
    """Evaluate with the paper's protocol (SPEC §7); see the module docstring. ``model`` is a
    checkpoint directory or a loaded model (then pass ``tokenizer``); ``engine`` reuses a
    running engine (the trainer's); ``endpoint`` + ``served_model`` use a server instead.

    A checkpoint's ``r1lab.json`` (model_meta.py) supplies the prompt style it was trained
    with, and — for the task it was trained on, when no ``task_options`` are given — that
    task's options; ``prompt_style`` / ``task_options`` override both."""
    from ..tasks import get_task

    _check(k, "k", 1)
    _check(seed, "seed", 0)
    if limit is not None:
        _check(limit, "limit", 1)
    if max_tokens is not None:
        _check(max_tokens, "max_tokens", 1)
    _check_sampling(k, temperature, top_p)      # before any loading or progress bar
    meta = _model_meta(model)
    task_options, options_from_model = _task_options(task, task_options, meta)
    task = task if isinstance(task, Task) else get_task(task, **task_options)
    # the caller's style, else the task's own option, else the one the model was trained with (r1lab.json)
    style = prompt_style or getattr(task, "style", None) or meta.get("prompt_style") or task.default_style
    style_from_model = not (prompt_style or getattr(task, "style", None)) and bool(meta.get("prompt_style"))
    if getattr(task, "style", style) != style:   # tasks that score by their prompt style (math): a copy in this one
        task = copy.copy(task)
        task.style = style
    if sum(x is not None for x in (model, engine, endpoint)) != 1:
        raise EvalError("give exactly one of a model (--model DIR), an engine, or an endpoint (--endpoint URL)")
    examples = _load(task, split, limit)

    if endpoint is not None:
        backend = EndpointBackend(endpoint, served_model, api_key, concurrency)
        source = backend.describe()
    else:
        source = {}
        if model is not None and isinstance(model, (str, Path)):
            from ..generate import load_model_and_tokenizer
            source["model"] = str(model)
            model, tokenizer = load_model_and_tokenizer(str(model), None, device, dtype, error=EvalError)
        elif model is not None and tokenizer is None:
            raise EvalError("an in-memory model needs its tokenizer (tokenizer=…)")
        backend = EngineBackend(model, tokenizer, int(kv_cache_mb * 2**20), engine=engine)
        source.update(backend.describe())

    prompts = [task.prompt(ex, style) for ex in examples]
    seeds = [_question_seed(seed, i) for i in range(len(examples))]
    params = {"k": k, "temperature": temperature, "top_p": top_p, "max_tokens": max_tokens}
    results: list[dict | None] = [None] * len(examples)
    bar = _bar(len(examples), f"eval {task.name}", progress)
    start = time.time()
    running = {"correct": 0.0, "n": 0}

    def on_done(i: int, gen: Generation) -> None:
        results[i] = _score_question(task, examples[i], gen, style)
        running["correct"] += results[i]["pass@1"]
        running["n"] += 1
        if bar is not None:
            bar.update(1)
            bar.set_postfix_str(f"pass@1 {running['correct'] / running['n']:.3f}")

    try:
        backend.generate(prompts, params, seeds, on_done)
    finally:
        if bar is not None:
            bar.close()
    summary = _summarise(task, results, k, style, split or task.default_split, params, seed, source,
                         time.time() - start)
    if options_from_model:
        summary["task_options_from_model"] = task_options
    if style_from_model:
        summary["prompt_style_from_model"] = True
    if output_dir is not None:
        write_outputs(Path(output_dir), examples, results, summary)
    return summary


def _check_sampling(k: int, temperature, top_p) -> None:
    from ..engine import SamplingError, SamplingParams
    try:
        SamplingParams(n=k, temperature=temperature, top_p=top_p)
    except SamplingError as e:
        raise EvalError(str(e)) from None


def _model_meta(model) -> dict:
    """The ``r1lab.json`` of a model given as a checkpoint directory or shipped name (model_meta.py)."""
    from ..model_meta import MetaError, checkpoint_meta
    if not isinstance(model, (str, Path)):
        return {}
    try:
        return checkpoint_meta(model)
    except MetaError as e:
        raise EvalError(str(e)) from None


def _task_options(task, options: dict | None, meta: dict) -> tuple[dict, bool]:
    """The task's options: the caller's, else — for the very task the model was trained on —
    the options it was trained with (``chain_add`` questions worded as the model knows them)."""
    trained = meta.get("task") or {}
    if not options and isinstance(task, str) and trained.get("name") == task and trained.get("options"):
        return dict(trained["options"]), True
    return dict(options or {}), False


def _check(v, name: str, lo: int) -> None:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise EvalError(f"{name} must be an integer >= {lo}, got {v!r}")


def _question_seed(seed: int, i: int) -> int:
    from ..engine.sampler import sequence_seed
    return sequence_seed(seed, i)


def _load(task: Task, split: str | None, limit: int | None) -> list[Example]:
    split = split or task.default_split
    if split not in task.splits:
        raise EvalError(f"task {task.name!r} has no split {split!r}; splits: {', '.join(task.splits)}")
    examples = task.load(split, limit)     # data problems raise TaskError (one line, with the line number)
    if not examples:
        raise EvalError(f"task {task.name!r} split {split!r} has no examples")
    return examples


def _bar(total: int, desc: str, on: bool):
    if not on:
        return None
    from tqdm import tqdm
    return tqdm(total=total, unit="q", desc=desc)


def format_ok(completions: Sequence[str], examples: Sequence[Example], style: str) -> list[float]:
    """1.0 where a completion has the form its prompt asked for: R1's ``reasoning</think>answer``
    after a chat prompt (which opened ``<think>``), R1-Zero's tags otherwise (SPEC §4, §8)."""
    from ..rewards import get_reward
    fn = get_reward("format")
    return fn(list(completions), list(examples), style="r1" if style == "chat" else "r1_zero")


def _score_question(task: Task, ex: Example, gen: Generation, style: str) -> dict:
    k = len(gen.texts)
    scores = task.score(gen.texts, [ex] * k)
    correct = [s >= 1.0 for s in scores]
    keys = [task.answer_key(t, ex) for t in gen.texts]
    fmt = format_ok(gen.texts, [ex] * k, style)
    vote = majority_vote(keys, task.same_answer)
    return {
        "texts": gen.texts, "scores": scores, "correct": correct, "answers": keys, "format": fmt,
        "num_tokens": gen.num_tokens, "finish_reasons": gen.finish_reasons, "total_tokens": gen.total_tokens,
        "pass@1": sum(correct) / k,
        "cons": bool(vote is not None and correct[vote]),
        "pass@k": {j: pass_at_k(k, sum(correct), j) for j in pass_k_values(k)},
    }


def _summarise(task, results, k, style, split, params, seed, source, seconds) -> dict:
    n = len(results)
    lengths = [t for r in results for t in r["num_tokens"] if t is not None]
    totals = [r["total_tokens"] for r in results]
    if len(lengths) == n * k:
        mean_len = sum(lengths) / len(lengths)
    elif all(t is not None for t in totals):
        mean_len = sum(totals) / (n * k)
    else:
        mean_len = None
    reasons = [fr for r in results for fr in r["finish_reasons"]]
    summary = {
        "task": task.name, "split": split, "examples": n, "k": k, "prompt_style": style,
        "temperature": params["temperature"], "top_p": params["top_p"], "max_tokens": params["max_tokens"],
        "seed": seed, **source,
        "pass@1": sum(r["pass@1"] for r in results) / n,
        f"cons@{k}": sum(r["cons"] for r in results) / n,
        "pass@k": {str(j): sum(r["pass@k"][j] for r in results) / n for j in pass_k_values(k)},
        "mean_response_tokens": mean_len,
        "format_rate": sum(f for r in results for f in r["format"]) / (n * k),
        "truncation_rate": sum(fr == LENGTH for fr in reasons) / len(reasons),
        "seconds": round(seconds, 2),
    }
    return summary


def write_outputs(out: Path, examples: Sequence[Example], results: Sequence[dict], summary: dict) -> None:
    """``samples.jsonl``, ``summary.json`` and ``summary.md`` in ``out``, each written atomically."""
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise EvalError(f"cannot create the output directory {out}: {e.strerror}") from None
    lines = []
    for ex, r in zip(examples, results):
        for j, text in enumerate(r["texts"]):
            lines.append(json.dumps({
                "id": ex.id, "sample": j, "question": ex.question, "gold": jsonable(ex.gold), "completion": text,
                "answer": r["answers"][j], "score": r["scores"][j], "correct": r["correct"][j],
                "format": r["format"][j], "num_tokens": r["num_tokens"][j], "finish_reason": r["finish_reasons"][j],
            }, ensure_ascii=False) + "\n")
    atomic_write_text(out / "samples.jsonl", "".join(lines))
    atomic_write_text(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    atomic_write_text(out / "summary.md", markdown_table([summary]))


def markdown_table(summaries: Sequence[dict]) -> str:
    """One row per summary: the paper's columns plus length, format and truncation."""
    head = "| task | split | examples | k | pass@1 | cons@k | pass@k (k) | mean tokens | format | truncated |\n"
    head += "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    rows = []
    for s in summaries:
        k = s["k"]
        mean = s["mean_response_tokens"]
        rows.append(f"| {s['task']} | {s['split']} | {s['examples']} | {k} | {s['pass@1']:.1%} | "
                    f"{s[f'cons@{k}']:.1%} | {s['pass@k'][str(k)]:.1%} | "
                    f"{'-' if mean is None else f'{mean:.1f}'} | {s['format_rate']:.1%} | {s['truncation_rate']:.1%} |")
    return head + "\n".join(rows) + "\n"
