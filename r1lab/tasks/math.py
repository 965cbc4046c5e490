"""Math benchmarks (SPEC §7) and any question/answer JSONL, as ``Task``s.

Registered: ``gsm8k`` (splits ``test``, ``train``), ``math500``, ``aime24``, ``amc23``
(split ``test``) and ``jsonl`` (a file you name). Every split ships in
``r1lab/assets/benchmarks/`` (copies of ``../shared/data/benchmarks/``, see the README
there), GSM8K's 7473-problem training split included; ``path=`` always overrides.

Gold answers (the string the accuracy reward compares with, ``rewards/math.py``):

* gsm8k — the text after the last ``####`` of ``answer``, commas removed (``1,000`` → ``1000``);
* math500 — the content of the last ``\\boxed{}`` of ``answer`` (nested braces allowed);
* aime24, amc23 — ``answer`` as a string (``"025"``, ``"27.0"``: compared numerically);
* jsonl — the question from ``question`` / ``problem`` / ``prompt``; the gold from
  ``answer`` / ``gold`` / ``solution`` (first present): a number as is, a text with
  ``####`` → after the last one, with a ``\\boxed{}`` → its last box, else the text.

Prompt styles (``PROMPT_STYLES``): ``"chat"`` — SPEC §7's recommended use: one user turn,
no system prompt, the question followed by ``MATH_SUFFIX`` (the chat template's generation
prompt then opens ``<think>\\n``); the answer is the last ``\\boxed{}`` after ``</think>``.
``"r1_zero"`` — SPEC §4's plain template; the model writes its own ``<think>`` and the answer
is the ``<answer>`` content or a box (``"auto"``). ``"plain"`` — the bare question, answer
``"auto"``. A task scores in the style it was created with (``style=``) unless ``score``
is told otherwise; ``extract=`` overrides the extraction mode (e.g. ``"last_number"``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from r1lab.files import iter_jsonl
from r1lab.reasoning import last_boxed
from r1lab.tasks.base import TASKS, check_style, Example, Task, TaskError, register_task
from r1lab.tokenizer import math_prompt, r1_zero_prompt

PACKAGE_BENCHMARKS = Path(__file__).resolve().parent.parent / "assets" / "benchmarks"

QUESTION_FIELDS = ("question", "problem", "prompt")
ANSWER_FIELDS = ("answer", "gold", "solution")

# style -> (extraction mode, does the prompt open <think>?)  — see the module docstring
STYLE_EXTRACTION: dict[str, tuple[str, bool]] = {
    "chat": ("boxed", True),
    "r1_zero": ("auto", False),
    "plain": ("auto", False),
}

GoldRule = Callable[[Any, str], str]   # (raw answer value, "<source> line N") -> gold string


# ---------------------------------------------------------------------- gold rules
def gsm8k_gold(value: Any, where: str) -> str:
    """GSM8K: the text after the last ``####``, commas removed."""
    if not isinstance(value, str) or "####" not in value:
        raise TaskError(f"{where}: GSM8K answer has no '####' line")
    gold = value.rsplit("####", 1)[1].strip().replace(",", "")
    if not gold:
        raise TaskError(f"{where}: GSM8K answer is empty after '####'")
    return gold


def boxed_gold(value: Any, where: str) -> str:
    """MATH: the content of the last ``\\boxed{}`` of the reference solution."""
    gold = last_boxed(value) if isinstance(value, str) else None
    if not gold:
        raise TaskError(f"{where}: reference solution has no \\boxed{{}} answer")
    return gold


def plain_gold(value: Any, where: str) -> str:
    """A short answer as a string (numbers via ``str``: ``27.0`` stays ``"27.0"``)."""
    if isinstance(value, bool) or not isinstance(value, (str, int, float)) or not str(value).strip():
        raise TaskError(f"{where}: answer must be a non-empty string or a number, got {value!r}")
    return str(value).strip()


