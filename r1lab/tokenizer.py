"""Tokenizer and the R1 text format: byte-level BPE, special tokens, chat and R1-Zero templates.

SPEC §8 (chat format) and §4 (R1-Zero prompt). Three parts:

* **Training** (``train_tokenizer``, ``r1lab tokenizer train``): byte-level BPE with the
  ``tokenizers`` library, so any Unicode text round-trips exactly. Every digit is its own
  pre-token (arithmetic is learned digit by digit; cf. SPEC §4b). The special tokens come
  first, so ``<｜begin▁of▁sentence｜>`` is id 0 and ``<｜end▁of▁sentence｜>`` id 1, as in
  DeepSeek-V3/R1 and our ``tiny`` preset.
* **Loading** (``load_tokenizer``): our shipped tokenizer (``r1lab/assets/tokenizer``) or any
  Hugging Face directory holding a ``tokenizer.json`` (distillation students). Saved
  directories are ordinary HF ones: ``transformers.AutoTokenizer.from_pretrained`` gives
  the same ids and the same ``apply_chat_template`` output (tested; transformers is never
  imported here).
* **Templates** (``render_chat``): a Python rendering of DeepSeek-R1's official Jinja chat
  template, byte-identical to it for system, user and assistant messages (tested against
  the template text itself, ``r1lab/assets/r1_chat_template.jinja``), the R1-Zero plain
  prompt and the math suffix.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from .files import atomic_write_text, iter_jsonl, text_chunks

ASSETS = Path(__file__).resolve().parent / "assets"
SHIPPED_TOKENIZER_DIR = ASSETS / "tokenizer"
CHAT_TEMPLATE_FILE = ASSETS / "r1_chat_template.jinja"
TOKENIZER_FILE = "tokenizer.json"
TOKENIZER_CONFIG_FILE = "tokenizer_config.json"

# ------------------------------------------------------------------ special tokens (SPEC §8)
BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"                 # DeepSeek-V3's padding token (id 2 there too)
USER = "<｜User｜>"
ASSISTANT = "<｜Assistant｜>"
THINK, END_THINK = "<think>", "</think>"
ANSWER, END_ANSWER = "<answer>", "</answer>"

# Control tokens: skipped by ``decode(skip_special_tokens=True)``.
CONTROL_TOKENS = (BOS, EOS, PAD, USER, ASSISTANT)
# Tag tokens: single ids, but ordinary text when decoding (DeepSeek-R1 adds `<think>` the same way).
TAG_TOKENS = (THINK, END_THINK, ANSWER, END_ANSWER)
SPECIAL_TOKENS = CONTROL_TOKENS + TAG_TOKENS   # ids 0..8 in a tokenizer we train
N_BYTES = 256                                  # byte-level alphabet: every byte is a token
MIN_VOCAB_SIZE = len(SPECIAL_TOKENS) + N_BYTES

# Each digit is a pre-token of its own; the byte-level regex then splits words/spaces GPT-2 style.
DIGIT_SPLIT_PATTERN = r"\p{N}"
# Training reads plain-text files in chunks of about this many characters (keeps "\n\n" pairs).
TEXT_CHUNK_CHARS = 8192

# ------------------------------------------------------------------ prompt templates (SPEC §4)
R1_ZERO_TEMPLATE = (
    "A conversation between User and Assistant. The user asks a question, and the Assistant "
    "solves it. The assistant first thinks about the reasoning process in the mind and then "
    "provides the user with the answer. The reasoning process and answer are enclosed within "
    "<think> </think> and <answer> </answer> tags, respectively, i.e., <think> reasoning "
    "process here </think> <answer> answer here </answer>. User: {prompt}. Assistant:"
)
MATH_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."
GENERATION_PROMPT = ASSISTANT + THINK + "\n"
CHAT_ROLES = ("system", "user", "assistant")


class TokenizerError(ValueError):
    """A tokenizer or template problem a user can fix. The message is one line."""


def r1_zero_prompt(question: str) -> str:
    """The R1-Zero plain prompt (SPEC §4) around ``question``; the completion starts after it."""
    return R1_ZERO_TEMPLATE.format(prompt=question)


def math_prompt(question: str) -> str:
    """``question`` followed, on a new line, by the math directive DeepSeek recommends for R1."""
    return f"{question}\n{MATH_SUFFIX}"


def official_chat_template() -> str:
    """DeepSeek-R1's Jinja chat template, verbatim (saved into ``tokenizer_config.json``)."""
    return CHAT_TEMPLATE_FILE.read_text(encoding="utf-8")


