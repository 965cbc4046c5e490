"""The ``countdown`` reward (TinyZero's task; SPEC §4 rule rewards, §4b small reproductions).

Rule: the answer is an arithmetic expression over the given numbers using ``+ - * /`` and
parentheses, **each given number exactly once** (TinyZero's rule; a number given twice
may be used twice). Scores, as in TinyZero:

* 1.0 — uses the numbers by the rule and evaluates exactly (``Fraction``) to the target;
* 0.1 (``format_score``) — well formed and uses the numbers by the rule, wrong value;
* 0.0 — anything else: no answer, other characters or operators (``**``, ``//``, unary
  minus, names, calls), a number missing, repeated or not given, division by zero,
  an answer longer than ``MAX_EXPRESSION_CHARS``.

The expression is the ``<answer>`` content of the answer part (else the whole answer
part); a trailing ``= N`` (``3+5*2 = 13``) is dropped and the left side is judged. It is
parsed with ``ast`` and walked; nothing is ever ``eval``-ed, and the tree is checked
before any arithmetic, so ``9**9**9`` or ``__import__('os')`` cost nothing.
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Mapping, Sequence
from fractions import Fraction

from r1lab.reasoning import extract_answer
from r1lab.rewards import RewardError, register_reward
from r1lab.tasks.synthetic import answer_part

MAX_EXPRESSION_CHARS = 256      # an answer longer than this is not a countdown expression
FORMAT_SCORE = 0.1
_ALLOWED_CHARS = re.compile(r"[0-9+\-*/() \t]+")
_TRAILING_RESULT = re.compile(r"(?s)(.*?)=\s*-?\d+(?:\.\d+)?\s*")
_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
_TRANSLATE = str.maketrans({"×": "*", "÷": "/", "−": "-", "\n": " "})


def answer_expression(completion: str, started_in_reasoning: bool | None = None) -> str | None:
    """The expression a completion answers with (trailing ``= N`` removed), or None.

    ``started_in_reasoning``: whether the prompt opened ``<think>``; None accepts both forms
    (``r1lab.tasks.synthetic.answer_part``)."""
    part = answer_part(completion, started_in_reasoning)
    extracted = extract_answer(part)
    expr = (extracted if extracted is not None else part).strip()
    if not expr or len(expr) > MAX_EXPRESSION_CHARS:
        return None
    m = _TRAILING_RESULT.fullmatch(expr)
    if m:
        expr = m.group(1).strip()
    return expr or None


def _parse(expr: str) -> tuple[ast.AST, list[int]] | None:
    """The checked tree of ``expr`` and its integer literals, or None if it is not allowed."""
    if len(expr) > MAX_EXPRESSION_CHARS:
        return None
    expr = expr.translate(_TRANSLATE)
    if not _ALLOWED_CHARS.fullmatch(expr):
        return None
    try:
        tree = ast.parse(expr.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return None
    literals: list[int] = []
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            stack += [node.left, node.right]
        elif isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
        else:
            return None
    return tree, literals


def _evaluate(node: ast.AST) -> Fraction:
    if isinstance(node, ast.Constant):
        return Fraction(node.value)
    left, right = _evaluate(node.left), _evaluate(node.right)
    op = _OPS[type(node.op)]
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    return left / right          # ZeroDivisionError is the caller's


def check_expression(expr: str | None, numbers: Sequence[int], target: int,
                     format_score: float = FORMAT_SCORE) -> float:
    """1.0 / ``format_score`` / 0.0 for one expression (see the module docstring)."""
    if expr is None:
        return 0.0
    parsed = _parse(expr)
    if parsed is None:
        return 0.0
    tree, literals = parsed
    if sorted(literals) != sorted(numbers):
        return 0.0
    try:
        value = _evaluate(tree)
    except (ZeroDivisionError, RecursionError):
        return 0.0
    return 1.0 if value == target else format_score


def countdown_gold(example) -> tuple[list[int], int]:
    """``(numbers, target)`` of an Example (or a ``{"gold": ...}`` dict); gold may be JSON text."""
    gold = example.get("gold") if isinstance(example, Mapping) else getattr(example, "gold", None)
    if isinstance(gold, str):
        try:
            gold = json.loads(gold)
        except json.JSONDecodeError:
            gold = None
    ok = (isinstance(gold, Mapping) and isinstance(gold.get("numbers"), list)
          and all(type(n) is int for n in gold["numbers"]) and type(gold.get("target")) is int)
    if not ok:
        raise RewardError(f"countdown gold must be {{\"numbers\": [int, ...], \"target\": int}}, got {gold!r}")
    return list(gold["numbers"]), gold["target"]


@register_reward("countdown")
def countdown_reward(completions: list[str], examples: list, format_score: float = FORMAT_SCORE,
                     started_in_reasoning: bool | None = None) -> list[float]:
    """TinyZero's countdown reward for each completion (see the module docstring).

    Options: ``format_score`` (for a well-formed wrong answer), ``started_in_reasoning``
    (whether the prompt opened ``<think>``; None, the default, accepts both forms)."""
    if isinstance(format_score, bool) or not isinstance(format_score, (int, float)) or not 0 <= format_score <= 1:
        raise RewardError(f"countdown: format_score must be a number in [0, 1], got {format_score!r}")
    if len(completions) != len(examples):
        raise RewardError(f"{len(completions)} completions for {len(examples)} examples")
    out = []
    for completion, example in zip(completions, examples):
        numbers, target = countdown_gold(example)
        expr = answer_expression(completion, started_in_reasoning)
        out.append(check_expression(expr, numbers, target, float(format_score)))
    return out
