"""Splitting a completion into reasoning and answer: the one rule every consumer shares.

SPEC §8: the R1 generation prompt ends with ``<｜Assistant｜><think>\\n``, so a completion
usually holds ``reasoning</think>answer`` with no opening tag; the R1-Zero prompt (SPEC §4)
lets the model write ``<think> … </think> <answer> … </answer>`` itself. Rewards,
evaluation, the server and the UI all split with the functions here:

* ``split_reasoning(text)`` — the whole completion at once;
* ``ReasoningStreamParser`` — the same split, incrementally, for streamed text chunks
  (a tag may be cut anywhere between chunks); the concatenated deltas equal
  ``split_reasoning``'s result for every way of cutting the text;
* ``extract_answer(text)`` — the final answer: ``<answer>…</answer>`` or the last
  ``\\boxed{…}`` / ``\\fbox{…}`` (nested braces allowed).

The rule: skip leading whitespace; an opening ``<think>`` there is consumed and starts the
reasoning; without it the text starts in reasoning when ``started_in_reasoning`` (the
prompt opened ``<think>``; the default) and in the answer otherwise. The reasoning ends
at the first ``</think>``; everything after it is the answer (later tags stay as text).
A ``<think>`` never closed means all reasoning and no answer. Both parts are stripped
of surrounding whitespace.
"""

from __future__ import annotations

from typing import NamedTuple

THINK, END_THINK = "<think>", "</think>"
ANSWER, END_ANSWER = "<answer>", "</answer>"
BOX_COMMANDS = ("\\boxed", "\\fbox")

REASONING, ANSWER_KIND = "reasoning", "answer"


def prompt_opens_reasoning(prompt: str) -> bool:
    """True when a prompt already opened the thinking block (R1's generation prompt does)."""
    return prompt.rstrip().endswith(THINK)


def reasoning_tag_ids(tokenizer) -> tuple[int, int] | None:
    """(``<think>`` id, ``</think>`` id) when the tokenizer spells each tag as one token, else None."""
    if tokenizer is None:
        return None
    think, end = tokenizer.encode(THINK), tokenizer.encode(END_THINK)
    return (think[0], end[0]) if len(think) == 1 and len(end) == 1 else None


def ids_open_reasoning(tag_ids: tuple[int, int] | None, prompt_ids) -> bool:
    """Whether completions of these prompt ids start in reasoning: the last ``<think>`` id comes
    after the last ``</think>`` id (False without the tag tokens) — ``prompt_opens_reasoning`` for ids."""
    if tag_ids is None:
        return False
    think, end = tag_ids
    for t in reversed(prompt_ids):
        if t == think or t == end:
            return t == think
    return False


def split_reasoning(text: str, started_in_reasoning: bool = True) -> tuple[str, str]:
    """``(reasoning, answer)`` of a completion; see the module docstring for the rule."""
    s = text.lstrip()
    if s.startswith(THINK):
        s, in_reasoning = s[len(THINK):], True
    else:
        in_reasoning = started_in_reasoning
    if not in_reasoning:
        return "", s.strip()
    reasoning, _, answer = s.partition(END_THINK)
    return reasoning.strip(), answer.strip()


class Delta(NamedTuple):
    kind: str   # "reasoning" or "answer"
    text: str


