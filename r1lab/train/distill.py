"""Distillation into a dense student (SPEC §6; issue 15 item 2): plain SFT on the teacher's
reasoning traces, no RL.

``r1lab distill (--teacher DIR --task T[,T…] | --traces FILE…) --student PRESET|DIR --out DIR``:

1. traces: with ``--teacher``, ``rejection.rejection_sample`` samples the teacher on the tasks'
   training prompts and keeps the correct, readable completions (``OUT/traces.jsonl`` with its
   ``.stats.json`` / ``.stats.md``); with ``--traces``, the given chat JSONL files are used as
   they are. Traces are text, so the student may use another tokenizer than the teacher.
2. SFT of the student (``sft.sft``; ``OUT/sft/``): a dense Qwen2/Llama preset (random init,
   e.g. ``qwen2-tiny``, ``llama-tiny``, ``qwen2-1.5b``) or a checkpoint directory. The student's
   tokenizer is its checkpoint's, else ``--tokenizer``, else the teacher's, else the shipped
   one; the vocabulary is checked against the student *before* any sampling or training.
   Any SFT recipe field can be set (``--set steps=200``, ``--set optim.lr=1e-3``).
3. ``OUT/final/`` is the student in Hugging Face format (``config.json`` + safetensors +
   tokenizer): ``transformers`` loads it as ``Qwen2ForCausalLM`` / ``LlamaForCausalLM``.

Resumable: existing traces are reused (delete them to sample again) and the SFT run continues
from its latest checkpoint; a finished run is not redone.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import TrainError
from .rejection import FilterConfig, SampleConfig, rejection_sample, stats_paths


class DistillError(TrainError):
    """A distillation setup problem a user can fix (one line)."""


@dataclass
class DistillConfig:
    student: str
    out_dir: str = "runs/distill"
    teacher: str | None = None
    tasks: list[str] = field(default_factory=list)
    traces: list[str] = field(default_factory=list)
    tokenizer: str | None = None
    sample: SampleConfig = field(default_factory=SampleConfig)
    filters: FilterConfig = field(default_factory=FilterConfig)
    sft_overrides: list[str] = field(default_factory=list)   # KEY=VALUE of SFTConfig
    task_options: dict | None = None     # None: the options the teacher was trained with (r1lab.json)
    device: str = "auto"
    dtype: str | None = None


def student_tokenizer_dir(cfg: DistillConfig) -> str | None:
    """The tokenizer the student trains with (module docstring); None: the checkpoint's own."""
    from ..checkpoint import resolve_checkpoint

    if resolve_checkpoint(cfg.student).is_dir():
        if cfg.tokenizer:
            raise DistillError(f"--tokenizer applies to a preset student; the checkpoint {cfg.student} brings "
                               f"its own tokenizer")
        return None
    if cfg.tokenizer:
        return cfg.tokenizer
    if cfg.teacher:
        return str(resolve_checkpoint(cfg.teacher))
    return None     # the shipped tokenizer (ModelSpec's default)


def sft_config(cfg: DistillConfig, traces: list[str]):
    from .config import SFTConfig, load_recipe

    base = [f"model.init={cfg.student}", f"out_dir={Path(cfg.out_dir) / 'sft'}", "mtp_lambda=0.0",
            f"device={cfg.device}"]
    tok = student_tokenizer_dir(cfg)
    if tok:
        base.append(f"model.tokenizer={tok}")
    sft = load_recipe(None, SFTConfig, base + list(cfg.sft_overrides))
    sft.data.paths = list(traces)
    return sft


def check_student(cfg: DistillConfig) -> None:
    """Before any sampling or training: the student resolves, is dense, and its vocabulary
    holds its tokenizer (so it can hold the traces)."""
    from .loop import resolve_start

    model_cfg, _, _ = resolve_start(sft_config(cfg, ["-"]).model)   # TrainError on a bad init / vocabulary
    if model_cfg.model_type == "deepseek_v3":
        raise DistillError(f"--student {cfg.student} is a DeepSeek MoE model; distillation trains a dense student "
                           f"(a qwen2/llama preset such as qwen2-tiny, or a dense checkpoint)")


def distill(cfg: DistillConfig, progress: bool = True) -> dict[str, Any]:
    """Run both steps (module docstring); returns a summary (paths, trace stats, SFT summary)."""
    from .sft import sft

    if (cfg.teacher is None) == (not cfg.traces):
        raise DistillError("give exactly one of --teacher DIR (with --task) or --traces FILE.jsonl")
    if cfg.teacher is not None and not cfg.tasks:
        raise DistillError("--teacher needs --task NAME[,NAME…] (the prompts to sample the teacher on)")
    for p in cfg.traces:
        if not Path(p).is_file():
            raise DistillError(f"--traces {p} does not exist")
    if cfg.teacher is not None:
        from ..checkpoint import CheckpointError, require_checkpoint
        try:
            require_checkpoint(cfg.teacher)
        except CheckpointError as e:
            raise DistillError(f"--teacher: {e}") from None
    check_student(cfg)
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    summary: dict[str, Any] = {"out_dir": str(out), "student": cfg.student}
    if cfg.teacher is not None:
        traces = out / "traces.jsonl"
        js, _ = stats_paths(traces)
        if traces.is_file() and js.is_file():       # written atomically, report last: complete
            import json
            stats = json.loads(js.read_text())
            summary["traces_reused"] = True
        else:
            stats = rejection_sample(cfg.teacher, cfg.tasks, traces, cfg.sample, cfg.filters,
                                     task_options=cfg.task_options, device=cfg.device, dtype=cfg.dtype,
                                     progress=progress)
        if stats["kept"] == 0:
            raise DistillError(f"the teacher kept no completion ({stats['candidates']} sampled; dropped "
                               f"{ {k: v for k, v in stats['dropped'].items() if v} }); sample more (--k, "
                               f"--limit), loosen the filters, or check the teacher with r1lab eval")
        summary["traces"] = [str(traces)]
        summary["trace_stats"] = {k: stats[k] for k in ("prompts", "candidates", "kept", "dropped")}
        trace_paths = [str(traces)]
    else:
        trace_paths = list(cfg.traces)
        summary["traces"] = trace_paths
    scfg = sft_config(cfg, trace_paths)
    from .loop import latest_checkpoint
    final = out / "final"
    sft_final = Path(scfg.out_dir) / "final"
    if sft_final.is_dir() and final.is_dir():
        summary.update({"final": str(final), "sft": {"skipped": "already finished"}})
        return summary
    scfg.resume = latest_checkpoint(scfg.out_dir) is not None
    scfg.log.progress = progress
    result = sft(scfg)
    summary["sft"] = {k: result.get(k) for k in ("step", "final", "stopped", "out_dir")}
    if result.get("stopped"):
        return summary
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(result["final"], tmp)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    summary["final"] = str(final)
    return summary
