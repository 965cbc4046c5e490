"""Training recipes: typed dataclasses, validated on construction, loaded 1:1 from YAML.

One dataclass per concern (STYLE habit 3): ``ModelSpec`` (what to start from),
``OptimConfig`` (AdamW), ``ScheduleConfig`` (warm-up then cosine/constant/linear),
``CheckpointConfig``, ``LogConfig``, ``EvalConfig``. ``BaseTrainConfig`` holds the
sections every stage shares plus the run's knobs (seed, steps, out_dir, …); each stage
subclasses it and adds its own ``data`` section and objective weights:

* ``PretrainConfig`` — next-token CE + λ·MTP + α·balance loss (SPEC §2);
* ``SFTConfig`` — the same objective on assistant tokens only.

``load_recipe(path, cls, overrides)`` is generic: it maps a YAML file onto *any*
dataclass tree. A later stage reuses it by composing the same sections, e.g.::

    @dataclass
    class GRPOData: ...                          # its own data section

    @dataclass
    class GRPOConfig(BaseTrainConfig):
        data: GRPOData = field(default_factory=GRPOData)
        group_size: int = 16                    # SPEC §3
        def __post_init__(self):
            super().__post_init__()
            check(self.group_size >= 2, "group_size", "must be >= 2, got ...")

    cfg = load_recipe("recipes/r1_zero_tiny.yaml", GRPOConfig, ["optim.lr=3e-6"])

Rules of the loader: unknown keys are errors naming the dotted key and listing the valid
ones; values are type-checked against the annotations (``int``, ``float`` — YAML ints
accepted —, ``bool``, ``str``, ``list[X]``, ``dict[str, X]``, ``X | None``, ``Any``,
nested dataclasses); ``--set a.b=value`` overrides are parsed with ``yaml.safe_load``.
Every error is one line: ``recipe field 'optim.lr': must be > 0, got -1``.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

SCHEDULE_KINDS = ("cosine", "constant", "linear")
COMPUTE_DTYPES = ("auto", "float32", "bfloat16")
DEVICES = ("auto", "cpu", "cuda")
SYNTHETIC_SOURCES = ("arithmetic", "chain_add", "countdown")
PRETRAIN_SOURCES = SYNTHETIC_SOURCES + ("files",)
PROMPT_STYLES = ("r1_zero", "chat", "plain")
PRETRAIN_LOSS_ON = ("all", "completion")
SFT_LOSS_ON = ("all", "last")


class TrainError(ValueError):
    """A training problem a user can fix (recipe, data, checkpoint). The message is one line."""


class TrainConfigError(TrainError):
    """A recipe value is wrong. ``field`` is the dotted path of the offending key."""

    def __init__(self, field_name: str, reason: str):
        self.field = field_name
        self.reason = reason
        super().__init__(f"recipe field {field_name!r}: {reason}")


def check(ok: bool, field_name: str, reason: str) -> None:
    """Raise ``TrainConfigError(field_name, reason)`` unless ``ok`` (used by ``__post_init__``)."""
    if not ok:
        raise TrainConfigError(field_name, reason)


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_num(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _positive_int(v, name: str) -> None:
    check(_is_int(v) and v >= 1, name, f"must be an integer >= 1, got {v!r}")


def _nonneg_int(v, name: str) -> None:
    check(_is_int(v) and v >= 0, name, f"must be an integer >= 0, got {v!r}")


def _choice(v, name: str, choices: tuple[str, ...]) -> None:
    check(v in choices, name, f"must be one of {', '.join(choices)}, got {v!r}")


# ---------------------------------------------------------------------- sections
@dataclass
class ModelSpec:
    """What to start from and how to compute.

    init: a preset name (``tiny``, ``small``, …), a ``config.json`` path (random
        weights), or a checkpoint directory (its weights).
    overrides: ``ModelConfig`` fields replaced in a preset/config (``{hidden_size: 64}``);
        not allowed with a checkpoint (its weights fix the shapes).
    dtype: compute dtype. ``auto``: bf16 autocast on CUDA, fp32 on CPU. Weights and
        optimizer state stay fp32 (master weights, STYLE habit 8).
    tokenizer: tokenizer directory; default the checkpoint's tokenizer, else the shipped one.
    """

    init: str = "tiny"
    overrides: dict[str, Any] = field(default_factory=dict)
    dtype: str = "auto"
    tokenizer: str | None = None

    def __post_init__(self) -> None:
        check(isinstance(self.init, str) and self.init != "", "init",
              f"must be a preset name, a config.json path or a checkpoint directory, got {self.init!r}")
        check(isinstance(self.overrides, dict), "overrides", f"must be a mapping, got {self.overrides!r}")
        _choice(self.dtype, "dtype", COMPUTE_DTYPES)


@dataclass
class OptimConfig:
    """AdamW. ``grad_clip`` 0 disables clipping (the norm is still logged); ``grad_accum``
    micro-batches are summed into one optimizer step. Weight decay applies to matrices only
    (not to norms, biases or the router's correction bias, which is a buffer)."""

    lr: float = 3e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    eps: float = 1e-8
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    grad_accum: int = 1

    def __post_init__(self) -> None:
        check(_is_num(self.lr) and self.lr > 0, "lr", f"must be > 0, got {self.lr!r}")
        check(isinstance(self.betas, (list, tuple)) and len(self.betas) == 2
              and all(_is_num(b) and 0 <= b < 1 for b in self.betas), "betas",
              f"must be two numbers in [0, 1), got {self.betas!r}")
        self.betas = [float(b) for b in self.betas]
        check(_is_num(self.eps) and self.eps > 0, "eps", f"must be > 0, got {self.eps!r}")
        check(_is_num(self.weight_decay) and self.weight_decay >= 0, "weight_decay",
              f"must be >= 0, got {self.weight_decay!r}")
        check(_is_num(self.grad_clip) and self.grad_clip >= 0, "grad_clip",
              f"must be >= 0 (0 = no clipping), got {self.grad_clip!r}")
        _positive_int(self.grad_accum, "grad_accum")


@dataclass
class ScheduleConfig:
    """Learning-rate multiplier per optimizer step (``lr_factor`` in loop.py): linear
    warm-up over ``warmup_steps``, then ``kind`` decays to ``min_lr_ratio`` at
    ``total_steps`` (default: every optimizer step of the run)."""

    warmup_steps: int = 0
    kind: str = "cosine"
    min_lr_ratio: float = 0.1
    total_steps: int | None = None

    def __post_init__(self) -> None:
        _nonneg_int(self.warmup_steps, "warmup_steps")
        _choice(self.kind, "kind", SCHEDULE_KINDS)
        check(_is_num(self.min_lr_ratio) and 0 <= self.min_lr_ratio <= 1, "min_lr_ratio",
              f"must be in [0, 1], got {self.min_lr_ratio!r}")
        if self.total_steps is not None:
            _positive_int(self.total_steps, "total_steps")


@dataclass
class CheckpointConfig:
    """A checkpoint every ``every`` train steps (0: only at the end); the last ``keep_last``
    are kept (0: all)."""

    every: int = 0
    keep_last: int = 3

    def __post_init__(self) -> None:
        _nonneg_int(self.every, "every")
        _nonneg_int(self.keep_last, "keep_last")


@dataclass
class LogConfig:
    """metrics.jsonl gets one line per step whatever ``every`` says; ``every`` paces the
    printed lines (without a progress bar) and TensorBoard. ``sample_every`` > 0 writes
    ``samples`` greedy completions of ``sample_tokens`` tokens to samples.jsonl."""

    every: int = 10
    sample_every: int = 0
    samples: int = 4
    sample_tokens: int = 64
    tensorboard: bool = False
    progress: bool = True
    plots: bool = True

    def __post_init__(self) -> None:
        _positive_int(self.every, "every")
        _nonneg_int(self.sample_every, "sample_every")
        _positive_int(self.samples, "samples")
        _positive_int(self.sample_tokens, "sample_tokens")
        for name in ("tensorboard", "progress", "plots"):
            check(isinstance(getattr(self, name), bool), name, f"must be true or false, got {getattr(self, name)!r}")


@dataclass
class EvalConfig:
    """Every ``every`` steps (0: never): the stage's held-out loss on ``heldout_rows`` fixed
    rows, and, when ``task`` is set, ``r1lab.eval.evaluate`` on the in-memory model
    (logged as ``eval/pass@1``, ``eval/mean_response_tokens``, ``eval/format_rate``) with an
    engine of ``kv_cache_mb`` MiB of KV cache."""

    every: int = 0
    heldout_rows: int = 16
    task: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    split: str | None = None
    prompt_style: str | None = None
    k: int = 1
    limit: int = 32
    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    kv_cache_mb: float = 64.0

    def __post_init__(self) -> None:
        _nonneg_int(self.every, "every")
        _nonneg_int(self.heldout_rows, "heldout_rows")
        check(_is_num(self.kv_cache_mb) and self.kv_cache_mb > 0, "kv_cache_mb",
              f"must be > 0, got {self.kv_cache_mb!r}")
        if self.prompt_style is not None:
            _choice(self.prompt_style, "prompt_style", PROMPT_STYLES)
        _positive_int(self.k, "k")
        _positive_int(self.limit, "limit")
        _positive_int(self.max_tokens, "max_tokens")
        check(_is_num(self.temperature) and self.temperature >= 0, "temperature",
              f"must be >= 0, got {self.temperature!r}")
        check(_is_num(self.top_p) and 0 < self.top_p <= 1, "top_p", f"must be in (0, 1], got {self.top_p!r}")


@dataclass
class BaseTrainConfig:
    """What every training stage shares (pre-training, SFT, GRPO, …).

    steps: train steps (one ``algorithm.train_step`` each; it may hold several optimizer steps).
    resume: continue from the latest complete checkpoint in ``out_dir`` (``--resume``).
    bias_gamma: γ of the auxiliary-loss-free bias update after each optimizer step
        (SPEC §2: 0.001; 0 freezes the biases).
    threads: torch CPU threads (None: torch's default); fix it for bit-exact resumes.
    """

    model: ModelSpec = field(default_factory=ModelSpec)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    log: LogConfig = field(default_factory=LogConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 0
    steps: int = 100
    out_dir: str = "runs/train"
    resume: bool = False
    device: str = "auto"
    threads: int | None = None
    bias_gamma: float = 0.001

    def __post_init__(self) -> None:
        _nonneg_int(self.seed, "seed")
        _positive_int(self.steps, "steps")
        check(isinstance(self.out_dir, str) and self.out_dir != "", "out_dir", f"must be a path, got {self.out_dir!r}")
        check(isinstance(self.resume, bool), "resume", f"must be true or false, got {self.resume!r}")
        check(self.device in DEVICES or (isinstance(self.device, str) and self.device.startswith("cuda:")),
              "device", f"must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.threads is not None:
            _positive_int(self.threads, "threads")
        check(_is_num(self.bias_gamma) and self.bias_gamma >= 0, "bias_gamma",
              f"must be >= 0, got {self.bias_gamma!r}")


# ---------------------------------------------------------------------- stages
def _check_lm_objective(cfg) -> None:
    """The fields pre-training and SFT share: rows, row length and the SPEC §2 loss weights."""
    _positive_int(cfg.batch_size, "batch_size")
    check(_is_int(cfg.seq_len) and cfg.seq_len >= 2, "seq_len", f"must be an integer >= 2, got {cfg.seq_len!r}")
    check(_is_num(cfg.mtp_lambda) and cfg.mtp_lambda >= 0, "mtp_lambda", f"must be >= 0, got {cfg.mtp_lambda!r}")
    if cfg.balance_alpha is not None:
        check(_is_num(cfg.balance_alpha) and cfg.balance_alpha >= 0, "balance_alpha",
              f"must be >= 0, got {cfg.balance_alpha!r}")


@dataclass
class PretrainData:
    """Pre-training documents, packed into rows of ``seq_len + 1`` tokens.

    source ``arithmetic`` / ``chain_add`` / ``countdown``: the corpus of that synthetic task
    of ``r1lab.tasks.synthetic`` (``options`` are the task's knobs, e.g. arithmetic's ops,
    digits, mul_digits, negative or chain_add's terms, digits; ``worked_fraction`` of
    the documents carry the worked solution, SPEC §4b — or ``[start, end]``: the fraction
    moves linearly from start at the first document to end at document steps × batch_size ×
    grad_accum (the last step's with ``pack: false``; packed rows hold several documents, so
    there the end comes earlier and holds); ``style`` the prompt form).
    source ``files``: ``paths`` of JSONL (the ``text_field`` of each record is a document)
    or plain-text files (cut into chunks at line ends); held-out documents are
    ``heldout_paths`` or else a ``heldout_fraction`` of documents chosen by hash.
    ``pack``: documents back to back in rows of ``seq_len + 1`` (default), or false: one
    document per row, padded (short documents; each attends only to itself — data.py).
    ``loss_on``: ``all`` tokens (default) or, for a synthetic source, the ``completion``
    only — the question is context, not a target (its random digits are irreducible noise
    that measurably drowned what a tiny model must learn from the worked solutions).
    """

    source: str = "arithmetic"
    options: dict[str, Any] = field(default_factory=dict)
    worked_fraction: float | list[float] = 0.25
    style: str = "r1_zero"
    paths: list[str] = field(default_factory=list)
    text_field: str = "text"
    heldout_paths: list[str] = field(default_factory=list)
    heldout_fraction: float = 0.02
    shuffle: bool = True
    pack: bool = True
    loss_on: str = "all"

    def __post_init__(self) -> None:
        _choice(self.source, "source", PRETRAIN_SOURCES)
        _choice(self.loss_on, "loss_on", PRETRAIN_LOSS_ON)
        check(isinstance(self.pack, bool), "pack", f"must be true or false, got {self.pack!r}")
        check(isinstance(self.options, dict), "options", f"must be a mapping, got {self.options!r}")
        wf = self.worked_fraction
        ramp = isinstance(wf, (list, tuple))
        ends = list(wf) if ramp else [wf]
        check(len(ends) == (2 if ramp else 1) and all(_is_num(x) and 0 <= x <= 1 for x in ends), "worked_fraction",
              f"must be a number in [0, 1] or a list [start, end] of two, got {wf!r}")
        self.worked_fraction = float(ends[0]) if len(ends) == 1 else [float(x) for x in ends]
        _choice(self.style, "style", PROMPT_STYLES)
        check(_is_num(self.heldout_fraction) and 0 <= self.heldout_fraction < 1, "heldout_fraction",
              f"must be in [0, 1), got {self.heldout_fraction!r}")
        if self.source == "files":
            check(bool(self.paths), "paths", "source 'files' needs at least one path")
            check(self.loss_on == "all", "loss_on", "'completion' needs a synthetic source (files have no "
                  "prompt/completion boundary; use r1lab sft for chat data)")
        else:
            check(not self.paths, "paths", "only used with source 'files'")


@dataclass
class PretrainConfig(BaseTrainConfig):
    """``r1lab pretrain``: batch_size rows of seq_len tokens per micro-batch (the optimizer
    sees batch_size × grad_accum rows); loss = CE + mtp_lambda·MTP + balance_alpha·balance
    (SPEC §2; balance_alpha None = the model config's ``aux_loss_alpha``)."""

    data: PretrainData = field(default_factory=PretrainData)
    batch_size: int = 16
    seq_len: int = 256
    mtp_lambda: float = 0.3
    balance_alpha: float | None = None
    out_dir: str = "runs/pretrain"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_lm_objective(self)


@dataclass
class SFTData:
    """Chat JSONL: one ``{"messages": [...]}`` or ``{"prompt": ..., "completion": ...}`` per
    line. ``loss_on``: ``all`` assistant turns or only the ``last`` one. Held-out
    conversations are ``heldout_paths`` or a ``heldout_fraction`` chosen by hash."""

    paths: list[str] = field(default_factory=list)
    heldout_paths: list[str] = field(default_factory=list)
    heldout_fraction: float = 0.05
    loss_on: str = "all"
    shuffle: bool = True

    def __post_init__(self) -> None:
        check(bool(self.paths), "paths", "give at least one chat JSONL file")
        check(_is_num(self.heldout_fraction) and 0 <= self.heldout_fraction < 1, "heldout_fraction",
              f"must be in [0, 1), got {self.heldout_fraction!r}")
        _choice(self.loss_on, "loss_on", SFT_LOSS_ON)


@dataclass
class SFTConfig(BaseTrainConfig):
    """``r1lab sft``: conversations packed whole into rows of seq_len + 1 tokens; the loss
    is the pre-training objective on assistant tokens only (MTP kept at a small λ so the
    MTP module stays usable for speculative decoding)."""

    data: SFTData = field(default_factory=lambda: SFTData(paths=["recipes/data/chat_tiny.jsonl"]))
    batch_size: int = 8
    seq_len: int = 512
    mtp_lambda: float = 0.1
    balance_alpha: float | None = None
    out_dir: str = "runs/sft"

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_lm_objective(self)


# ---------------------------------------------------------------------- the loader
T = typing.TypeVar("T")


# Recipes that ship inside the package (r1lab/recipes/, the checkout's recipes/ links there): a
# name such as ``r1_zero_tiny`` or ``recipes/r1_zero_tiny.yaml`` finds them from any directory.
SHIPPED_RECIPES_DIR = Path(__file__).resolve().parent.parent / "recipes"


def shipped_recipes() -> list[str]:
    return sorted(p.stem for p in SHIPPED_RECIPES_DIR.glob("*.yaml"))


def resolve_recipe(path: str | os.PathLike) -> Path:
    """``path`` itself when it exists; else the shipped recipe it names (``r1_zero_tiny``,
    ``r1_zero_tiny.yaml`` or ``recipes/r1_zero_tiny.yaml``); else ``path`` (its loader says
    it does not exist)."""
    p = Path(path)
    if p.exists() or p.parent not in (Path("."), Path("recipes")):
        return p
    for name in (p.name, p.name + ".yaml"):
        if (SHIPPED_RECIPES_DIR / name).is_file():
            return SHIPPED_RECIPES_DIR / name
    return p


def load_recipe(path: str | os.PathLike | None, cls: type[T], overrides: list[str] | None = None) -> T:
    """A ``cls`` instance from a YAML recipe (None: the defaults) plus ``key=value`` overrides.
    ``path`` is a file or the name of a shipped recipe (``resolve_recipe``)."""
    data: dict = {}
    if path is not None:
        p = resolve_recipe(path)
        try:
            text = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise TrainError(f"recipe file {p} does not exist (shipped recipes: {', '.join(shipped_recipes())})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise TrainError(f"cannot read recipe {p}: {e}") from None
        try:
            loaded = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(e, "problem", None) or str(e).splitlines()[0]
            raise TrainError(f"recipe {p} is not valid YAML{where}: {problem}") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise TrainError(f"recipe {p} must be a mapping of keys to values, got {type(loaded).__name__}")
        data = loaded
    for item in overrides or []:
        apply_override(data, item)
    return from_dict(cls, data)


def apply_override(data: dict, item: str) -> None:
    """Set ``a.b.c=value`` in the nested mapping ``data`` (value parsed as YAML)."""
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise TrainError(f"override {item!r} must look like key.subkey=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as e:
        raise TrainError(f"override {item!r}: value is not valid YAML ({getattr(e, 'problem', e)})") from None
    node = data
    parts = key.split(".")
    for i, part in enumerate(parts[:-1]):
        nxt = node.get(part)
        if nxt is None:
            nxt = node[part] = {}
        if not isinstance(nxt, dict):
            raise TrainError(f"override {item!r}: {'.'.join(parts[:i + 1])!r} is not a section")
        node = nxt
    node[parts[-1]] = value


def from_dict(cls: type[T], data: Any, prefix: str = "") -> T:
    """Build dataclass ``cls`` from a mapping: unknown keys and wrong types are errors
    naming the dotted key; the dataclass's own checks run with the same naming."""
    where = prefix.rstrip(".") or "recipe"
    if not isinstance(data, dict):
        raise TrainConfigError(where, f"must be a mapping, got {_show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in data.items():
        if key not in fields:
            valid = ", ".join(fields)
            raise TrainConfigError(f"{prefix}{key}", f"unknown key; valid keys here: {valid}")
        kwargs[key] = _coerce(hints[key], value, f"{prefix}{key}")
    try:
        return cls(**kwargs)
    except TrainConfigError as e:
        if prefix and not e.field.startswith(prefix):
            raise TrainConfigError(prefix + e.field, e.reason) from None
        raise


def _coerce(tp, value, name: str):
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is Union or origin is types.UnionType:
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for a in options:
            try:
                return _coerce(a, value, name)
            except TrainConfigError as e:
                errors.append(e)
        if len(options) == 1:
            raise errors[0]
        raise TrainConfigError(name, f"expected {_type_name(tp)}, got {_show(value)}")
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, name + ".")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise TrainConfigError(name, f"expected a list, got {_show(value)}")
        item = args[0] if args else Any
        return [_coerce(item, v, f"{name}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise TrainConfigError(name, f"expected a mapping, got {_show(value)}")
        vt = args[1] if len(args) == 2 else Any
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise TrainConfigError(name, f"keys must be strings, got {k!r}")
            out[k] = _coerce(vt, v, f"{name}.{k}")
        return out
    if tp is bool:
        if not isinstance(value, bool):
            raise TrainConfigError(name, f"expected true or false, got {_show(value)}")
        return value
    if tp is int:
        if not _is_int(value):
            raise TrainConfigError(name, f"expected an integer, got {_show(value)}")
        return value
    if tp is float:
        if not _is_num(value):
            raise TrainConfigError(name, f"expected a number, got {_show(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise TrainConfigError(name, f"expected a string, got {_show(value)}")
        return value
    raise TypeError(f"recipe loader: unsupported annotation {tp!r} for {name}")  # a bug in a config class


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _show(value) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


def to_dict(cfg) -> dict:
    """The plain mapping of a config (what ``resolved_recipe.yaml`` holds)."""
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, allow_unicode=True)


__all__ = [
    "BaseTrainConfig", "CheckpointConfig", "EvalConfig", "LogConfig", "ModelSpec", "OptimConfig", "PretrainConfig",
    "PretrainData", "SFTConfig", "SFTData", "ScheduleConfig", "TrainConfigError", "TrainError", "apply_override",
    "check", "from_dict", "load_recipe", "to_dict", "to_yaml",
]
