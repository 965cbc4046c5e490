"""The task interface every dataset, synthetic generator and reward shares.

An ``Example`` is one problem: an ``id``, the ``question`` as the user would write it,
the ``gold`` answer in the form the task's reward checks (a math answer string for math
tasks; a dict of tests for code tasks; numbers and target for countdown), and ``meta``
(anything else the task keeps: difficulty, worked solution, source line …).

A ``Task`` yields examples for a split, turns an example into a prompt in one of the
prompt styles (SPEC §4 R1-Zero plain prompt, SPEC §7/§8 R1 chat prompt) and scores a
completion. Rewards (``r1lab.rewards``) are batched functions
``fn(completions: list[str], examples: list[Example], **options) -> list[float]``;
``Task.score`` is the task's own correctness rule (1.0 / 0.0, or a fraction for code).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any


class TaskError(ValueError):
    """A task/data problem a user can fix. The message is one line."""


@dataclasses.dataclass(frozen=True)
class Example:
    id: str
    question: str
    gold: Any
    meta: dict = dataclasses.field(default_factory=dict)


PROMPT_STYLES = ("r1_zero", "chat", "plain")


def check_style(style: str) -> str:
    """``style`` if it is a known prompt style, else a one-line TaskError."""
    if style not in PROMPT_STYLES:
        raise TaskError(f"unknown prompt style {style!r}; choose one of {', '.join(PROMPT_STYLES)}")
    return style


class Task:
    """Base class. Subclasses set ``name``, ``kind`` ("math" | "code" | "countdown"),
    ``splits`` and implement ``examples(split)`` and ``score``."""

    name: str = "task"
    kind: str = "math"
    splits: tuple[str, ...] = ("test",)
    default_split: str = "test"
    # Which part of a completion holds the final answer for rewards/eval:
    # "boxed" (\boxed{} in the answer part), "answer_tag" (<answer>…</answer>) or "auto" (either).
    answer_format: str = "auto"
    # The prompt style evaluation and training use unless told otherwise: benchmarks follow
    # the paper's chat protocol (SPEC §7), synthetic tasks the R1-Zero prompt (SPEC §4).
    default_style: str = "chat"

    def examples(self, split: str | None = None) -> Iterator[Example]:
        raise NotImplementedError

    def load(self, split: str | None = None, limit: int | None = None) -> list[Example]:
        out = []
        for ex in self.examples(split):
            if limit is not None and len(out) >= limit:
                break
            out.append(ex)
        return out

    def prompt(self, example: Example, style: str = "chat") -> str | list[dict]:
        """The prompt for ``example``: a string (R1-Zero/plain) or chat messages (chat)."""
        raise NotImplementedError

    def score(self, completions: Sequence[str], examples: Sequence[Example]) -> list[float]:
        """Correctness of each completion (1.0 right, 0.0 wrong; code may give fractions)."""
        raise NotImplementedError

    def answer_key(self, completion: str, example: Example) -> str | None:
        """The extracted final answer of a completion (used for cons@k voting); None if none."""
        raise NotImplementedError

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two answer keys are one vote for cons@k (math tasks: equivalence, not text)."""
        return a == b


# ---------------------------------------------------------------------- registry
TASKS: dict[str, type[Task] | Any] = {}


def register_task(name: str):
    """Class decorator (or factory decorator): ``@register_task("gsm8k")``. The registered
    object is called with keyword options (``path=``, ``seed=``, difficulty knobs …)."""
    def deco(factory):
        if name in TASKS:
            raise ValueError(f"task {name!r} registered twice")
        TASKS[name] = factory
        return factory
    return deco
