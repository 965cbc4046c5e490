"""Shape rewards: the R1-Zero format reward (SPEC §4), open-r1's tag count, R1's
language-consistency reward (SPEC §5) and DAPO's soft overlong penalty (SPEC §3 refinements).

All are batched: ``fn(completions, examples, **options) -> list[float]``.
"""

from __future__ import annotations

import functools
import numbers
import re
import unicodedata
from collections.abc import Sequence
from typing import Any

from r1lab.reasoning import ANSWER, END_ANSWER, END_THINK, THINK, split_reasoning
from r1lab.rewards import RewardError, register_reward

FORMAT_STYLES = ("r1_zero", "r1")
TAGS = (THINK, END_THINK, ANSWER, END_ANSWER)

# ---------------------------------------------------------------------- format
_R1_ZERO = re.compile(r"\s*<think>(?P<think>.*?)</think>\s*<answer>(?P<answer>.*?)</answer>\s*", re.DOTALL)


def format_ok(completion: str, style: str = "r1_zero", require_reasoning: bool = False) -> bool:
    """Whether ``completion`` has the expected shape.

    ``"r1_zero"`` (SPEC §4): ``<think> reasoning </think> <answer> answer </answer>`` with
    each tag exactly once, a non-empty answer, and only whitespace outside.
    ``"r1"`` (SPEC §8): the prompt already opened ``<think>``, so the completion is
    ``reasoning</think>answer``: exactly one ``</think>``, a non-empty answer, no other
    ``<think>`` (one repeated at the very start is tolerated, as ``split_reasoning`` does).
    The reasoning may be empty (``<think> </think>`` is well-formed, as R1 itself writes for
    trivial questions) unless ``require_reasoning``: the format rule rewards the shape, never
    the amount of thinking — a length preference hidden in a format reward gets gamed (SPEC §4b).
    """
    if style == "r1_zero":
        m = _R1_ZERO.fullmatch(completion)
        return bool(m) and all(completion.count(t) == 1 for t in TAGS) \
            and (bool(m["think"].strip()) or not require_reasoning) and bool(m["answer"].strip())
    if style == "r1":
        body = completion.lstrip()
        if body.startswith(THINK):
            body = body[len(THINK):]
        if THINK in body or body.count(END_THINK) != 1:
            return False
        reasoning, answer = split_reasoning(body, started_in_reasoning=True)
        return (bool(reasoning) or not require_reasoning) and bool(answer)
    raise RewardError(f"unknown format style {style!r}; known: {', '.join(FORMAT_STYLES)}")


@register_reward("format")
def format_reward(completions: Sequence[str], examples: Sequence[Any], style: str = "r1_zero",
                  require_reasoning: bool = False) -> list[float]:
    """1.0 for a well-formed completion, else 0.0 (``style``, ``require_reasoning``: see ``format_ok``)."""
    if style not in FORMAT_STYLES:
        raise RewardError(f"unknown format style {style!r}; known: {', '.join(FORMAT_STYLES)}")
    return [1.0 if format_ok(c, style, require_reasoning) else 0.0 for c in completions]


@register_reward("tag_count")
def tag_count_reward(completions: Sequence[str], examples: Sequence[Any], strict_newlines: bool = False) -> list[float]:
    """Partial format credit (open-r1's ``tag_count_reward``): 0.25 for each of ``<think>``,
    ``</think>``, ``<answer>``, ``</answer>`` that appears exactly once. With
    ``strict_newlines`` the tags must sit on their own lines as open-r1 requires
    (``<think>\\n``, ``\\n</think>\\n``, ``\\n<answer>\\n``, ``\\n</answer>``)."""
    patterns = (("<think>\n", "\n</think>\n", "\n<answer>\n", "\n</answer>") if strict_newlines else TAGS)
    return [sum(0.25 for p in patterns if c.count(p) == 1) for c in completions]


# ---------------------------------------------------------------------- language consistency
# Script of a character by Unicode block. Digits, punctuation, symbols, spaces are neutral.
_SCRIPT_RANGES = (
    ("latin", ((0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x1E00, 0x1EFF))),
    ("greek", ((0x370, 0x3FF), (0x1F00, 0x1FFF))),
    ("cyrillic", ((0x400, 0x52F),)),
    ("armenian", ((0x530, 0x58F),)),
    ("hebrew", ((0x590, 0x5FF),)),
    ("arabic", ((0x600, 0x6FF), (0x750, 0x77F), (0x8A0, 0x8FF), (0xFB50, 0xFDFF), (0xFE70, 0xFEFF))),
    ("devanagari", ((0x900, 0x97F),)),
    ("bengali", ((0x980, 0x9FF),)),
    ("thai", ((0xE00, 0xE7F),)),
    ("georgian", ((0x10A0, 0x10FF),)),
    ("hangul", ((0x1100, 0x11FF), (0x3130, 0x318F), (0xAC00, 0xD7AF))),
    # Han and kana together: Chinese and Japanese share Han; each character counts as a word.
    ("cjk", ((0x3040, 0x30FF), (0x3400, 0x4DBF), (0x4E00, 0x9FFF), (0xF900, 0xFAFF), (0x20000, 0x2FA1F))),
)
SCRIPTS = tuple(name for name, _ in _SCRIPT_RANGES)
_PER_CHARACTER = {"cjk"}
_LATEX_COMMAND = re.compile(r"\\[A-Za-z]+")