def generic_gold(value: Any, where: str) -> str:
    """Any JSONL: ``####`` → after it; a ``\\boxed{}`` → its last box; else the text itself."""
    if isinstance(value, str):
        if "####" in value:
            return gsm8k_gold(value, where)
        boxed = last_boxed(value)
        if boxed:
            return boxed
    return plain_gold(value, where)


# ---------------------------------------------------------------------- the task
def _first_field(rec: Mapping, names: Sequence[str], where: str) -> tuple[str, Any]:
    for name in names:
        if name in rec and rec[name] is not None:
            return name, rec[name]
    raise TaskError(f"{where}: missing field {' / '.join(repr(n) for n in names)}")


class MathTask(Task):
    """A JSONL-backed math task: one file per split, a gold rule, and math-verify scoring."""

    kind = "math"

    def __init__(self, name: str, files: Mapping[str, Path], gold_rule: GoldRule, *,
                 answer_fields: Sequence[str] = ("answer",), path: str | Path | None = None,
                 style: str = "chat", extract: str | None = None):
        from r1lab.rewards.math import EXTRACT_MODES

        self.name = name
        self.splits = tuple(files)
        self.default_split = "test" if "test" in files else self.splits[0]
        self.files = dict(files)
        self.gold_rule, self.answer_fields = gold_rule, tuple(answer_fields)
        self.path = Path(path) if path is not None else None
        self.style = check_style(style)
        if extract is not None and extract not in EXTRACT_MODES:
            raise TaskError(f"unknown extract mode {extract!r}; known: {', '.join(EXTRACT_MODES)}")
        self.extract = extract

    @property
    def answer_format(self) -> str:  # type: ignore[override]
        """The extraction mode in use: ``extract=`` or the style's (``STYLE_EXTRACTION``)."""
        return self.extract or STYLE_EXTRACTION[self.style][0]

    def file(self, split: str | None = None) -> Path:
        """The JSONL file of ``split`` (``path=`` when given)."""
        split = self.default_split if split is None else split
        if split not in self.splits:
            raise TaskError(f"task {self.name!r} has no split {split!r}; splits: {', '.join(self.splits)}")
        if self.path is not None:
            return self.path
        return self.files[split]

    def examples(self, split: str | None = None) -> Iterator[Example]:
        split = self.default_split if split is None else split
        path = self.file(split)
        try:
            f = open(path, encoding="utf-8")
        except OSError as e:
            raise TaskError(f"task {self.name!r}: cannot read {path}: {e.strerror or e}") from None
        with f:
            index = 0
            for lineno, rec in iter_jsonl(f, path, TaskError):
                where = f"{path} line {lineno}"
                if not isinstance(rec, dict):
                    raise TaskError(f"{where}: expected a JSON object, got {type(rec).__name__}")
                _, question = _first_field(rec, QUESTION_FIELDS, where)
                if not isinstance(question, str) or not question.strip():
                    raise TaskError(f"{where}: the question must be a non-empty string")
                _, answer = _first_field(rec, self.answer_fields, where)
                gold = self.gold_rule(answer, where)
                meta: dict[str, Any] = {"line": lineno, "source": str(path)}
                if "id" in rec:
                    meta["source_id"] = rec["id"]
                if isinstance(answer, str) and answer.strip() != gold:
                    meta["solution"] = answer           # the worked reference (gsm8k, MATH)
                elif isinstance(rec.get("solution"), str):
                    meta["solution"] = rec["solution"]
                yield Example(id=f"{self.name}/{split}/{index}", question=question, gold=gold, meta=meta)
                index += 1

    def prompt(self, example: Example, style: str | None = None) -> str | list[dict]:
        """SPEC §7 chat prompt (user turn = question + MATH_SUFFIX, no system prompt), SPEC §4
        R1-Zero prompt, or the plain question."""
        style = check_style(self.style if style is None else style)
        if style == "chat":
            return [{"role": "user", "content": math_prompt(example.question)}]
        if style == "r1_zero":
            return r1_zero_prompt(example.question)
        return example.question

    def _extraction(self, style: str | None) -> tuple[str, bool]:
        mode, started = STYLE_EXTRACTION[check_style(self.style if style is None else style)]
        return self.extract or mode, started

    def score(self, completions: Sequence[str], examples: Sequence[Example], style: str | None = None) -> list[float]:
        """1.0 / 0.0 per completion: its final answer (answer part only) equals the gold."""
        from r1lab.rewards.math import accuracy_many

        if len(completions) != len(examples):
            raise TaskError(f"{len(completions)} completions for {len(examples)} examples")
        mode, started = self._extraction(style)
        return accuracy_many(completions, [ex.gold for ex in examples], extract=mode, started_in_reasoning=started)

    def answer_key(self, completion: str, example: Example | None = None, style: str | None = None) -> str | None:
        """The canonical final answer (``rewards.math.answer_key``) for cons@k voting."""
        from r1lab.rewards.math import answer_key

        mode, started = self._extraction(style)
        return answer_key(completion, extract=mode, started_in_reasoning=started)

    def same_answer(self, a: str, b: str) -> bool:
        """Whether two answer keys are one vote for cons@k: mathematical equivalence
        (``rewards.math.equivalent``, e.g. ``\\frac12`` and ``0.5``), SPEC §7."""
        from r1lab.rewards.math import equivalent

        return a == b or equivalent(a, b)

    def __repr__(self) -> str:
        return f"MathTask({self.name!r}, style={self.style!r}, path={str(self.path) if self.path else None!r})"


