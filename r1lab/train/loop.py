"""The one training loop shared by pre-training, SFT and GRPO.

``Trainer`` owns everything that is not the algorithm: the model on its device, AdamW with
fp32 master weights, the learning-rate schedule (warm-up, then cosine/constant/linear),
gradient clipping and accumulation, bf16 autocast on CUDA (fp32 on CPU), the step
counters, RNG states, atomic checkpoints with keep-last-N and exact resume, metrics
(``metrics.jsonl``, one flushed line per step), a tqdm bar showing the algorithm's headline
metrics, periodic evaluation, sample logging, optional TensorBoard, and PNG plots at the
end — also after Ctrl-C or SIGTERM.

An algorithm plugs in as an object with (``Algorithm`` below)::

    name: str                                  # progress-bar label: "pretrain", "sft", "grpo"
    headline: Sequence[str]                    # metric keys shown in the bar's postfix
    def train_step(self, trainer) -> dict[str, float]
    def state_dict(self) -> dict               # its own state: data position, …
    def load_state_dict(self, state: dict) -> None

and, optionally, ``evaluate(trainer) -> dict[str, float]`` (run every ``eval.every`` steps,
e.g. a held-out loss), ``samples(trainer) -> list[dict]`` (every ``log.sample_every`` steps,
appended to ``samples.jsonl``), ``optimizer_steps_per_step: int`` (for the schedule's
length; default 1) and ``engine`` (an Engine the ``eval.task`` evaluation should reuse).

``train_step`` runs forward passes under ``trainer.autocast()``, calls
``trainer.backward(loss, scale)`` per micro-batch and ``trainer.optimizer_step()`` as often
as it likes (GRPO: once per mini-batch); it returns its metrics, merged with what
``optimizer_step`` returned (``grad_norm``, ``lr``, ``expert_load_max_over_mean``) and, for
throughput, ``tokens`` (tokens processed in the step). ``trainer.step`` counts train steps,
``trainer.optimizer_steps`` optimizer steps; the schedule follows the latter.

Checkpoints (``out_dir/checkpoints/step_000123/``): the model in our Hugging Face format
(``save_model``, tokenizer files included — the MoE router biases are model buffers),
``r1lab.json`` (the prompt style and task it was trained with, model_meta.py; ``final/`` too),
``trainer_state.pt`` (optimizer, counters, Python/NumPy/torch RNG states, the algorithm's
state) and ``resolved_recipe.yaml``. Each is filled in a hidden temporary directory and
renamed into place, so a directory named ``step_*`` is always complete; older ones are
pruned only after the new one exists, and ``checkpoints/latest`` names the newest. A
resumed run truncates ``metrics.jsonl``/``samples.jsonl`` to the checkpoint's step and then
reproduces the uninterrupted run's metrics exactly (CPU, same ``threads``): data is a pure
function of (seed, position) and everything else is restored.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import re
import shutil
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

from ..device import resolve_device as pick_device
from ..files import atomic_write_text
from ..model_meta import write_meta
from .config import BaseTrainConfig, ModelSpec, ScheduleConfig, TrainError, to_yaml
from .plots import read_metrics

CHECKPOINTS_DIR = "checkpoints"
LATEST_FILE = "latest"
TRAINER_STATE_FILE = "trainer_state.pt"
RECIPE_FILE = "resolved_recipe.yaml"
METRICS_FILE = "metrics.jsonl"
SAMPLES_FILE = "samples.jsonl"
FINAL_DIR = "final"
PLOTS_DIR = "plots"
TENSORBOARD_DIR = "tensorboard"
STATE_FORMAT = 1
# Fields of a metrics line that depend on the wall clock: everything else is reproducible.
WALL_CLOCK_KEYS = frozenset({"time", "step_time", "tokens_per_s"})
EVAL_SUMMARY_KEYS = ("pass@1", "mean_response_tokens", "format_rate", "truncation_rate")
_CHECKPOINT_NAME = re.compile(r"^step_(\d+)$")


@runtime_checkable
class Algorithm(Protocol):
    """What ``Trainer`` needs from pre-training, SFT, GRPO, … (see the module docstring)."""

    name: str
    headline: Sequence[str]

    def train_step(self, trainer: "Trainer") -> dict[str, float]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


# ---------------------------------------------------------------------- schedule
def lr_factor(step: int, schedule: ScheduleConfig, total_steps: int) -> float:
    """Multiplier of the peak lr for optimizer step ``step`` (0-based).

    Linear warm-up ``(step + 1) / warmup_steps``; then, with progress
    ``p = (step − warmup) / (total − warmup)`` clamped to [0, 1] and ``m = min_lr_ratio``:
    cosine ``m + (1 − m)·½(1 + cos πp)``, linear ``m + (1 − m)(1 − p)``, constant 1.
    """
    warmup = schedule.warmup_steps
    if step < warmup:
        return (step + 1) / warmup
    if schedule.kind == "constant":
        return 1.0
    total = schedule.total_steps or total_steps
    p = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    m = schedule.min_lr_ratio
    if schedule.kind == "linear":
        return m + (1 - m) * (1 - p)
    return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * p))


# ---------------------------------------------------------------------- model and tokenizer
def resolve_device(spec: str) -> torch.device:
    """The recipe's ``device`` (r1lab/device.py's rule; errors name the recipe field)."""
    return pick_device(spec, "recipe field 'device'", TrainError)


def load_start(spec: ModelSpec, seed: int) -> tuple[torch.nn.Module, Any]:
    """The model a run starts from (``spec.init``: preset, config.json or checkpoint
    directory) and its tokenizer, checked against each other. fp32 weights on the CPU."""
    from ..checkpoint import load_model
    from ..model import build_model

    cfg, checkpoint_dir, tokenizer = resolve_start(spec)
    model = load_model(checkpoint_dir) if checkpoint_dir is not None else build_model(cfg, seed=seed)
    return model, tokenizer


def resolve_start(spec: ModelSpec) -> tuple[Any, Path | None, Any]:
    """What ``load_start`` builds, without building it: (ModelConfig, checkpoint directory or
    None, tokenizer), with every check (the init exists, overrides apply, the vocabulary fits)."""
    from ..checkpoint import SHIPPED_MODELS, load_config, resolve_checkpoint
    from ..config import PRESETS, ConfigError, ModelConfig, preset
    from ..tokenizer import load_tokenizer

    path = resolve_checkpoint(spec.init)
    checkpoint_dir = None
    if spec.init in PRESETS:
        cfg = preset(spec.init)
    elif path.is_dir():
        checkpoint_dir = path
        cfg = load_config(path)
        if spec.overrides:
            raise TrainError(f"recipe field 'model.overrides': not allowed when starting from the checkpoint "
                             f"{path} (its weights fix the shapes)")
    elif path.is_file():
        cfg = ModelConfig.from_json(path)
    elif not path.exists():
        raise TrainError(f"recipe field 'model.init': {spec.init!r} does not exist; give a preset "
                         f"({', '.join(PRESETS)}), a shipped model ({', '.join(SHIPPED_MODELS)}), a config.json file "
                         f"or a checkpoint directory")
    else:
        raise TrainError(f"recipe field 'model.init': {spec.init!r} is not a preset ({', '.join(PRESETS)}), "
                         f"a shipped model ({', '.join(SHIPPED_MODELS)}), a config.json file or a checkpoint directory")
    if spec.overrides:
        try:
            cfg = cfg.replace(**spec.overrides)
        except ConfigError as e:
            raise TrainError(f"recipe field 'model.overrides': {e}") from None
        except TypeError as e:
            raise TrainError(f"recipe field 'model.overrides': {e}") from None
    tok_dir = spec.tokenizer
    if tok_dir is None and checkpoint_dir is not None and (checkpoint_dir / "tokenizer.json").is_file():
        tok_dir = str(checkpoint_dir)
    tokenizer = load_tokenizer(tok_dir)
    check_vocab(cfg, tokenizer)
    return cfg, checkpoint_dir, tokenizer


def start_meta(spec: ModelSpec) -> dict[str, Any]:
    """The ``r1lab.json`` of the checkpoint a run starts from (model_meta.py); ``{}`` for a preset."""
    from ..config import PRESETS
    from ..model_meta import MetaError, checkpoint_meta

    if spec.init in PRESETS:
        return {}
    try:
        return checkpoint_meta(spec.init)
    except MetaError as e:
        raise TrainError(f"recipe field 'model.init': {e}") from None


def run_model_meta(cfg: BaseTrainConfig, algorithm) -> dict[str, Any]:
    """The ``r1lab.json`` this run's checkpoints carry: the prompt style and task the
    algorithm trains with (its ``meta``), else what the start checkpoint carried."""
    own = {k: v for k, v in (getattr(algorithm, "meta", None) or {}).items() if v is not None}
    return {**(own if own.get("prompt_style") else start_meta(cfg.model)), "trained_by": algorithm.name}


def check_vocab(cfg, tokenizer) -> None:
    """The tokenizer's ids must fit the model's embedding (a larger embedding is fine)."""
    name = getattr(tokenizer, "source", None) or "the tokenizer"
    if tokenizer.vocab_size > cfg.vocab_size:
        raise TrainError(f"vocabulary mismatch: {name} has {tokenizer.vocab_size} tokens but the model's "
                         f"vocab_size is {cfg.vocab_size}; use a matching tokenizer (model.tokenizer) or set "
                         f"model.overrides.vocab_size >= {tokenizer.vocab_size}")
    for what in ("bos_token_id", "eos_token_id"):
        if getattr(tokenizer, what, None) is None:
            raise TrainError(f"{name} has no {what.removesuffix('_id')} token; training needs BOS and EOS")


def check_seq_len(cfg, seq_len: int) -> None:
    if seq_len > cfg.max_position_embeddings:
        raise TrainError(f"recipe field 'seq_len': {seq_len} exceeds the model's max_position_embeddings "
                         f"({cfg.max_position_embeddings})")


def make_optimizer(model: torch.nn.Module, optim) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (embeddings and projections), not on norms or biases."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    fused = next(model.parameters()).device.type == "cuda"
    return torch.optim.AdamW(groups, lr=optim.lr, betas=tuple(optim.betas), eps=optim.eps, fused=fused or None)


# ---------------------------------------------------------------------- checkpoints on disk
def list_checkpoints(out_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """Complete checkpoints of a run, oldest first (temporary directories are hidden, so a
    checkpoint killed mid-write never appears here)."""
    root = Path(out_dir) / CHECKPOINTS_DIR
    found = []
    if root.is_dir():
        for d in root.iterdir():
            m = _CHECKPOINT_NAME.match(d.name)
            if m and d.is_dir() and (d / TRAINER_STATE_FILE).is_file() and (d / "config.json").is_file():
                found.append((int(m.group(1)), d))
    return sorted(found)


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    found = list_checkpoints(out_dir)
    return found[-1][1] if found else None


def _remove_dir(path: Path) -> None:
    """Rename out of the ``step_*`` namespace first, so a half-deleted directory is never
    mistaken for a checkpoint."""
    trash = path.with_name(f".deleting-{path.name}-{os.getpid()}")
    os.replace(path, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _truncate_jsonl(path: Path, last_step: int) -> None:
    """Keep the lines of ``path`` whose step is <= ``last_step`` (a torn last line goes too)."""
    if not path.is_file():
        return
    kept = [json.dumps(rec) + "\n" for rec in read_metrics(path) if rec["step"] <= last_step]
    atomic_write_text(path, "".join(kept))


# ---------------------------------------------------------------------- the trainer
class Trainer:
    """Runs ``algorithm`` for ``cfg.steps`` train steps (see the module docstring)."""

    def __init__(self, cfg: BaseTrainConfig, model: torch.nn.Module, tokenizer, algorithm: Algorithm):
        for attr in ("train_step", "state_dict", "load_state_dict"):
            if not callable(getattr(algorithm, attr, None)):
                raise TypeError(f"algorithm {type(algorithm).__name__} has no {attr}()")
        self.cfg = cfg
        self.out_dir = Path(cfg.out_dir)
        if cfg.threads is not None:
            torch.set_num_threads(cfg.threads)
        self.device = resolve_device(cfg.device)
        self.model = model.to(self.device)
        self.model.train()
        self.tokenizer = tokenizer
        self.algorithm = algorithm
        dtype = cfg.model.dtype
        self.autocast_dtype = (torch.bfloat16 if dtype == "bfloat16" or (dtype == "auto" and self.device.type == "cuda")
                               else None)
        self.optimizer = make_optimizer(self.model, cfg.optim)
        self.step = 0                 # completed train steps
        self.optimizer_steps = 0      # completed optimizer steps (the schedule's clock)
        self.tokens_seen = 0
        self.skipped_steps = 0        # optimizer steps skipped for a non-finite gradient norm
        self.total_optimizer_steps = cfg.steps * int(getattr(algorithm, "optimizer_steps_per_step", 1))
        self.resumed_from: int | None = None
        self._elapsed_before = 0.0    # wall time of earlier sessions of this run
        self._session_start = time.time()
        self._stop_requested = False
        self._last_checkpoint_step: int | None = None
        self._metrics_file = None
        self._tb = None
        self.model_meta = run_model_meta(cfg, algorithm)


    # ------------------------------------------------------------ for algorithms
    def autocast(self):
        """bf16 autocast on CUDA (or when asked), nothing on CPU; weights stay fp32."""
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    def to_device(self, t: torch.Tensor) -> torch.Tensor:
        return t.to(self.device, non_blocking=True)

    def backward(self, loss: torch.Tensor, scale: float | None = None) -> None:
        """Accumulate gradients of ``loss × scale``; ``scale`` defaults to 1/grad_accum
        (pass your own for token-weighted accumulation, e.g. n_tokens_micro / n_tokens_step)."""
        s = 1.0 / self.cfg.optim.grad_accum if scale is None else scale
        (loss * s if s != 1.0 else loss).backward()

    def lr_at(self, optimizer_step: int) -> float:
        return self.cfg.optim.lr * lr_factor(optimizer_step, self.cfg.schedule, self.total_optimizer_steps)

    def optimizer_step(self) -> dict[str, float]:
        """Clip, set the scheduled lr, step AdamW, zero the gradients, then apply the MoE bias
        update b_i += γ·sign(mean_load − load_i) (SPEC §2) with the loads counted since the
        previous optimizer step. Returns ``grad_norm`` (before clipping), ``lr`` and, for MoE
        models, ``expert_load_max_over_mean`` (max/mean tokens per expert, averaged over layers).
        A non-finite gradient norm skips the update (counted in ``skipped_steps``)."""
        params = [p for g in self.optimizer.param_groups for p in g["params"]]
        clip = self.cfg.optim.grad_clip
        norm = float(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf")))
        lr = self.lr_at(self.optimizer_steps)
        out = {"grad_norm": norm, "lr": lr}
        if math.isfinite(norm):
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            self.optimizer.step()
        else:
            self.skipped_steps += 1
            out["skipped_steps"] = self.skipped_steps
        self.optimizer.zero_grad(set_to_none=True)
        load = self.model.expert_load()
        if load is not None:
            counted = load.sum(dim=1) > 0
            if counted.any():
                ratio = load[counted].max(dim=1).values / load[counted].mean(dim=1)
                out["expert_load_max_over_mean"] = float(ratio.mean())
            # always called: with γ = 0 it only resets the load counters
            self.model.update_expert_bias(self.cfg.bias_gamma)
        self.optimizer_steps += 1
        return out

    @contextlib.contextmanager
    def isolated_rng(self) -> Iterator[None]:
        """Run a block (evaluation, sampling) without disturbing the training RNG streams."""
        py, npy = random.getstate(), np.random.get_state()
        devices = [self.device.index or 0] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            try:
                yield
            finally:
                random.setstate(py)
                np.random.set_state(npy)

    @contextlib.contextmanager
    def eval_mode(self) -> Iterator[None]:
        was = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                yield
        finally:
            self.model.train(was)

    # ------------------------------------------------------------ the run
    def fit(self) -> dict[str, Any]:
        """Train to ``cfg.steps`` (resuming when ``cfg.resume``); returns a summary dict."""
        cfg = self.cfg
        self._prepare_out_dir()
        self._start_or_resume()
        atomic_write_text(self.out_dir / RECIPE_FILE, to_yaml(cfg))
        self._metrics_file = open(self.out_dir / METRICS_FILE, "a", encoding="utf-8")
        self._open_tensorboard()
        bar = self._progress_bar()
        old_handler = self._install_sigterm()
        record: dict[str, Any] = {}
        try:
            if self.step == 0 and cfg.eval.every:
                base = {"step": 0, **self._evaluate()}
                self._write_record(base)
                self._say(self._format(base, keys=[k for k in base if k != "step"]), bar)
            while self.step < cfg.steps and not self._stop_requested:
                record = self._one_step()
                self._write_record(record)
                if bar is not None:
                    bar.set_postfix_str(self._format(record, self.algorithm.headline, with_step=False), refresh=False)
                    bar.update(1)
                elif self.step % cfg.log.every == 0 or self.step == cfg.steps:
                    self._say(self._format(record, ["loss", *self.algorithm.headline]), None)
                evals = [k for k in record if k.startswith(("eval/", "heldout"))]
                if evals:
                    self._say(self._format(record, evals), bar)
                if self._checkpoint_due():
                    self.save_checkpoint()
            if self.step > 0 and self._last_checkpoint_step != self.step:
                self.save_checkpoint()    # at the end, or after SIGTERM
            final = None
            if self.step >= cfg.steps and not self._stop_requested:
                from ..checkpoint import save_model

                final = save_model(self.model, self.out_dir / FINAL_DIR, tokenizer=self.tokenizer)
                write_meta(final, self.model_meta)
        finally:
            if bar is not None:
                bar.close()
            self._restore_sigterm(old_handler)
            self._close_logs()
            if cfg.log.plots:
                self._write_plots()
        return {
            "out_dir": str(self.out_dir), "step": self.step, "optimizer_steps": self.optimizer_steps,
            "resumed_from": self.resumed_from, "stopped": self._stop_requested, "last": record,
            "checkpoint": str(latest_checkpoint(self.out_dir)) if self.step else None,
            "final": str(final) if final is not None else None,
        }

    def _one_step(self) -> dict[str, Any]:
        cfg = self.cfg
        t0 = time.perf_counter()
        metrics = self.algorithm.train_step(self)
        self.step += 1
        dt = time.perf_counter() - t0
        record: dict[str, Any] = {"step": self.step, "optimizer_steps": self.optimizer_steps}
        record.update(_plain(metrics))
        tokens = record.get("tokens")
        if isinstance(tokens, (int, float)) and tokens > 0:
            self.tokens_seen += int(tokens)
            record["tokens_seen"] = self.tokens_seen
            record["tokens_per_s"] = tokens / max(dt, 1e-9)
        if cfg.eval.every and (self.step % cfg.eval.every == 0 or self.step == cfg.steps):
            record.update(self._evaluate())
        if cfg.log.sample_every and self.step % cfg.log.sample_every == 0:
            self._log_samples()
        record["step_time"] = dt
        record["time"] = self._elapsed()
        return record

    def _checkpoint_due(self) -> bool:
        every = self.cfg.checkpoint.every
        return bool(every) and self.step % every == 0 and self.step < self.cfg.steps

    def _elapsed(self) -> float:
        return self._elapsed_before + time.time() - self._session_start

    # ------------------------------------------------------------ evaluation and samples
    def _evaluate(self) -> dict[str, float]:
        out: dict[str, float] = {}
        with self.isolated_rng():
            hook = getattr(self.algorithm, "evaluate", None)
            if callable(hook):
                with self.eval_mode():
                    out.update(_plain(hook(self)))
            if self.cfg.eval.task:
                out.update(self._evaluate_task())
        return out

    def _evaluate_task(self) -> dict[str, float]:
        from ..eval import evaluate

        e = self.cfg.eval
        engine = getattr(self.algorithm, "engine", None)
        source = {"engine": engine} if engine is not None else {"model": self.model, "tokenizer": self.tokenizer}
        was = self.model.training
        self.model.eval()
        try:
            summary = evaluate(e.task, **source, split=e.split, k=e.k, temperature=e.temperature, top_p=e.top_p,
                               max_tokens=e.max_tokens, limit=e.limit, seed=self.cfg.seed, progress=False,
                               prompt_style=e.prompt_style, task_options=e.options or None, kv_cache_mb=e.kv_cache_mb)
        finally:
            self.model.train(was)
        return {f"eval/{k}": float(summary[k]) for k in EVAL_SUMMARY_KEYS if summary.get(k) is not None}

    def _log_samples(self) -> None:
        hook = getattr(self.algorithm, "samples", None)
        if not callable(hook):
            return
        with self.isolated_rng(), self.eval_mode():
            samples = hook(self)
        if not samples:
            return
        lines = "".join(json.dumps({"step": self.step, **s}, ensure_ascii=False) + "\n" for s in samples)
        with open(self.out_dir / SAMPLES_FILE, "a", encoding="utf-8") as f:
            f.write(lines)

    # ------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        """``checkpoints/step_XXXXXX/`` for the current step, atomically; then ``latest``
        and keep-last-N pruning."""
        from ..checkpoint import save_model

        root = self.out_dir / CHECKPOINTS_DIR
        root.mkdir(parents=True, exist_ok=True)
        name = f"step_{self.step:06d}"
        tmp = root / f".{name}.partial-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        try:
            save_model(self.model, tmp, tokenizer=self.tokenizer)
            write_meta(tmp, self.model_meta)
            torch.save(self._trainer_state(), tmp / TRAINER_STATE_FILE)
            atomic_write_text(tmp / RECIPE_FILE, to_yaml(self.cfg))
            final = root / name
            if final.exists():        # left by an earlier session that died after writing it
                _remove_dir(final)
            os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        atomic_write_text(root / LATEST_FILE, name + "\n")
        self._last_checkpoint_step = self.step
        keep = self.cfg.checkpoint.keep_last
        if keep:
            for _, old in list_checkpoints(self.out_dir)[:-keep]:
                _remove_dir(old)
        return final

    def _trainer_state(self) -> dict[str, Any]:
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state_all()
        return {
            "format": STATE_FORMAT, "step": self.step, "optimizer_steps": self.optimizer_steps,
            "tokens_seen": self.tokens_seen, "skipped_steps": self.skipped_steps, "elapsed": self._elapsed(),
            "optimizer": self.optimizer.state_dict(), "rng": rng, "algorithm": self.algorithm.state_dict(),
        }

    def load_checkpoint(self, path: Path) -> None:
        """Restore model weights (router biases included), optimizer, counters, RNG states and
        the algorithm's state from a checkpoint directory."""
        from ..checkpoint import load_config, load_model

        saved = load_config(path)
        if saved.to_dict() != self.model.config.to_dict():
            raise TrainError(f"checkpoint {path} was written for a different model config than the recipe's "
                             f"model section; resume with the recipe it was trained with")
        weights = load_model(path, device="cpu").state_dict()
        self.model.load_state_dict(weights)
        try:
            state = torch.load(path / TRAINER_STATE_FILE, map_location="cpu", weights_only=False)
        except Exception as e:  # torch raises assorted errors for a damaged pickle
            raise TrainError(f"cannot read {path / TRAINER_STATE_FILE}: {str(e).splitlines()[0]}") from None
        if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
            raise TrainError(f"{path / TRAINER_STATE_FILE} is not a trainer state this version can read")
        self.optimizer.load_state_dict(state["optimizer"])
        self.step, self.optimizer_steps = state["step"], state["optimizer_steps"]
        self.tokens_seen, self.skipped_steps = state["tokens_seen"], state["skipped_steps"]
        self._elapsed_before = state["elapsed"]
        self.algorithm.load_state_dict(state["algorithm"])
        rng = state["rng"]
        random.setstate(rng["python"])
        np.random.set_state(rng["numpy"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and self.device.type == "cuda":
            torch.cuda.set_rng_state_all(rng["cuda"])
        self._last_checkpoint_step = self.step

    def _prepare_out_dir(self) -> None:
        root = self.out_dir / CHECKPOINTS_DIR
        root.mkdir(parents=True, exist_ok=True)
        for d in root.iterdir():   # temporary directories of a session that was killed
            if d.name.startswith(".") and d.is_dir():
                shutil.rmtree(d, ignore_errors=True)

    def _start_or_resume(self) -> None:
        cfg = self.cfg
        ckpt = latest_checkpoint(self.out_dir)
        if not cfg.resume and ckpt is not None:
            raise TrainError(f"{self.out_dir} already holds checkpoints (latest {ckpt.name}); pass --resume to "
                             f"continue that run or choose another out_dir")
        if ckpt is None:
            if cfg.resume:
                self._say(f"no checkpoint in {self.out_dir / CHECKPOINTS_DIR}; starting from step 0", None)
            random.seed(cfg.seed)
            np.random.seed(cfg.seed)
            torch.manual_seed(cfg.seed)
            for name in (METRICS_FILE, SAMPLES_FILE):
                (self.out_dir / name).unlink(missing_ok=True)
            return
        self.load_checkpoint(ckpt)
        self.resumed_from = self.step
        for name in (METRICS_FILE, SAMPLES_FILE):
            _truncate_jsonl(self.out_dir / name, self.step)
        self._say(f"resumed from {ckpt} (step {self.step}, {self.optimizer_steps} optimizer steps)", None)

    # ------------------------------------------------------------ logs, bar, signals
    def _write_record(self, record: dict[str, Any]) -> None:
        self._metrics_file.write(json.dumps(record) + "\n")
        self._metrics_file.flush()
        if self._tb is not None and (record["step"] % self.cfg.log.every == 0 or record["step"] == self.cfg.steps
                                     or any(k.startswith(("eval/", "heldout")) for k in record)):
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, record["step"])

    def _open_tensorboard(self) -> None:
        if not self.cfg.log.tensorboard:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            print("r1lab: warning: log.tensorboard is on but the tensorboard package is not installed "
                  "(pip install tensorboard); metrics.jsonl has every metric", file=sys.stderr)
            return
        self._tb = SummaryWriter(str(self.out_dir / TENSORBOARD_DIR), purge_step=self.step + 1 if self.step else None)

    def _close_logs(self) -> None:
        if self._metrics_file is not None:
            self._metrics_file.close()
            self._metrics_file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def _write_plots(self) -> None:
        from .plots import write_plots

        try:
            write_plots(self.out_dir / METRICS_FILE, self.out_dir / PLOTS_DIR)
        except Exception as e:   # a plot must never hide the run's own outcome
            print(f"r1lab: warning: could not write plots: {e}", file=sys.stderr)

    def _progress_bar(self):
        if not self.cfg.log.progress:
            return None
        from tqdm import tqdm

        return tqdm(total=self.cfg.steps, initial=self.step, desc=getattr(self.algorithm, "name", "train"),
                    unit="step", dynamic_ncols=True)

    @staticmethod
    def _say(text: str, bar) -> None:
        if bar is not None:
            bar.write(text)
        else:
            print(text, flush=True)

    def _format(self, record: dict[str, Any], keys: Sequence[str], with_step: bool = True) -> str:
        parts = [f"step {record.get('step', self.step)}/{self.cfg.steps}"] if with_step else []
        seen = set()
        for k in keys:
            v = record.get(k)
            if k in seen or k == "step" or v is None or isinstance(v, bool):
                continue
            seen.add(k)
            if isinstance(v, float):
                parts.append(f"{k} {v:.3g}" if k == "lr" else f"{k} {v:.4f}" if abs(v) < 1e4 else f"{k} {v:.3g}")
            elif isinstance(v, int):
                parts.append(f"{k} {v}")
        return " ".join(parts)

    def _install_sigterm(self):
        """First SIGTERM: stop after the current step (checkpoint + plots); second: interrupt now."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handler(signum, frame):
            if self._stop_requested:
                raise KeyboardInterrupt
            self._stop_requested = True

        return signal.signal(signal.SIGTERM, handler)

    @staticmethod
    def _restore_sigterm(old) -> None:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _plain(metrics: dict) -> dict[str, Any]:
    """Tensors to Python numbers, so every metric line is plain JSON."""
    out = {}
    for k, v in (metrics or {}).items():
        if isinstance(v, torch.Tensor):
            v = v.item()
        elif isinstance(v, np.generic):
            v = v.item()
        out[k] = v
    return out


__all__ = [
    "Algorithm", "Trainer", "WALL_CLOCK_KEYS", "check_seq_len", "check_vocab", "latest_checkpoint",
    "list_checkpoints", "load_start", "lr_factor", "start_meta", "make_optimizer", "resolve_device",
]
