"""Training data: documents and conversations, tokenized and packed into fixed-size rows.

Every stream here is a pure function of (seed, position): the trainer's checkpoint stores
the position (``state_dict``), and a resumed run reads exactly the rows it would have
read (loop.py's exact-resume guarantee).

* Pre-training (SPEC §4b): documents — the corpus of a synthetic task of
  ``r1lab.tasks.synthetic`` (arithmetic, chained addition, countdown) or text/JSONL
  files — become ``BOS + doc + EOS`` and are packed back to back into rows of
  ``seq_len + 1`` tokens (``PackedDocuments``; a document may continue into the next
  row), or with ``pack: false`` one per padded row (``PaddedDocuments``). A synthetic
  document may come as its (prompt, completion) pair (``loss_on: completion``): its prompt
  tokens are then context only, never targets. In a row, an untrained token ``t`` is
  stored as ``-2 - t`` and padding as ``PAD = -1``; ``split_rows`` undoes both.
* SFT: chat records are rendered with DeepSeek-R1's template (SPEC §8) and packed whole
  into rows (``PackedConversations``); labels are the token ids on assistant tokens and
  ``IGNORE_INDEX`` (-100) everywhere else — prompts, padding, and so also across the
  boundary between two packed conversations. Attention does cross conversations inside a
  row (standard packing; positions run on through the row).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import random
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..files import iter_jsonl, text_chunks
from ..model.common import IGNORE_INDEX
from ..tokenizer import ASSISTANT, END_THINK, EOS, GENERATION_PROMPT, THINK, USER, TokenizerError, render_chat
from .config import TrainError

SHARD_DOCS = 1024              # synthetic documents per seeded shard: resume regenerates at most one shard
TEXT_CHUNK_CHARS = 8192        # plain-text files are cut into documents of about this size, at line ends
MAX_HELDOUT_DOCS = 100_000     # documents drawn at most to fill the held-out rows


class DataError(TrainError):
    """A data problem a user can fix (missing file, malformed line). One line, with the line number."""


def _derive_seed(*parts: Any) -> int:
    h = hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") >> 1


def in_heldout_bucket(text: str, fraction: float) -> bool:
    """Whether ``text`` falls in the held-out bucket: the same answer for any seed or order."""
    h = int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big")
    return h < fraction * 2.0 ** 64


def _epoch_order(n: int, seed: int, epoch: int, shuffle: bool) -> list[int]:
    order = list(range(n))
    if shuffle:
        random.Random(_derive_seed("order", seed, epoch)).shuffle(order)
    return order


# ---------------------------------------------------------------------- document sources
class SyntheticDocuments:
    """Document ``i`` of the endless corpus of a synthetic task (train questions only).

    ``source`` names the task (``arithmetic``, ``chain_add``, ``countdown``; ``options``
    are its knobs). Documents come in shards of ``SHARD_DOCS``; shard ``s`` is the task's
    ``pretrain_corpus`` under a seed derived from (seed, s), so any position is reachable
    without replaying the stream. ``worked_fraction`` is a number or a ramp ``[start, end]``
    over the first ``total_docs`` documents (each shard takes the ramp's value at its middle;
    end after them and for the held-out documents).
    """

    def __init__(self, options: dict, worked_fraction: float | Sequence[float], style: str, seed: int,
                 source: str = "arithmetic", parts: bool = False, total_docs: int | None = None):
        self.source = source
        self.task = self._task(options)
        self.options, self.style, self.seed = dict(options), style, seed
        ramp = [float(worked_fraction)] * 2 if isinstance(worked_fraction, (int, float)) else list(worked_fraction)
        if ramp[0] != ramp[1] and not total_docs:
            raise DataError("a worked_fraction ramp needs the run's document count (total_docs)")
        self.ramp, self.total_docs = ramp, total_docs
        self.worked_fraction = ramp[1]
        self.parts = parts   # documents as (prompt, completion) pairs: the loss on the completion only
        self._shard: tuple[int, list] | None = None

    def fraction_of_shard(self, s: int) -> float:
        """The worked fraction of shard ``s``: the ramp's value at the shard's middle document."""
        start, end = self.ramp
        if start == end:
            return end
        t = min(1.0, (s + 0.5) * SHARD_DOCS / self.total_docs)
        return start + (end - start) * t

    def _task(self, options: dict, **extra):
        from ..tasks import TaskError, get_task

        try:
            return get_task(self.source, **{**options, **extra})
        except (TaskError, TypeError) as e:
            raise DataError(f"recipe field 'data.options': {e}") from None

    def __getitem__(self, i: int) -> str | tuple[str, str]:
        s, j = divmod(i, SHARD_DOCS)
        if self._shard is None or self._shard[0] != s:
            # the shard seed keeps the historical "arithmetic" namespace for every source
            docs = list(self.task.pretrain_corpus(SHARD_DOCS, worked_fraction=self.fraction_of_shard(s),
                                                  seed=_derive_seed("arithmetic", self.seed, s), style=self.style,
                                                  parts=self.parts))
            self._shard = (s, docs)
        return self._shard[1][j]

    def heldout(self) -> Iterator[str | tuple[str, str]]:
        """Documents of *test*-split questions (never trained on), worked as often as in training."""
        from ..tasks.synthetic import document_parts

        task = self._task(self.options, seed=self.seed, test_size=None)
        pick = random.Random(_derive_seed("heldout-worked", self.seed))
        for ex in task.examples("test"):
            pair = document_parts(ex, pick.random() < self.worked_fraction, self.style)
            yield pair if self.parts else "".join(pair)

    def sample_prompts(self, n: int) -> list[tuple[str, str]]:
        """(prompt, gold answer) of ``n`` test questions, for sample logging."""
        task = self._task(self.options, seed=self.seed, test_size=n)
        return [(task.prompt(ex, self.style) if self.style != "chat" else render_chat(
            task.prompt(ex, "chat"), add_generation_prompt=True), str(ex.gold)) for ex in task.examples("test")]


ArithmeticDocuments = SyntheticDocuments   # the original name (source "arithmetic")


class FileDocuments:
    """Document ``i`` of an endless pass over a fixed list (reshuffled every epoch when ``shuffle``)."""

    def __init__(self, docs: Sequence[str], seed: int, shuffle: bool):
        if not docs:
            raise DataError("no training documents (every document went to the held-out set?)")
        self.docs, self.seed, self.shuffle = list(docs), seed, shuffle
        self._order: tuple[int, list[int]] | None = None

    def __getitem__(self, i: int) -> str:
        epoch, j = divmod(i, len(self.docs))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, _epoch_order(len(self.docs), self.seed, epoch, self.shuffle))
        return self.docs[self._order[1][j]]


def _open_text(path: Path):
    if not path.exists():
        raise DataError(f"data file {path} does not exist")
    if path.is_dir():
        raise DataError(f"data file {path} is a directory")
    try:
        return open(path, encoding="utf-8", newline="")
    except OSError as e:
        raise DataError(f"cannot read data file {path}: {e.strerror or e}") from None


def check_files(paths: Sequence[str]) -> None:
    """Every path exists and is a file (called before anything else is loaded)."""
    for p in map(Path, paths):
        if not p.exists():
            raise DataError(f"data file {p} does not exist")
        if not p.is_file():
            raise DataError(f"data file {p} is not a file")


def read_text_documents(paths: Sequence[str], text_field: str = "text") -> list[str]:
    """Documents of JSONL files (the ``text_field`` string of each record) and plain-text
    files (cut into chunks of about ``TEXT_CHUNK_CHARS`` characters at line ends)."""
    check_files(paths)
    docs: list[str] = []
    for p in map(Path, paths):
        try:
            with _open_text(p) as f:
                if p.suffix.lower() == ".jsonl":
                    for lineno, rec in iter_jsonl(f, p, DataError):
                        text = rec.get(text_field) if isinstance(rec, dict) else None
                        if not isinstance(text, str):
                            raise DataError(f"{p} line {lineno}: expected an object with a string field "
                                            f"{text_field!r} (data.text_field)")
                        if text:
                            docs.append(text)
                else:
                    docs += [c for c in text_chunks(f, TEXT_CHUNK_CHARS) if c.strip()]
        except UnicodeDecodeError as e:
            raise DataError(f"{p} is not UTF-8 text (bad byte at offset {e.start} of a read block)") from None
    if not docs:
        raise DataError(f"no documents in {', '.join(map(str, paths))}")
    return docs


# ---------------------------------------------------------------------- pre-training rows
class PackedDocuments:
    """Rows of ``seq_len + 1`` tokens packed from ``BOS + doc + EOS`` (no BOS added when the
    document's text already starts with it, as chat-style documents do). A (prompt,
    completion) document is tokenized in two parts, as a generator sees it, and its BOS and
    prompt tokens are stored untrained (``untrained(t)``).

    State: the index of the next document and the tokens left over from the last row.
    """

    def __init__(self, docs, tokenizer, seq_len: int):
        self.docs, self.tok, self.row_len = docs, tokenizer, seq_len + 1
        self.next_doc = 0
        self.carry: list[int] = []

    def _with_bos(self, ids: list[int]) -> list[int]:
        return ids if ids and ids[0] == self.tok.bos_token_id else [self.tok.bos_token_id] + ids

    def encode_doc(self, doc: str | tuple[str, str]) -> list[int]:
        if isinstance(doc, str):
            return self._with_bos(self.tok.encode(doc)) + [self.tok.eos_token_id]
        prompt, completion = doc
        context = self._with_bos(self.tok.encode(prompt))
        return [untrained(t) for t in context] + self.tok.encode(completion) + [self.tok.eos_token_id]

    def next_rows(self, n: int) -> torch.Tensor:
        """(n, seq_len + 1) token ids; inputs are ``[:, :-1]``, targets ``[:, 1:]``."""
        rows = []
        for _ in range(n):
            buf = self.carry
            while len(buf) < self.row_len:
                buf = buf + self.encode_doc(self.docs[self.next_doc])
                self.next_doc += 1
            rows.append(buf[: self.row_len])
            self.carry = buf[self.row_len:]
        return torch.tensor(rows, dtype=torch.long)

    def state_dict(self) -> dict[str, Any]:
        return {"next_doc": self.next_doc, "carry": list(self.carry)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.next_doc, self.carry = int(state["next_doc"]), list(state["carry"])


PAD = -1   # padding in rows of unpacked documents: input 0 (never attended by real tokens), target ignored


def untrained(token):
    """How a row stores a token that is input only, never a target (a prompt's): ``-2 - t``
    (an int or a tensor). Its own inverse: ``untrained(untrained(t)) == t``."""
    return -2 - token


class PaddedDocuments(PackedDocuments):
    """One ``BOS + doc + EOS`` per row (``pack: false``), cut to ``seq_len + 1`` tokens and
    padded with ``PAD``: every document starts at position 0 and attends only to itself.

    Why: with packing, a document late in a row starts with attention spread over every
    earlier document; measured on this machine, a tiny model learned to copy a digit from
    11 tokens back in ~60 steps alone but needed several times longer with 8 documents per
    row — and the demo's base model must learn such lookups within 20 CPU minutes.
    """

    def next_rows(self, n: int) -> torch.Tensor:
        rows = []
        for _ in range(n):
            ids = self.encode_doc(self.docs[self.next_doc])[: self.row_len]
            self.next_doc += 1
            rows.append(ids + [PAD] * (self.row_len - len(ids)))
        return torch.tensor(rows, dtype=torch.long)


def split_rows(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) of rows from ``PackedDocuments``/``PaddedDocuments``: an untrained
    token (``untrained(t)``) is input ``t`` and target ``IGNORE_INDEX``; padding is input 0
    and target ``IGNORE_INDEX`` — it only ever follows a document's EOS, so causal attention
    never lets a real token see it."""
    x = rows[:, :-1]
    inputs = torch.where(x < PAD, untrained(x), x.clamp(min=0))
    targets = rows[:, 1:].masked_fill(rows[:, 1:] < 0, IGNORE_INDEX)
    return inputs, targets


def pad_fixed(docs, tokenizer, seq_len: int, rows: int) -> torch.Tensor | None:
    """The first ``rows`` documents, one per padded row (the held-out batch of ``pack: false``)."""
    padder = PaddedDocuments(list(itertools.islice(iter(docs), rows)), tokenizer, seq_len)
    n = len(padder.docs)
    return padder.next_rows(n) if n else None


def pack_fixed(docs: Iterator[str] | Sequence[str], tokenizer, seq_len: int, rows: int) -> torch.Tensor | None:
    """``rows`` packed rows from the start of ``docs`` (the fixed held-out batch); fewer when
    the documents run out, None when they do not fill one row."""
    docs = iter(docs)
    packer = PackedDocuments(None, tokenizer, seq_len)
    out: list[list[int]] = []
    buf: list[int] = []
    for doc in itertools.islice(docs, MAX_HELDOUT_DOCS):
        buf += packer.encode_doc(doc)
        while len(buf) >= packer.row_len and len(out) < rows:
            out.append(buf[: packer.row_len])
            buf = buf[packer.row_len:]
        if len(out) >= rows:
            break
    return torch.tensor(out, dtype=torch.long) if out else None


# ---------------------------------------------------------------------- SFT conversations
@dataclass
class Conversation:
    """One tokenized conversation: ``labels[j]`` is ``ids[j]`` where token j is trained
    (assistant text and its EOS), ``IGNORE_INDEX`` elsewhere. ``where`` is ``file:line``."""

    ids: list[int]
    labels: list[int]
    where: str
    messages: list[dict]


def parse_chat_record(record: Any, where: str) -> list[dict]:
    """``{"messages": [...]}`` or ``{"prompt": str, "completion": str}`` -> messages."""
    if isinstance(record, dict) and "messages" in record:
        messages = record["messages"]
    elif isinstance(record, dict) and "prompt" in record and "completion" in record:
        p, c = record["prompt"], record["completion"]
        if not isinstance(p, str) or not isinstance(c, str):
            raise DataError(f"{where}: 'prompt' and 'completion' must be strings")
        messages = [{"role": "user", "content": p}, {"role": "assistant", "content": c}]
    else:
        raise DataError(f"{where}: expected an object with 'messages' or with 'prompt' and 'completion'")
    try:
        render_chat(messages)   # the template's own checks: roles, content types
    except TokenizerError as e:
        raise DataError(f"{where}: {e}") from None
    if not any(m["role"] == "assistant" and m["content"] for m in messages):
        raise DataError(f"{where}: no assistant message with content to learn from")
    return [dict(m) for m in messages]


def completion_text(content: str) -> str:
    """The final assistant turn as the model writes it after the generation prompt
    ``<｜Assistant｜><think>\\n`` (SPEC §8): a leading ``<think>`` (and its newline) is already
    in the prompt; a reply without reasoning gets an empty one (``\\n</think>\\n\\n`` first),
    as ``r1lab.tasks.synthetic.format_completion`` writes direct answers."""
    text = content
    if text.startswith(THINK):
        text = text[len(THINK):]
        text = text[1:] if text.startswith("\n") else text
    if END_THINK not in text:
        text = f"\n{END_THINK}\n\n{text}"
    return text


def chat_segments(messages: Sequence[Mapping], bos_token: str, loss_on: str = "all") -> list[tuple[str, bool]]:
    """The rendered conversation as (text, trained) segments.

    Earlier turns render exactly as ``render_chat`` does (an assistant turn keeps only what
    follows ``</think>``); the last assistant turn renders as the engine would see it: the
    generation prompt, then ``completion_text(content)`` and EOS. Trained: assistant text
    and its EOS (every assistant turn with ``loss_on="all"``, the last one with ``"last"``);
    the ``<｜Assistant｜>`` / generation-prompt tokens are prompt. Messages after the last
    assistant turn are dropped.
    """
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant" and m["content"])
    system = ""
    for m in messages:
        if m["role"] == "system":
            system = m["content"]
    segs: list[tuple[str, bool]] = [(bos_token + system, False)]
    for i, m in enumerate(messages[: last + 1]):
        role, content = m["role"], m["content"]
        if role == "user":
            segs.append((USER + content, False))
        elif role == "assistant" and i == last:
            segs.append((GENERATION_PROMPT, False))
            segs.append((completion_text(content) + EOS, True))
        elif role == "assistant" and content is not None:
            if END_THINK in content:
                content = content.split(END_THINK)[-1]
            segs.append((ASSISTANT, False))
            segs.append((content + EOS, loss_on == "all"))
    return segs


def encode_conversation(messages: Sequence[Mapping], tokenizer, loss_on: str = "all",
                        where: str = "") -> Conversation:
    """Token ids and labels of a conversation; each segment is tokenized on its own (the
    boundaries are special tokens, and the final prompt ends where the engine's would)."""
    ids: list[int] = []
    labels: list[int] = []
    for text, trained in chat_segments(messages, tokenizer.bos_token or "", loss_on):
        seg = tokenizer.encode(text) if text else []
        ids += seg
        labels += seg if trained else [IGNORE_INDEX] * len(seg)
    return Conversation(ids, labels, where, [dict(m) for m in messages])


def load_conversations(paths: Sequence[str], tokenizer, loss_on: str = "all") -> list[Conversation]:
    """All conversations of chat JSONL files; a malformed line is an error naming file and line."""
    check_files(paths)
    out = []
    for p in map(Path, paths):
        try:
            with _open_text(p) as f:
                for lineno, rec in iter_jsonl(f, p, DataError):
                    where = f"{p} line {lineno}"
                    out.append(encode_conversation(parse_chat_record(rec, where), tokenizer, loss_on, where))
        except UnicodeDecodeError as e:
            raise DataError(f"{p} is not UTF-8 text (bad byte at offset {e.start} of a read block)") from None
    if not out:
        raise DataError(f"no conversations in {', '.join(map(str, paths))}")
    return out


def split_heldout(items: list[Conversation], fraction: float) -> tuple[list[Conversation], list[Conversation]]:
    """(train, held-out) by a hash of each conversation's messages."""
    train, held = [], []
    for c in items:
        key = json.dumps(c.messages, sort_keys=True, ensure_ascii=False)
        (held if fraction > 0 and in_heldout_bucket(key, fraction) else train).append(c)
    return train, held


class PackedConversations:
    """Rows of ``seq_len + 1`` tokens holding whole conversations, in an endless per-epoch
    shuffled order; a conversation that does not fit the rest of a row starts the next row
    (the rest is padding with label -100); one longer than a row is truncated.

    State: the stream index of the next conversation.
    """

    def __init__(self, conversations: Sequence[Conversation], seq_len: int, pad_id: int, seed: int,
                 shuffle: bool = True):
        if not conversations:
            raise DataError("no training conversations (every one went to the held-out set?)")
        self.convs, self.row_len, self.pad_id = list(conversations), seq_len + 1, pad_id
        self.seed, self.shuffle = seed, shuffle
        self.next_conv = 0
        self._order: tuple[int, list[int]] | None = None

    @property
    def truncated(self) -> int:
        """How many conversations are longer than a row."""
        return sum(len(c.ids) > self.row_len for c in self.convs)

    def _conv(self, i: int) -> Conversation:
        epoch, j = divmod(i, len(self.convs))
        if self._order is None or self._order[0] != epoch:
            self._order = (epoch, _epoch_order(len(self.convs), self.seed, epoch, self.shuffle))
        return self.convs[self._order[1][j]]

    def next_rows(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, labels), both (n, seq_len + 1); inputs ``ids[:, :-1]``, targets ``labels[:, 1:]``."""
        rows, labs = [], []
        for _ in range(n):
            ids: list[int] = []
            labels: list[int] = []
            while True:
                c = self._conv(self.next_conv)
                if ids and len(ids) + len(c.ids) > self.row_len:
                    break
                ids += c.ids[: self.row_len]
                labels += c.labels[: self.row_len]
                self.next_conv += 1
                if len(ids) >= self.row_len:
                    break
            pad = self.row_len - len(ids)
            rows.append(ids + [self.pad_id] * pad)
            labs.append(labels + [IGNORE_INDEX] * pad)
        return torch.tensor(rows, dtype=torch.long), torch.tensor(labs, dtype=torch.long)

    def state_dict(self) -> dict[str, Any]:
        return {"next_conv": self.next_conv}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.next_conv = int(state["next_conv"])


def pack_conversations_fixed(conversations: Sequence[Conversation], seq_len: int, pad_id: int,
                             rows: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The fixed held-out batch: up to ``rows`` rows packed like ``PackedConversations`` from
    one pass over ``conversations`` in their order (no repeats)."""
    row_len = seq_len + 1
    out_ids: list[list[int]] = []
    out_labels: list[list[int]] = []
    ids: list[int] = []
    labels: list[int] = []

    def flush() -> None:
        pad = row_len - len(ids)
        out_ids.append(ids + [pad_id] * pad)
        out_labels.append(labels + [IGNORE_INDEX] * pad)

    for c in conversations:
        if ids and len(ids) + len(c.ids) > row_len:
            flush()
            ids, labels = [], []
            if len(out_ids) == rows:
                break
        ids, labels = ids + c.ids[:row_len], labels + c.labels[:row_len]
    if ids and len(out_ids) < rows:
        flush()
    if not out_ids:
        return None
    return torch.tensor(out_ids, dtype=torch.long), torch.tensor(out_labels, dtype=torch.long)


__all__ = [
    "ArithmeticDocuments", "Conversation", "DataError", "FileDocuments", "PackedConversations", "PackedDocuments",
    "PaddedDocuments", "SyntheticDocuments", "pad_fixed", "split_rows",
    "chat_segments", "check_files", "completion_text", "encode_conversation", "in_heldout_bucket", "load_conversations",
    "pack_conversations_fixed", "pack_fixed", "parse_chat_record", "read_text_documents", "split_heldout",
]