# ------------------------------------------------------------------ chat rendering
def render_chat(messages: Sequence[Mapping], *, add_generation_prompt: bool = False, bos_token: str = BOS) -> str:
    """Render ``[{role, content}, ...]`` exactly as DeepSeek-R1's official template does.

    The template's rules, kept on purpose (they are what the published models saw):
      * the system prompt goes right after BOS, whatever its position; with several
        system messages the last one wins;
      * an assistant turn keeps only the text after the *last* ``</think>``
        (``content.split('</think>')[-1]``, surrounding whitespace included); an
        assistant message whose content is None renders nothing;
      * the generation prompt is ``<｜Assistant｜><think>\\n``, even after an assistant turn.
    Tool calls and tool messages are not supported: they are rejected with an error.
    """
    if isinstance(messages, (str, bytes)) or not isinstance(messages, Sequence):
        raise TokenizerError(f"messages must be a list of {{role, content}} objects, got {type(messages).__name__}")
    system_prompt = ""
    for i, m in enumerate(messages):
        _check_message(i, m)
        if m["role"] == "system":
            system_prompt = m["content"]
    parts = [bos_token, system_prompt]
    for m in messages:
        role, content = m["role"], m["content"]
        if role == "user":
            parts.append(USER + content)
        elif role == "assistant" and content is not None:
            if END_THINK in content:
                content = content.split(END_THINK)[-1]
            parts.append(ASSISTANT + content + EOS)
    if add_generation_prompt:
        parts.append(GENERATION_PROMPT)
    return "".join(parts)


def _check_message(i: int, m) -> None:
    if not isinstance(m, Mapping):
        raise TokenizerError(f"message {i}: expected an object with 'role' and 'content', got {type(m).__name__}")
    role = m.get("role")
    if role not in CHAT_ROLES:
        raise TokenizerError(f"message {i}: unsupported role {role!r} (the R1 template here renders "
                             f"{', '.join(CHAT_ROLES)})")
    if m.get("tool_calls"):
        raise TokenizerError(f"message {i}: tool calls are not supported")
    if "content" not in m:
        raise TokenizerError(f"message {i}: missing 'content'")
    content = m["content"]
    if content is None and role == "assistant":
        return
    if not isinstance(content, str):
        raise TokenizerError(f"message {i}: 'content' must be a string, got {type(content).__name__}")


# ------------------------------------------------------------------ the tokenizer
class Tokenizer:
    """A ``tokenizers.Tokenizer`` plus what a reasoning model needs around it.

    ``encode`` never adds BOS/EOS unless asked (``add_special_tokens=True`` applies the
    tokenizer's own post-processor, if any; ours has none): the chat template writes BOS
    itself. ``decode`` keeps every token by default, so ``decode(encode(s)) == s``.
    """

    def __init__(self, backend, config: dict | None = None, source: str | None = None):
        self.backend = backend          # tokenizers.Tokenizer
        self.config = dict(config or {})
        self.source = source
        self.bos_token = _token_text(self.config.get("bos_token"))
        self.eos_token = _token_text(self.config.get("eos_token"))
        self.pad_token = _token_text(self.config.get("pad_token"))
        self.bos_token_id = self.token_to_id(self.bos_token)
        self.eos_token_id = self.token_to_id(self.eos_token)
        self.pad_token_id = self.token_to_id(self.pad_token)
        # ids of the R1 tokens (None where a foreign vocabulary lacks one)
        self.special_ids: dict[str, int | None] = {t: self.token_to_id(t) for t in SPECIAL_TOKENS}
        self.think_token_id = self.special_ids[THINK]
        self.end_think_token_id = self.special_ids[END_THINK]

    # --- vocabulary
    @property
    def vocab_size(self) -> int:
        """Number of ids, added tokens included (the model's embedding needs at least this)."""
        return self.backend.get_vocab_size(with_added_tokens=True)

    def __len__(self) -> int:
        return self.vocab_size

    def token_to_id(self, token: str | None) -> int | None:
        return None if token is None else self.backend.token_to_id(token)

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    # --- text <-> ids
    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        if not isinstance(text, str):
            raise TokenizerError(f"encode expects a string, got {type(text).__name__}")
        return self.backend.encode(text, add_special_tokens=add_special_tokens).ids

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        return [e.ids for e in self.backend.encode_batch(list(texts), add_special_tokens=add_special_tokens)]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids]
        n = self.vocab_size
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise TokenizerError(f"token id {bad} is outside the vocabulary (0..{n - 1})")
        return self.backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def pieces(self, ids: Iterable[int]) -> list[str]:
        """The text of each id alone; a token holding part of a UTF-8 character shows its bytes (``<0xED>``)."""
        out = []
        for i in ids:
            text = self.backend.decode([i], skip_special_tokens=False)
            if "\ufffd" in text:
                token = self.id_to_token(i) or text
                table = _byte_level_table()
                if all(c in table for c in token):
                    token = "".join(f"<0x{table[c]:02X}>" for c in token)
                text = token
            out.append(text)
        return out

    # --- chat
    def apply_chat_template(self, messages: Sequence[Mapping], add_generation_prompt: bool = False,
                            tokenize: bool = True):
        """The R1 chat prompt (``render_chat``) as ids, or as text with ``tokenize=False``.

        Always the R1 format, also for a foreign tokenizer (students are distilled into it, as
        DeepSeek's were); its BOS is the tokenizer's own ``bos_token``.
        """
        text = render_chat(messages, add_generation_prompt=add_generation_prompt, bos_token=self.bos_token or "")
        return self.encode(text) if tokenize else text

    # --- files
    def save(self, directory: str | os.PathLike) -> Path:
        """Write ``tokenizer.json`` and ``tokenizer_config.json`` into ``directory`` (each atomically).

        The config's ``chat_template`` becomes the official R1 one, so that transformers renders
        the prompts this object renders.
        """
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        config = {**self.config, "chat_template": official_chat_template()}
        atomic_write_text(directory / TOKENIZER_FILE, self.backend.to_str(pretty=True) + "\n")
        atomic_write_text(directory / TOKENIZER_CONFIG_FILE, json.dumps(config, indent=2, ensure_ascii=False) + "\n")
        return directory

    def __repr__(self) -> str:
        return (f"Tokenizer({self.vocab_size} tokens, bos={self.bos_token_id}, eos={self.eos_token_id}, "
                f"source={self.source!r})")