@functools.lru_cache(maxsize=1 << 16)
def char_script(ch: str) -> str | None:
    """The script of one character (``SCRIPTS``), or None for neutral characters."""
    cp = ord(ch)
    for name, ranges in _SCRIPT_RANGES:
        for lo, hi in ranges:
            if lo <= cp <= hi:
                return name if unicodedata.category(ch)[0] == "L" else None
    return None


@functools.lru_cache(maxsize=1 << 16)
def _is_mark(ch: str) -> bool:
    return unicodedata.category(ch).startswith("M")


def script_words(text: str) -> list[str]:
    """The script of each *word* of ``text``: a maximal run of letters of one script (marks
    join the run), or a single CJK character. Neutral and not counted: LaTeX commands
    (``\\frac``), digits, punctuation, math symbols, and one-letter words outside CJK
    (variables such as ``x`` or ``π``)."""
    text = _LATEX_COMMAND.sub(" ", text)
    words: list[str] = []
    run_script, run_len = None, 0

    def close_run():
        if run_script is not None and run_len >= 2:
            words.append(run_script)

    for ch in text:
        script = char_script(ch)
        if script is None and run_script is not None and _is_mark(ch):
            run_len += 1                      # a combining mark continues the word
            continue
        if script in _PER_CHARACTER:
            close_run()
            run_script, run_len = None, 0
            words.append(script)
        elif script is not None and script == run_script:
            run_len += 1
        else:
            close_run()
            run_script, run_len = script, (1 if script else 0)
    close_run()
    return words


def dominant_script(text: str) -> str | None:
    """The script most words of ``text`` are written in (ties: first seen); None if no words."""
    counts: dict[str, int] = {}
    for s in script_words(text):
        counts[s] = counts.get(s, 0) + 1
    return max(counts, key=counts.__getitem__) if counts else None


def _question_of(example: Any) -> str:
    q = example.get("question") if isinstance(example, dict) else getattr(example, "question", None)
    return q if isinstance(q, str) else ""


@register_reward("language_consistency")
def language_consistency_reward(completions: Sequence[str], examples: Sequence[Any], language: str | None = None,
                                default_language: str = "latin", started_in_reasoning: bool = True) -> list[float]:
    """SPEC §5 language-consistency reward: the share of the reasoning's words written in
    the target script, in [0, 1].

    The target is ``language`` when given (one of ``SCRIPTS``), else the dominant script of
    the example's question (``default_language`` when the question has no words, e.g. pure
    arithmetic). Words are counted by ``script_words``. Reasoning with no counted words
    (only math) scores 1.0; an empty reasoning scores 0.0. The reasoning is what precedes
    ``</think>`` (``split_reasoning``; ``started_in_reasoning`` as in the accuracy reward).
    """
    for opt in (language, default_language):
        if opt is not None and opt not in SCRIPTS:
            raise RewardError(f"unknown language/script {opt!r}; known: {', '.join(SCRIPTS)}")
    out = []
    for completion, example in zip(completions, examples):
        target = language or dominant_script(_question_of(example)) or default_language
        reasoning, _ = split_reasoning(completion, started_in_reasoning=started_in_reasoning)
        if not reasoning:
            out.append(0.0)
            continue
        words = script_words(reasoning)
        out.append(sum(w == target for w in words) / len(words) if words else 1.0)
    return out


# ---------------------------------------------------------------------- overlong
def overlong_penalty(length: int, max_len: int, cache: int) -> float:
    """DAPO's soft overlong punishment: 0 up to ``max_len − cache`` tokens, then linear down
    to −1 at ``max_len`` (and −1 beyond)."""
    start = max_len - cache
    if length <= start:
        return 0.0
    if length >= max_len:
        return -1.0
    return (start - length) / cache


def _meta_tokens(example: Any) -> Any:
    meta = example.get("meta") if isinstance(example, dict) else getattr(example, "meta", None)
    return meta.get("num_tokens") if isinstance(meta, dict) else None


@register_reward("overlong")
def overlong_reward(completions: Sequence[str], examples: Sequence[Any], max_len: int | None = None,
                    cache: int | None = None, num_tokens: Sequence[int] | None = None) -> list[float]:
    """DAPO soft overlong penalty (≤ 0; see ``overlong_penalty``) on each completion's length
    in *tokens*.

    Options: ``max_len`` (required: the generation limit), ``cache`` (the soft band, default
    ``max_len // 4``). Lengths come from ``num_tokens`` — one count per completion; the
    trainer passes it as call context (``CombinedReward(...)(completions, examples,
    num_tokens=[…])``) since it already holds the generated ids — or else from each
    example's ``meta["num_tokens"]`` (when examples are per-completion records).
    """
    if not isinstance(max_len, int) or max_len < 1:
        raise RewardError(f"overlong: max_len must be a positive integer (the generation limit), got {max_len!r}")
    cache = max_len // 4 if cache is None else cache
    if not isinstance(cache, int) or not 1 <= cache <= max_len:
        raise RewardError(f"overlong: cache must be an integer in [1, max_len], got {cache!r}")
    if num_tokens is None:
        num_tokens = [_meta_tokens(ex) for ex in examples]
    if len(num_tokens) != len(completions) or any(not isinstance(n, numbers.Integral) for n in num_tokens):
        raise RewardError("overlong: needs num_tokens (one token count per completion) or meta['num_tokens'] "
                          "in every example")
    return [overlong_penalty(int(n), max_len, cache) for n in num_tokens]