class ReasoningStreamParser:
    """Incremental ``split_reasoning``: ``feed(chunk)`` and ``finish()`` return new deltas.

    Text that could still turn into a tag (``"</thi"``) and whitespace that could still be
    trailing are held back until the next chunk decides; ``finish()`` releases what is held.
    Consecutive deltas of one kind within a call are merged.

        p = ReasoningStreamParser(started_in_reasoning=prompt_opens_reasoning(prompt))
        for chunk in stream: send(p.feed(chunk))
        send(p.finish())
    """

    def __init__(self, started_in_reasoning: bool = True):
        self.started_in_reasoning = started_in_reasoning
        self._state = "start"            # start -> reasoning -> answer, or start -> answer
        self._buf = ""                   # text not yet classified
        self._held_ws = ""               # whitespace that is trailing unless more text follows
        self._section_started = False    # leading whitespace of a section is dropped
        self._out: list[Delta] = []
        self._finished = False
        self.reasoning = ""              # everything emitted so far, per kind
        self.answer = ""

    @property
    def in_reasoning(self) -> bool:
        return self._state == "reasoning" or (self._state == "start" and self.started_in_reasoning)

    def feed(self, chunk: str) -> list[Delta]:
        if self._finished:
            raise RuntimeError("ReasoningStreamParser.feed() after finish()")
        if not isinstance(chunk, str):
            raise TypeError(f"feed() expects text, got {type(chunk).__name__}")
        self._buf += chunk
        self._advance(final=False)
        return self._take()

    def finish(self) -> list[Delta]:
        if not self._finished:
            self._advance(final=True)
            self._finished = True
        return self._take()

    # ------------------------------------------------------------------ internals
    def _advance(self, final: bool) -> None:
        while True:
            if self._state == "start":
                self._buf = self._buf.lstrip()
                if self._buf.startswith(THINK):
                    self._buf = self._buf[len(THINK):]
                    self._state = "reasoning"
                elif THINK.startswith(self._buf) and not final:
                    return          # empty, or a possible "<thi…": wait for more
                else:
                    self._state = "reasoning" if self.started_in_reasoning else "answer"
                continue
            if self._state == "reasoning":
                i = self._buf.find(END_THINK)
                if i >= 0:
                    self._emit(REASONING, self._buf[:i])
                    self._buf = self._buf[i + len(END_THINK):]
                    self._state, self._held_ws, self._section_started = "answer", "", False
                    continue
                keep = 0 if final else _partial_suffix(self._buf, END_THINK)
                self._emit(REASONING, self._buf[: len(self._buf) - keep])
                self._buf = self._buf[len(self._buf) - keep:]
                return
            # answer: everything is answer text
            self._emit(ANSWER_KIND, self._buf)
            self._buf = ""
            return

    def _emit(self, kind: str, text: str) -> None:
        if not self._section_started:
            text = text.lstrip()
            if not text:
                return
            self._section_started = True
        body = text.rstrip()
        if not body:
            self._held_ws += text
            return
        out = self._held_ws + body
        self._held_ws = text[len(body):]
        if kind == REASONING:
            self.reasoning += out
        else:
            self.answer += out
        if self._out and self._out[-1].kind == kind:
            self._out[-1] = Delta(kind, self._out[-1].text + out)
        else:
            self._out.append(Delta(kind, out))

    def _take(self) -> list[Delta]:
        out, self._out = self._out, []
        return out


def _partial_suffix(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for k in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:k]):
            return k
    return 0


# ---------------------------------------------------------------------- final answers
def extract_answer(text: str) -> str | None:
    """The final answer in ``text`` (pass the answer part of a completion), or None.

    The content of the last ``<answer>…</answer>`` wins (and, if it holds a ``\\boxed{}``,
    that box's content); otherwise the content of the last ``\\boxed{…}`` or ``\\fbox{…}``,
    braces balanced (``\\{`` and ``\\}`` are escaped braces). A last box that is never
    closed (a truncated completion) gives None.
    """
    tagged = _last_tagged(text)
    if tagged is not None:
        boxed = last_boxed(tagged)
        return boxed if boxed is not None else tagged.strip()
    return last_boxed(text)


def _last_tagged(text: str) -> str | None:
    end = text.rfind(END_ANSWER)
    while end >= 0:
        start = text.rfind(ANSWER, 0, end)
        if start >= 0:
            return text[start + len(ANSWER): end]
        end = text.rfind(END_ANSWER, 0, end)
    return None


def last_boxed(text: str) -> str | None:
    """Content of the last ``\\boxed{…}`` / ``\\fbox{…}`` (also ``\\boxed 5``), stripped; None if none."""
    start, cmd = max((text.rfind(c), c) for c in BOX_COMMANDS)
    if start < 0:
        return None
    after = start + len(cmd)
    i = after
    while i < len(text) and text[i] in " \t":
        i += 1
    if i >= len(text) or text[i] != "{":
        if i > after and cmd == "\\boxed":   # "\boxed 5": up to "$" or the end of the line
            rest = text[i:]
            stop = min((j for j in (rest.find("$"), rest.find("\n")) if j >= 0), default=len(rest))
            return rest[:stop].strip() or None
        return None
    depth, j = 0, i
    while j < len(text):
        c = text[j]
        if c == "\\":
            j += 2          # an escaped character (\{, \}, \\) never opens or closes
            continue
        if c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return text[i + 1: j].strip()
        j += 1
    return None
