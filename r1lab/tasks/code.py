"""Code benchmarks: HumanEval and MBPP, scored by running the answer's code in the sandbox.

Both load packaged, unchanged copies of the public files (``r1lab/assets/benchmarks/``;
``path=`` reads another copy). ``Example.gold`` holds what the sandbox needs:

* ``humaneval`` (164 problems, split ``test``): ``{"format": "humaneval", "prompt", "test",
  "entry_point"}``; id ``HumanEval/<n>``.
* ``mbpp`` (974 problems): ``{"format": "mbpp", "test_setup_code", "test_list",
  "challenge_test_list"}``; id ``mbpp/<task_id>``. Splits are the standard MBPP ones by
  ``task_id``: ``test`` 11–510 (the evaluation split), ``validation`` 511–600, ``train``
  601–974, ``prompt`` 1–10 (few-shot examples).

Prompts ask for the function in a ```` ```python ```` block: HumanEval shows the signature and
docstring, MBPP the problem text and its first test assert (as is standard). Styles as for
the math tasks: ``chat`` (default; the generation prompt opens ``<think>``, the code is taken
from what follows ``</think>``), ``r1_zero`` and ``plain`` (the model writes its own
``<think>…</think>``, or none). A task scores in the style it was created with (``style=``)
unless told otherwise. ``score`` is the ``code`` reward (1.0 when every test passes),
``details`` the sandbox results with ``passed_fraction``, ``answer_key`` the normalised code
(for cons@k voting). Options: ``timeout`` (s), ``memory_mb``, ``max_workers``, ``require``
(sandbox isolation layers without which nothing runs, e.g. ``[landlock, seccomp]``), and for
MBPP ``challenge_tests`` (also run ``challenge_test_list``).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

from r1lab.files import iter_jsonl
from r1lab.rewards.code import code_details, extract_code, normalize_code
from r1lab.rewards.sandbox import SandboxError, SandboxResult, check_require
from r1lab.tasks.base import check_style, Example, Task, TaskError, register_task
from r1lab.tokenizer import r1_zero_prompt

BENCHMARK_DIR = Path(__file__).resolve().parent.parent / "assets" / "benchmarks"
HUMANEVAL_FILE = BENCHMARK_DIR / "humaneval.jsonl"
MBPP_FILE = BENCHMARK_DIR / "mbpp.jsonl"

MBPP_SPLITS = {"test": (11, 510), "validation": (511, 600), "train": (601, 974), "prompt": (1, 10)}

HUMANEVAL_INSTRUCTION = (
    "Complete the following Python function. Write the whole function `{entry_point}`, with the "
    "imports it needs, in a single ```python code block.\n\n```python\n{prompt}\n```"
)
MBPP_INSTRUCTION = (
    "{text}\nYour code should pass this test:\n\n```python\n{test}\n```\n\n"
    "Write the Python function in a single ```python code block."
)


def _read(path: Path, name: str) -> Iterator[tuple[int, dict]]:
    try:
        f = open(path, encoding="utf-8")
    except OSError as e:
        raise TaskError(f"{name}: cannot read {path}: {e.strerror or e}") from None
    with f:
        for lineno, rec in iter_jsonl(f, path, TaskError):
            if not isinstance(rec, dict):
                raise TaskError(f"{path} line {lineno}: expected a JSON object, got {type(rec).__name__}")
            yield lineno, rec


def _need(rec: dict, key: str, kind, path, lineno):
    value = rec.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        want = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise TaskError(f"{path} line {lineno}: field {key!r} must be a {want}, got {value!r:.60}")
    return value


# style -> does the prompt open <think>? (chat: R1's generation prompt does; r1_zero/plain:
# the model writes its own <think> … </think>, or none, and the rest is the answer)
STYLE_STARTS_IN_REASONING = {"chat": True, "r1_zero": False, "plain": False}


class _CodeTask(Task):
    kind = "code"
    answer_format = "code"          # a ```python block in the answer part (not \boxed/<answer>)
    default_path: Path

    def __init__(self, path: str | Path | None = None, style: str = "chat", timeout: float | None = None,
                 memory_mb: int | None = None, max_workers: int | None = None,
                 require: Sequence[str] | str | None = None):
        self.path = Path(path) if path is not None else self.default_path
        self.style = check_style(style)
        try:
            require = list(check_require(require))
        except SandboxError as e:
            raise TaskError(f"{self.name}: {e}") from None
        self.reward_options = {"timeout": timeout, "memory_mb": memory_mb, "max_workers": max_workers,
                               "require": require}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(style={self.style!r}, path={str(self.path)!r})"

    def _check_split(self, split: str | None) -> str:
        split = self.default_split if split is None else split
        if split not in self.splits:
            raise TaskError(f"{self.name} has no split {split!r}; choose one of {', '.join(self.splits)}")
        return split

    def prompt(self, example: Example, style: str | None = None) -> str | list[dict]:
        """The chat prompt (one user turn, no system prompt), the R1-Zero prompt or the plain
        instruction; all ask for the function in a ```python block."""
        style = check_style(self.style if style is None else style)
        if style == "chat":
            return [{"role": "user", "content": example.question}]
        if style == "r1_zero":
            return r1_zero_prompt(example.question)
        return example.question

    def _started(self, style: str | None) -> bool:
        return STYLE_STARTS_IN_REASONING[check_style(self.style if style is None else style)]

    def details(self, completions: Sequence[str], examples: Sequence[Example], style: str | None = None,
                **options) -> list[SandboxResult]:
        """The sandbox result of each completion (status, ``passed_fraction``, output tails);
        ``options`` override the task's ``timeout``/``memory_mb``/``max_workers``."""
        if len(completions) != len(examples):
            raise TaskError(f"{len(completions)} completions for {len(examples)} examples")
        return code_details(completions, examples, started_in_reasoning=self._started(style),
                            **{**self.reward_options, **options})

    def score(self, completions: Sequence[str], examples: Sequence[Example], style: str | None = None) -> list[float]:
        """1.0 when the code of the answer part passes every test, else 0.0."""
        return [r.score for r in self.details(completions, examples, style)]

    def answer_key(self, completion: str, example: Example | None = None, style: str | None = None) -> str | None:
        return normalize_code(extract_code(completion, started_in_reasoning=self._started(style)))


@register_task("humaneval")
class HumanEval(_CodeTask):
    name = "humaneval"
    splits = ("test",)
    default_split = "test"
    default_path = HUMANEVAL_FILE

    def examples(self, split: str | None = None) -> Iterator[Example]:
        self._check_split(split)
        for lineno, rec in _read(self.path, self.name):
            task_id = _need(rec, "task_id", str, self.path, lineno)
            prompt = _need(rec, "prompt", str, self.path, lineno)
            test = _need(rec, "test", str, self.path, lineno)
            entry = _need(rec, "entry_point", str, self.path, lineno)
            question = HUMANEVAL_INSTRUCTION.format(entry_point=entry, prompt=prompt.strip("\n"))
            gold = {"format": "humaneval", "prompt": prompt, "test": test, "entry_point": entry}
            meta = {"task_id": task_id, "canonical_solution": rec.get("canonical_solution"), "line": lineno}
            yield Example(id=task_id, question=question, gold=gold, meta=meta)


@register_task("mbpp")
class MBPP(_CodeTask):
    name = "mbpp"
    splits = ("test", "validation", "train", "prompt")
    default_split = "test"
    default_path = MBPP_FILE

    def __init__(self, path: str | Path | None = None, style: str = "chat", timeout: float | None = None,
                 memory_mb: int | None = None, max_workers: int | None = None, challenge_tests: bool = False,
                 require: Sequence[str] | str | None = None):
        super().__init__(path, style, timeout, memory_mb, max_workers, require)
        self.reward_options["challenge_tests"] = bool(challenge_tests)

    def examples(self, split: str | None = None) -> Iterator[Example]:
        lo, hi = MBPP_SPLITS[self._check_split(split)]
        for lineno, rec in _read(self.path, self.name):
            task_id = _need(rec, "task_id", int, self.path, lineno)
            if not lo <= task_id <= hi:
                continue
            text = _need(rec, "text", str, self.path, lineno)
            tests = _need(rec, "test_list", list, self.path, lineno)
            if not tests or not all(isinstance(t, str) for t in tests):
                raise TaskError(f"{self.path} line {lineno}: field 'test_list' must be a non-empty list of strings")
            setup = rec.get("test_setup_code") or ""
            challenge = rec.get("challenge_test_list") or []
            if not isinstance(setup, str) or not isinstance(challenge, list) \
                    or not all(isinstance(t, str) for t in challenge):
                raise TaskError(f"{self.path} line {lineno}: 'test_setup_code' must be a string and "
                                f"'challenge_test_list' a list of strings")
            question = MBPP_INSTRUCTION.format(text=text.strip(), test=tests[0].strip())
            gold = {"format": "mbpp", "test_setup_code": setup, "test_list": list(tests),
                    "challenge_test_list": list(challenge)}
            meta = {"task_id": task_id, "code": rec.get("code"), "text": text, "line": lineno}
            yield Example(id=f"mbpp/{task_id}", question=question, gold=gold, meta=meta)
