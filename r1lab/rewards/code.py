"""The ``code`` reward: extract the program from a completion's answer and run its tests.

``extract_code(completion)`` is the last fenced ```` ```python ```` (or ```` ```py ````, or
bare ```` ``` ````) block of the ANSWER part (after ``</think>``, see
``r1lab.reasoning.split_reasoning``); None when there is none.

The reward scores 1.0 when every test passes, else 0.0; ``code_details`` returns the full
``SandboxResult`` of each completion (``passed_fraction``, status, output tails) for the
evaluation harness. Tests come from the example's ``gold``:

* HumanEval (``{"format": "humaneval", "prompt", "test", "entry_point"}``): when the block
  defines ``entry_point`` (a chat model wrote the whole function) the program is
  ``prompt + "\\n" + block`` — the block's definition replaces the prompt's stub, and the
  prompt's imports and helper functions (HumanEval/38, /50 … define helpers there) stay
  available; otherwise the block is the body that continues the prompt: ``prompt + block``
  (the classic HumanEval completion). The asserts of ``check(candidate)`` are run one by
  one (statements before an assert belong to it), so ``passed_fraction`` is meaningful;
  ``assert True`` filler lines are not counted.
* MBPP (``{"format": "mbpp", "test_setup_code", "test_list", "challenge_test_list"}``):
  the block, then ``test_setup_code``, then each assert of ``test_list`` (plus
  ``challenge_test_list`` with ``challenge_tests=True``).
* Any other task: ``{"tests": [...], "setup": "...", "bindings": {...}}``.

An example is an ``Example`` (its ``gold`` attribute), a dict ``{"question": …, "gold": {…}}``
(as the other rewards read theirs; a gold given as JSON text is parsed), or the gold dict itself.

Sandbox options: ``timeout``, ``memory_mb``, ``max_workers``, and ``require``: isolation layers
(``landlock``, ``seccomp``, ``netns``, ``pidns``, ``uid``) without which no program is run —
a RewardError instead of a result (see ``r1lab.rewards.sandbox``). Without it a missing layer
is logged as a warning once per process and the programs run with less isolation.
"""

from __future__ import annotations

import ast
import functools
import json
import re
from collections.abc import Mapping, Sequence

from r1lab.reasoning import END_THINK, THINK, split_reasoning
from r1lab.rewards import RewardError, register_reward
from r1lab.rewards.sandbox import Limits, Program, SandboxError, SandboxResult, check_require, run_many

CODE_LANGUAGES = ("", "python", "py", "python3", "py3")
_FENCE = re.compile(r"^([ \t]*)```[ \t]*([^\s`]*)[^`]*$")
_CLOSE = re.compile(r"^[ \t]*```[ \t]*$")

DEFAULT_TIMEOUT = 10.0
DEFAULT_MEMORY_MB = 1024


# ---------------------------------------------------------------------- extraction
def code_blocks(text: str) -> list[tuple[str, str]]:
    """Every closed fenced block of ``text`` as ``(language, code)``, in order. A fence
    indented by some spaces (inside a list item) has that indentation removed from its lines;
    the code's own indentation is kept (a HumanEval body block stays indented)."""
    blocks, lines, i = [], text.split("\n"), 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        indent, lang = m.group(1), m.group(2).lower()
        for j in range(i + 1, len(lines)):
            if _CLOSE.match(lines[j]):
                body = [ln[len(indent):] if ln.startswith(indent) else ln for ln in lines[i + 1: j]]
                blocks.append((lang, "\n".join(body).replace("\r\n", "\n").strip("\n")))
                i = j + 1
                break
        else:
            break                    # an unclosed fence (a truncated completion) holds no code
    return blocks


def answer_part(completion: str, started_in_reasoning: bool | None = True) -> str:
    """What follows ``</think>`` (``split_reasoning``). ``started_in_reasoning=None`` (a caller
    that does not know the prompt, e.g. ``Task.score``) accepts both forms: a completion with
    ``</think>`` or an opening ``<think>`` is split as if the prompt had opened it, one with
    neither tag is all answer."""
    if started_in_reasoning is None:
        if END_THINK in completion or completion.lstrip().startswith(THINK):
            started_in_reasoning = True
        else:
            return completion.strip()
    return split_reasoning(completion, started_in_reasoning)[1]


def extract_code(completion: str, started_in_reasoning: bool | None = True) -> str | None:
    """The last ```python / ```py / bare ``` block in the answer part of ``completion``
    (the part after ``</think>``); None when there is none."""
    answer = answer_part(completion, started_in_reasoning)
    code = None
    for lang, body in code_blocks(answer):
        if lang in CODE_LANGUAGES and body.strip():
            code = body
    return code