# ---------------------------------------------------------------------- registered tasks
@register_task("gsm8k")
def gsm8k(path: str | Path | None = None, style: str = "chat", extract: str | None = None) -> MathTask:
    """GSM8K: the 1319-problem test split and the 7473-problem train split, both shipped."""
    return MathTask("gsm8k", {"test": PACKAGE_BENCHMARKS / "gsm8k_test.jsonl",
                              "train": PACKAGE_BENCHMARKS / "gsm8k_train.jsonl"},
                    gsm8k_gold, path=path, style=style, extract=extract)


@register_task("math500")
def math500(path: str | Path | None = None, style: str = "chat", extract: str | None = None) -> MathTask:
    """MATH-500 (500 problems; gold = last ``\\boxed{}`` of the reference solution)."""
    return MathTask("math500", {"test": PACKAGE_BENCHMARKS / "math500.jsonl"}, boxed_gold,
                    answer_fields=("answer", "solution"), path=path, style=style, extract=extract)


@register_task("aime24")
def aime24(path: str | Path | None = None, style: str = "chat", extract: str | None = None) -> MathTask:
    """AIME 2024 I+II (30 problems, integer answers 0–999)."""
    return MathTask("aime24", {"test": PACKAGE_BENCHMARKS / "aime24.jsonl"}, plain_gold,
                    path=path, style=style, extract=extract)


@register_task("amc23")
def amc23(path: str | Path | None = None, style: str = "chat", extract: str | None = None) -> MathTask:
    """AMC 2023 (40 problems; answers stored as floats such as ``27.0``)."""
    return MathTask("amc23", {"test": PACKAGE_BENCHMARKS / "amc23.jsonl"}, plain_gold,
                    path=path, style=style, extract=extract)


@register_task("jsonl")
def jsonl(path: str | Path | None = None, style: str = "chat", extract: str | None = None) -> MathTask:
    """Any JSONL of question/answer records (see the module docstring for the fields); the
    one file serves both split names, ``test`` (the default) and ``train``."""
    if path is None:
        raise TaskError("task 'jsonl' needs path= (--task-path): a .jsonl file of question/answer records")
    p = Path(path)
    if not p.is_file():
        raise TaskError(f"task 'jsonl': no such file {p}")
    return MathTask(p.stem, {"test": p, "train": p}, generic_gold,
                    answer_fields=ANSWER_FIELDS, path=p, style=style, extract=extract)

