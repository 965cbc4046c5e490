"""Tasks: benchmark datasets, synthetic generators and any question/answer JSONL (see base.py).

``get_task("gsm8k", style="chat")`` builds a registered task; ``get_task("data/qa.jsonl")``
wraps any question/answer JSONL file (``r1lab/tasks/math.py``).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from r1lab.tasks.base import PROMPT_STYLES, TASKS, Example, Task, TaskError, register_task
from r1lab.tasks import math as _math_tasks  # noqa: F401  (registers gsm8k, math500, aime24, amc23, jsonl)

from r1lab.tasks import code as _code_tasks  # noqa: E402,F401  (humaneval, mbpp)
from r1lab.tasks import synthetic as _synthetic_tasks  # noqa: E402,F401  (arithmetic, countdown)


def get_task(name_or_path: str | Path, **options: Any) -> Task:
    """The task registered as ``name_or_path`` built with ``options`` (``path=``, ``style=`` …),
    or, for an existing ``.jsonl`` file, the generic ``jsonl`` task over it."""
    name = str(name_or_path)
    if name not in TASKS:
        if name.endswith(".jsonl") or Path(name).is_file():
            if not Path(name).is_file():
                raise TaskError(f"no such task file {name!r}")
            options = {**options, "path": name}
            name = "jsonl"
        else:
            raise TaskError(f"unknown task {name!r}; known: {', '.join(sorted(TASKS))}; "
                            f"or give a path to a .jsonl file")
    factory = TASKS[name]
    try:
        sig = inspect.signature(factory)
    except (TypeError, ValueError):
        return factory(**options)
    try:
        sig.bind(**options)
    except TypeError:
        known = [p.name for p in sig.parameters.values() if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        bad = [k for k in options if k not in known]
        raise TaskError(f"task {name!r} does not take option(s) {', '.join(map(repr, bad)) or repr(sorted(options))}; "
                        f"options: {', '.join(known) or 'none'}") from None
    return factory(**options)


__all__ = ["PROMPT_STYLES", "TASKS", "Example", "Task", "TaskError", "register_task", "get_task"]