def normalize_code(code: str | None) -> str | None:
    """A canonical text of ``code`` for voting (cons@k): the AST unparsed (formatting and
    comments dropped) when it parses, else the lines with trailing spaces and blank lines removed."""
    if code is None:
        return None
    try:
        return ast.unparse(ast.parse(code))
    except (SyntaxError, ValueError, RecursionError):
        lines = [ln.rstrip() for ln in code.replace("\r\n", "\n").split("\n")]
        return "\n".join(ln for ln in lines if ln) or None


# ---------------------------------------------------------------------- programs
def defines(code: str, name: str) -> bool:
    """Does ``code`` (parsed) define ``name`` at the top level (def, class, assignment, import)?"""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError, RecursionError):
        return False
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            if any((a.asname or a.name.split(".")[0]) == name for a in node.names):
                return True
    return False


def humaneval_source(code: str, prompt: str, entry_point: str) -> str:
    """The program HumanEval runs for an extracted ``code`` block (see the module docstring)."""
    if defines(code, entry_point):
        return prompt.rstrip("\n") + "\n\n\n" + code + "\n"
    sep = "" if prompt.endswith("\n") else "\n"
    return prompt + sep + code + "\n"


def _is_filler(stmt: ast.stmt) -> bool:
    return isinstance(stmt, ast.Assert) and isinstance(stmt.test, ast.Constant) and bool(stmt.test.value)


@functools.lru_cache(maxsize=4096)
def split_check(test: str) -> tuple[tuple[str, ...], str] | None:
    """``(tests, parameter)``: the statements of HumanEval's ``def check(candidate)`` grouped
    into one test per assert (the statements before an assert run with it, trailing ones join
    the last), or None when ``test`` cannot be split safely (then ``check`` runs whole)."""
    try:
        tree = ast.parse(test)
    except (SyntaxError, ValueError, RecursionError):
        return None
    checks = [n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "check"]
    if len(checks) != 1:
        return None
    fn = checks[0]
    if len(fn.args.args) != 1 or fn.args.vararg or fn.args.kwarg or fn.args.kwonlyargs or fn.decorator_list:
        return None
    for node in ast.walk(fn):
        if node is not fn and isinstance(node, (ast.Return, ast.Yield, ast.YieldFrom, ast.Await,
                                                ast.Global, ast.Nonlocal)):
            return None              # meaningless at module level
    groups: list[list[ast.stmt]] = []
    pending: list[ast.stmt] = []
    for stmt in fn.body:
        if _is_filler(stmt):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant) and isinstance(stmt.value.value, str):
            continue                 # a docstring
        pending.append(stmt)
        if any(isinstance(n, ast.Assert) for n in ast.walk(stmt)):
            groups.append(pending)
            pending = []
    if pending:
        if groups:
            groups[-1].extend(pending)
        else:
            groups.append(pending)
    if not groups:
        return None
    try:
        tests = tuple("\n".join(ast.unparse(s) for s in g) for g in groups)
    except (ValueError, RecursionError):
        return None
    return tests, fn.args.args[0].arg


def humaneval_tests(gold: Mapping) -> tuple[tuple[str, ...], str, dict[str, str]]:
    """``(tests, setup, bindings)`` for a HumanEval gold: the split asserts of ``check`` when
    possible, else the one test ``check(candidate)``."""
    test, entry = gold["test"], gold["entry_point"]
    split = split_check(test)
    if split is None:
        return ("check(candidate)",), test, {"candidate": entry}
    tests, param = split
    return tests, test, {param: entry}


def gold_tests(gold: Mapping, challenge_tests: bool = False) -> tuple[tuple[str, ...], str, dict[str, str]]:
    """``(tests, setup, bindings)`` that the sandbox runs for ``gold``."""
    if not isinstance(gold, Mapping):
        raise RewardError(f"code reward: gold must be a dict of tests, got {type(gold).__name__}")
    fmt = gold.get("format") or ("humaneval" if "entry_point" in gold and "test" in gold
                                 else "mbpp" if "test_list" in gold else "tests")
    if fmt == "humaneval":
        return humaneval_tests(gold)
    if fmt == "mbpp":
        tests = tuple(gold.get("test_list") or ())
        if challenge_tests:
            tests += tuple(gold.get("challenge_test_list") or ())
        return tests, gold.get("test_setup_code") or "", {}
    if "tests" in gold:
        return tuple(gold["tests"]), gold.get("setup") or "", dict(gold.get("bindings") or {})
    raise RewardError(f"code reward: unknown gold format {fmt!r} (expected humaneval, mbpp or a 'tests' list)")