@functools.lru_cache(maxsize=1)
def _byte_level_table() -> dict[str, int]:
    """Byte-level BPE's printable stand-in character -> the byte it stands for (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[chr(b)] = b
        else:
            table[chr(256 + extra)] = b
            extra += 1
    return table


def _token_text(value) -> str | None:
    # tokenizer_config.json stores special tokens as a string or as a serialised AddedToken
    if isinstance(value, Mapping):
        value = value.get("content")
    return value if isinstance(value, str) else None


def hf_tokenizer_config(chat_template: str | None = None) -> dict:
    """The ``tokenizer_config.json`` of a tokenizer we train: plain ``PreTrainedTokenizerFast``."""
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": BOS,
        "eos_token": EOS,
        "pad_token": PAD,
        "unk_token": None,
        "add_bos_token": False,
        "add_eos_token": False,
        # decoding must return the exact text (no " ." -> "." clean-up)
        "clean_up_tokenization_spaces": False,
        "chat_template": official_chat_template() if chat_template is None else chat_template,
    }


def load_tokenizer(path: str | os.PathLike | None = None) -> Tokenizer:
    """Our shipped tokenizer (``path=None``), any directory holding a HF ``tokenizer.json``,
    or a shipped model's name (its checkpoint directory, as ``load_model`` takes it)."""
    from tokenizers import Tokenizer as Backend

    from .checkpoint import SHIPPED_MODELS, resolve_checkpoint

    directory = SHIPPED_TOKENIZER_DIR if path is None else resolve_checkpoint(path)
    if not directory.exists():
        raise TokenizerError(f"tokenizer path {directory if path is None else path} does not exist (give a tokenizer "
                             f"or checkpoint directory, or a shipped model name: {', '.join(SHIPPED_MODELS)})")
    if directory.is_file():
        if directory.name != TOKENIZER_FILE:
            raise TokenizerError(f"{directory} is not a tokenizer directory (expected one with {TOKENIZER_FILE})")
        directory = directory.parent
    tj = directory / TOKENIZER_FILE
    if not tj.is_file():
        raise TokenizerError(f"no {TOKENIZER_FILE} in {directory} (a Hugging Face fast-tokenizer directory is needed)")
    try:
        backend = Backend.from_file(str(tj))
    except Exception as e:  # tokenizers raises bare Exception subclasses with long messages
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise TokenizerError(f"cannot read {tj}: {first}") from None
    config: dict = {}
    tc = directory / TOKENIZER_CONFIG_FILE
    if tc.is_file():
        try:
            config = json.loads(tc.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise TokenizerError(f"cannot read {tc}: {e}") from None
        if not isinstance(config, dict):
            raise TokenizerError(f"{tc} must hold a JSON object")
    elif backend.token_to_id(BOS) is not None and backend.token_to_id(EOS) is not None:
        config = {"bos_token": BOS, "eos_token": EOS}
    return Tokenizer(backend, config, source=str(directory))


# ------------------------------------------------------------------ training
@dataclass
class CorpusStats:
    files: int
    documents: int
    characters: int


def _iter_documents(path: Path, chunk_chars: int = TEXT_CHUNK_CHARS) -> Iterator[str]:
    """Text of one training file: every string in each JSONL record, or plain-text chunks.

    Raises TokenizerError (one line) for a missing, unreadable, non-UTF-8 or malformed file.
    """
    try:
        f = open(path, encoding="utf-8", newline="")
    except IsADirectoryError:
        raise TokenizerError(f"{path} is a directory, not a text or JSONL file") from None
    except OSError as e:
        raise TokenizerError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        with f:
            if path.suffix.lower() == ".jsonl":
                for _, record in iter_jsonl(f, path, TokenizerError):
                    yield from _strings(record)
            else:
                yield from text_chunks(f, chunk_chars)
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path} is not UTF-8 text (bad byte at offset {e.start} of a read block)") from None
    except OSError as e:
        raise TokenizerError(f"cannot read {path}: {e.strerror or e}") from None


