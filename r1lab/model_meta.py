"""What a checkpoint says about how it was trained: ``r1lab.json`` beside ``config.json``.

A model answers well only in the prompt form it was trained on (SPEC §4: R1-Zero's
template; §8: the chat template; or the bare question). Hugging Face's ``config.json``
has no place for that, so r1lab writes a small sidecar that other tools ignore::

    {"prompt_style": "plain", "trained_by": "pretrain",
     "task": {"name": "chain_add", "options": {"terms": 10, ...}}}

The trainer writes it with every checkpoint; ``r1lab eval`` / ``evaluate`` and GRPO read
it, so a model is evaluated and trained further with the prompts it knows unless the
user says otherwise. A checkpoint without the file (someone else's model) is fine.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .files import atomic_write_text, jsonable

META_FILE = "r1lab.json"


class MetaError(ValueError):
    """An unreadable ``r1lab.json`` (the message is one line)."""


def read_meta(checkpoint_dir: str | os.PathLike) -> dict[str, Any]:
    """The checkpoint's ``r1lab.json`` as a dict; ``{}`` when the directory has none."""
    from .tasks.base import PROMPT_STYLES

    path = Path(checkpoint_dir) / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise MetaError(f"{path} is not readable JSON ({e}); fix or delete it (it only records how the model "
                        f"was trained)") from None
    if not isinstance(meta, dict):
        raise MetaError(f"{path} must hold a JSON object, got {type(meta).__name__}")
    style = meta.get("prompt_style")
    if style is not None and style not in PROMPT_STYLES:
        raise MetaError(f"{path}: unknown prompt_style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    task = meta.get("task")
    if task is not None and not (isinstance(task, dict) and isinstance(task.get("name"), str)
                                 and isinstance(task.get("options", {}), dict)):
        raise MetaError(f"{path}: 'task' must be {{\"name\": str, \"options\": {{...}}}}, got {task!r}")
    return meta


def write_meta(checkpoint_dir: str | os.PathLike, meta: dict[str, Any]) -> None:
    """Write ``r1lab.json`` atomically (fields that are None are left out)."""
    clean = {k: jsonable(v) for k, v in meta.items() if v is not None}
    atomic_write_text(Path(checkpoint_dir) / META_FILE, json.dumps(clean, indent=2, sort_keys=True) + "\n")


def checkpoint_meta(spec: str | os.PathLike | None) -> dict[str, Any]:
    """``read_meta`` for a model spec (a checkpoint directory or a shipped name); ``{}`` for a
    preset, a config.json or anything that is not a checkpoint directory."""
    if spec is None:
        return {}
    from .checkpoint import resolve_checkpoint

    path = resolve_checkpoint(spec)
    return read_meta(path) if path.is_dir() else {}


def task_meta(name: str | None, options: dict | None) -> dict | None:
    """The ``task`` entry for a task name and its options (None without a task)."""
    return None if not name else {"name": str(name), "options": dict(options or {})}