def build_program(code: str, gold: Mapping, challenge_tests: bool = False) -> Program:
    """The sandbox ``Program`` for an extracted ``code`` block and an example's ``gold``."""
    tests, setup, bindings = gold_tests(gold, challenge_tests)
    fmt = gold.get("format") or ("humaneval" if "entry_point" in gold and "test" in gold else "")
    if fmt == "humaneval":
        code = humaneval_source(code, gold["prompt"], gold["entry_point"])
    return Program(code=code, tests=tests, setup=setup, bindings=bindings)


# ---------------------------------------------------------------------- reward
def example_gold(example) -> Mapping:
    """The gold of ``example``: an Example's ``gold`` attribute, a ``{"gold": …}`` dict's
    entry (JSON text is parsed), or a gold dict given directly."""
    if isinstance(example, Mapping):
        if "gold" not in example and "question" in example:
            raise RewardError("code reward: the example dict has a 'question' but no 'gold'")
        gold = example["gold"] if "gold" in example else example
    else:
        gold = getattr(example, "gold", example)
    if isinstance(gold, str):
        try:
            gold = json.loads(gold)
        except json.JSONDecodeError:
            raise RewardError(f"code reward: gold is text but not JSON: {gold[:60]!r}") from None
    if not isinstance(gold, Mapping):
        raise RewardError(f"code reward: gold must be a dict of tests, got {type(gold).__name__}")
    return gold


def _require(require) -> tuple[str, ...]:
    try:
        return check_require(require)
    except SandboxError as e:
        raise RewardError(f"code reward: {e}") from None


def _limits(timeout, memory_mb) -> Limits:
    try:
        timeout = float(DEFAULT_TIMEOUT if timeout is None else timeout)
        memory_mb = int(DEFAULT_MEMORY_MB if memory_mb is None else memory_mb)
    except (TypeError, ValueError):
        raise RewardError("code reward: timeout and memory_mb must be numbers") from None
    if timeout <= 0 or memory_mb < 64:
        raise RewardError(f"code reward: timeout must be > 0 and memory_mb >= 64 (got {timeout}, {memory_mb})")
    return Limits(timeout=timeout, memory_mb=memory_mb)


def code_details(completions: Sequence[str], examples: Sequence, *, timeout: float | None = None,
                 memory_mb: int | None = None, max_workers: int | None = None, challenge_tests: bool = False,
                 started_in_reasoning: bool | None = True,
                 require: Sequence[str] | str | None = None) -> list[SandboxResult]:
    """The sandbox result of each completion (``passed_fraction``, ``status`` …), in order.
    A completion without a code block gets status "error" and 0 passed. ``require``: see
    the module docstring (RewardError when a listed layer cannot be applied here)."""
    if len(completions) != len(examples):
        raise RewardError(f"code reward: {len(completions)} completions for {len(examples)} examples")
    limits = _limits(timeout, memory_mb)
    require = _require(require)
    results: list[SandboxResult | None] = [None] * len(completions)
    todo: list[tuple[int, Program]] = []
    for i, (completion, example) in enumerate(zip(completions, examples)):
        gold = example_gold(example)
        code = extract_code(completion or "", started_in_reasoning)
        if code is None:
            tests = gold_tests(gold, challenge_tests)[0]
            results[i] = SandboxResult("error", 0, len(tests), error="no ```python code block in the answer",
                                       tests=("",) * len(tests))
        else:
            todo.append((i, build_program(code, gold, challenge_tests)))
    try:
        ran = run_many([p for _, p in todo], limits, max_workers=max_workers, require=require)
    except SandboxError as e:
        raise RewardError(f"code reward: {e}") from None
    for (i, _), result in zip(todo, ran):
        results[i] = result
    return results  # type: ignore[return-value]


@register_reward("code")
def code_reward(completions: Sequence[str], examples: Sequence, *, timeout: float | None = None,
                memory_mb: int | None = None, max_workers: int | None = None, challenge_tests: bool = False,
                started_in_reasoning: bool | None = True, require: Sequence[str] | str | None = None) -> list[float]:
    """1.0 when the answer's code passes every test of the example, else 0.0 (the passed
    fraction is in ``code_details``). ``timeout``: wall seconds per program (default 10);
    ``memory_mb``: address-space limit (default 1024); ``max_workers``: programs run at once
    (default: CPUs, at most 8); ``challenge_tests``: MBPP's extra asserts too; ``require``:
    isolation layers without which nothing runs (e.g. ``[landlock, seccomp]``)."""
    return [r.score for r in code_details(completions, examples, timeout=timeout, memory_mb=memory_mb,
                                          max_workers=max_workers, challenge_tests=challenge_tests,
                                          started_in_reasoning=started_in_reasoning, require=require)]