def _strings(value) -> Iterator[str]:
    if isinstance(value, str):
        if value:
            yield value
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)


def scan_corpus(paths: Sequence[str | os.PathLike]) -> CorpusStats:
    """Read every input once: clear errors before training starts, counts for the progress bar."""
    if not paths:
        raise TokenizerError("no input files given")
    docs = chars = 0
    for p in map(Path, paths):
        if not p.exists():
            raise TokenizerError(f"input file {p} does not exist")
        n_docs = n_chars = 0
        for doc in _iter_documents(p):
            n_docs += 1
            n_chars += len(doc)
        if n_chars == 0:
            why = " (no strings in its records)" if p.suffix.lower() == ".jsonl" and p.stat().st_size else ""
            raise TokenizerError(f"input file {p} is empty{why}")
        docs += n_docs
        chars += n_chars
    return CorpusStats(files=len(paths), documents=docs, characters=chars)


def train_tokenizer(paths: Sequence[str | os.PathLike], vocab_size: int, out_dir: str | os.PathLike | None = None,
                    *, force: bool = False, show_progress: bool = True) -> tuple[Tokenizer, CorpusStats]:
    """Train a byte-level BPE tokenizer on text/JSONL files; save it to ``out_dir`` if given.

    ``vocab_size`` counts everything: the special tokens (ids 0..8), the 256 byte symbols
    and the learned merges. A corpus too small to yield that many merges gives fewer.
    """
    from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, trainers
    from tokenizers import Tokenizer as Backend

    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int):
        raise TokenizerError(f"vocab size must be an integer, got {vocab_size!r}")
    if vocab_size < MIN_VOCAB_SIZE:
        raise TokenizerError(f"vocab size {vocab_size} is too small: the {len(SPECIAL_TOKENS)} special tokens and "
                             f"{N_BYTES} byte symbols alone need {MIN_VOCAB_SIZE}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        if out.exists() and not out.is_dir():
            raise TokenizerError(f"{out} exists and is not a directory")
        if out.is_dir() and any(out.iterdir()) and not force:
            raise TokenizerError(f"{out} exists and is not empty; choose a new directory or pass --force")
    stats = scan_corpus(paths)

    backend = Backend(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(DIGIT_SPLIT_PATTERN), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    backend.decoder = decoders.ByteLevel()
    specials = [AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS]
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=show_progress,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())

    def corpus() -> Iterator[str]:
        for p in paths:
            yield from _iter_documents(Path(p))

    backend.train_from_iterator(corpus(), trainer=trainer, length=stats.documents)
    # The trainer marks every token it was given as special; the tags are text (SPEC §8).
    data = json.loads(backend.to_str())
    for tok in data["added_tokens"]:
        tok["special"] = tok["content"] in CONTROL_TOKENS
    backend = Backend.from_str(json.dumps(data))
    assert [backend.token_to_id(t) for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    tok = Tokenizer(backend, hf_tokenizer_config(), source=str(out) if out is not None else None)
    if out is not None:
        _save_dir(tok, out)
    return tok, stats


def _save_dir(tok: Tokenizer, out: Path) -> None:
    # A new directory appears complete or not at all; into an existing one each file is replaced atomically.
    if out.is_dir():
        tok.save(out)
        return
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)   # mkdtemp creates 0700
        tok.save(tmp)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise

