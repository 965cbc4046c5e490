"""`r1lab chat`: a terminal chat with a reasoning model (issue 14; SPEC §8).

Two backends behind one loop:

* ``LocalBackend`` — ``r1lab chat MODEL`` (a checkpoint directory or a shipped name) runs the
  engine in this process with the chat messages as the prompt; the R1 generation prompt opens
  ``<think>``, so ``ReasoningStreamParser(started_in_reasoning=True)`` splits the streamed text
  into thinking and answer;
* ``EndpointBackend`` — ``r1lab chat --endpoint URL``: any OpenAI-compatible server
  (``r1lab serve``, vLLM, SGLang, the DeepSeek API) through the official ``openai`` client,
  streaming chat completions; the thinking arrives in ``delta.reasoning_content`` (or vLLM's
  newer ``delta.reasoning``), the answer in ``delta.content``.

The thinking is shown dimmed on a terminal (behind a ``thinking:`` label when stdout is not
one, or with ``NO_COLOR`` set) and can be hidden (``--hide-thinking``, ``/think``). Only the
answers go back into the history, never the thinking: the R1 template drops it and the
DeepSeek API rejects a returned ``reasoning_content``. Ctrl-C during an answer stops it and
returns to the prompt: the engine request is cancelled (SIGINT is only counted while the
engine runs, and the loop looks between engine steps, so no step is torn in half), the HTTP
stream is closed (the server cancels the generation when its client goes). At the prompt, a
first Ctrl-C says how to leave and a second leaves; Ctrl-D and ``/exit`` leave too.

Errors a user can fix (no server there, a wrong API key, a missing model path, a conversation
longer than the context) are one-line ``ChatError`` messages. Nothing here imports
``r1lab.serve``: the chat is a client of the engine or of a server, like any other.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
from dataclasses import dataclass
from typing import Iterator, TextIO
from urllib.parse import urlsplit

DIM, RESET, CLEAR_LINE = "\x1b[2m", "\x1b[0m", "\r\x1b[K"
# Model text is shown, never obeyed: control characters (an ESC could restyle or retitle the
# terminal) are printed in caret notation, like `cat -v`; newlines and tabs stay.
SHOW_CONTROLS = {c: f"^{chr(c + 64)}" for c in range(32) if chr(c) not in "\n\t"} | {0x7F: "^?"} | \
    {c: "\ufffd" for c in range(0x80, 0xA0)}
PROMPT = ">>> "
CONNECT_TIMEOUT_S = 10.0      # an endpoint that does not accept the connection by then is down
READ_TIMEOUT_S = 600.0        # a long prefill or a busy queue may delay the first token this long
DEFAULT_TEMPERATURE = 0.6     # DeepSeek's recommendation for R1 (SPEC §7)
DEFAULT_TOP_P = 0.95
COMMANDS = {
    "/think": "show or hide the thinking",
    "/reset": "forget the conversation (keeps --system)",
    "/exit": "leave (also /quit, Ctrl-D, or Ctrl-C twice at the prompt)",
    "/help": "this list",
}

REASONING, ANSWER, FINISH, BUDGET = "reasoning", "answer", "finish", "budget"   # kinds of stream pieces


class ChatError(ValueError):
    """A problem the user can fix, in one line (no server, bad key, bad model path, …)."""


@dataclass
class Turn:
    reasoning: str = ""
    answer: str = ""
    finish_reason: str | None = None
    budget_hit: bool = False
    stopped: bool = False


# ------------------------------------------------------------------------- backends
class LocalBackend:
    """The engine in this process. ``stream(messages)`` yields ``(kind, text)`` pieces; closing
    the generator early cancels the engine request (``Engine.stream`` does on exit)."""

    interrupt_blocking_reads = False   # SIGINT is only counted; the loop checks between engine steps

    def __init__(self, model: str, *, temperature: float, top_p: float, max_tokens: int | None,
                 max_reasoning_tokens: int | None, seed: int | None, device: str = "auto",
                 dtype: str | None = None):
        from .engine import CacheLayout, Engine, EngineConfig, SamplingError, SamplingParams
        from .generate import GenerateError, load_model_and_tokenizer, resolve_device

        try:
            resolve_device(device, dtype)   # a bad flag says so before the model loads
        except GenerateError as e:
            raise ChatError(str(e)) from None
        self.model_obj, self.tokenizer = load_model_and_tokenizer(model, None, device, dtype, error=ChatError)
        cfg = self.model_obj.config
        self.context = cfg.max_position_embeddings
        extra = {} if max_reasoning_tokens is None else {"max_reasoning_tokens": max_reasoning_tokens}
        try:
            self.params = SamplingParams(temperature=temperature, top_p=top_p, seed=seed,
                                         max_tokens=min(max_tokens or self.context, self.context), **extra)
        except SamplingError as e:
            raise ChatError(f"sampling settings: {e}") from None
        # one conversation at a time: a cache for one sequence of the whole context
        per_token = CacheLayout.from_config(cfg).bytes_per_token(next(self.model_obj.parameters()).dtype)
        block = EngineConfig.block_size
        self.engine = Engine(self.model_obj, self.tokenizer,
                             EngineConfig(max_num_seqs=1, block_size=block,
                                          kv_cache_bytes=per_token * (self.context + 2 * block)))
        self.name = os.path.basename(os.path.normpath(model))
        self.where = f"local engine on {self.engine.device}"

    def stream(self, messages: list[dict]) -> Iterator[tuple[str, str]]:
        from .engine import CacheError, EngineError, SamplingError
        from .reasoning import ReasoningStreamParser
        from .tokenizer import TokenizerError

        parser = ReasoningStreamParser(started_in_reasoning=True)   # the chat prompt opened <think>
        deltas = self.engine.stream([messages], self.params)
        finish, budget_hit = None, False
        try:
            for d in deltas:
                for piece in parser.feed(d.text):
                    yield piece.kind, piece.text
                if d.finish_reason is not None:
                    finish, budget_hit = d.finish_reason, d.reasoning_budget_hit
            for piece in parser.finish():
                yield piece.kind, piece.text
        except EngineError as e:
            hint = " (/reset starts a new conversation)" if "context" in str(e) else ""
            raise ChatError(f"{e}{hint}") from None
        except (SamplingError, CacheError, TokenizerError) as e:
            raise ChatError(str(e)) from None
        finally:
            deltas.close()       # early exit: cancels the request and frees its cache blocks
        if budget_hit:
            yield BUDGET, ""
        yield FINISH, finish or ""


class EndpointBackend:
    """An OpenAI-compatible server through the official client; closing the generator early
    closes the HTTP stream, which is how a server learns to cancel the generation."""

    interrupt_blocking_reads = True    # SIGINT raises KeyboardInterrupt, which breaks a blocked HTTP read

    def __init__(self, endpoint: str, *, api_key: str | None, model: str | None, temperature: float,
                 top_p: float, max_tokens: int | None, max_reasoning_tokens: int | None, seed: int | None):
        try:
            import openai
        except ImportError:
            raise ChatError("--endpoint needs the 'openai' package: pip install openai") from None
        self.openai = openai
        self.url = base_url(endpoint)
        self.client = openai.OpenAI(base_url=self.url, api_key=api_key or os.environ.get("OPENAI_API_KEY") or "EMPTY",
                                    max_retries=0, timeout=openai.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S))
        self.request = {"temperature": temperature, "top_p": top_p}
        if max_tokens is not None:
            self.request["max_tokens"] = max_tokens
        if seed is not None:
            self.request["seed"] = seed
        if max_reasoning_tokens is not None:   # r1lab serve's thinking budget (a request extra)
            self.request["extra_body"] = {"max_reasoning_tokens": max_reasoning_tokens}
        self.name = self._pick_model(model)
        self.where = self.url

    def _pick_model(self, model: str | None) -> str:
        """Checks the server answers (and takes the key) before the first prompt."""
        try:
            served = [m.id for m in self._call(self.client.models.list).data]
        except ChatError:
            if model is None:
                raise
            served = []   # a server without /v1/models: trust --model; the first message will tell
        if model is None:
            if not served:
                raise ChatError(f"{self.url} lists no models; pass --model NAME")
            return served[0]
        if served and model not in served:
            raise ChatError(f"{self.url} does not serve model {model!r} (it serves: {', '.join(served)})")
        return model

    def _call(self, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except self.openai.OpenAIError as e:
            raise self._error(e) from None

    def _error(self, e: Exception) -> ChatError:
        o = self.openai
        if isinstance(e, o.APITimeoutError):
            return ChatError(f"{self.url} did not answer in time ({e})")
        if isinstance(e, o.APIConnectionError):
            cause = e.__cause__ or e
            return ChatError(f"cannot reach {self.url}: {type(cause).__name__}: {cause} "
                             f"(is the server running? e.g. r1lab serve MODEL --port 8000)")
        if isinstance(e, o.AuthenticationError):
            return ChatError(f"{self.url} rejected the API key (401: {_api_message(e)}); pass --api-key KEY")
        if isinstance(e, o.APIStatusError):
            retry = e.response.headers.get("retry-after") if e.status_code == 429 else None
            after = f"; retry after {retry} s" if retry else ""
            return ChatError(f"{self.url} answered HTTP {e.status_code}: {_api_message(e)}{after}")
        if isinstance(e, o.APIError):   # an error event after the stream started
            return ChatError(f"the server stopped the answer: {_api_message(e)}")
        return ChatError(f"{type(e).__name__}: {e}")

    def stream(self, messages: list[dict]) -> Iterator[tuple[str, str]]:
        stream = self._call(self.client.chat.completions.create, model=self.name, messages=messages, stream=True,
                            **self.request)
        finish, budget_hit = None, False
        try:
            for chunk in stream:
                for choice in chunk.choices:
                    if choice.index != 0:
                        continue
                    delta = choice.delta
                    thinking = getattr(delta, "reasoning_content", None)
                    if thinking is None:   # vLLM's newer name; servers that send both send the same text
                        thinking = getattr(delta, "reasoning", None)
                    if thinking:
                        yield REASONING, thinking
                    if delta.content:
                        yield ANSWER, delta.content
                    if choice.finish_reason:
                        finish = choice.finish_reason
                        budget_hit = bool(getattr(choice, "reasoning_budget_hit", False))
        except self.openai.OpenAIError as e:
            raise self._error(e) from None
        finally:
            stream.close()
        if budget_hit:
            yield BUDGET, ""
        yield FINISH, finish or ""


def base_url(endpoint: str) -> str:
    """``http://host:8000`` → ``http://host:8000/v1`` (a URL with a path is taken as given)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ChatError(f"--endpoint must be an http(s) URL such as http://127.0.0.1:8000/v1, got {endpoint!r}")
    url = endpoint.rstrip("/")
    return url + "/v1" if parts.path in ("", "/") else url


def _api_message(e) -> str:
    body = getattr(e, "body", None)
    if isinstance(body, dict):
        err = body.get("error", body)
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
    return getattr(e, "message", None) or str(e)


# ------------------------------------------------------------------------- the view
class View:
    """Writes one answer as it streams: the thinking dimmed (or labelled, or hidden), then the answer."""

    def __init__(self, out: TextIO, color: bool, show_thinking: bool):
        self.out, self.color, self.show = out, color, show_thinking
        self.section: str | None = None
        self.started = 0.0

    def _write(self, text: str) -> None:
        self.out.write(text)
        self.out.flush()

    def _text(self, text: str) -> None:
        self._write(text.translate(SHOW_CONTROLS))

    def piece(self, kind: str, text: str) -> None:
        if kind == REASONING:
            if self.section is None:
                self.section, self.started = REASONING, time.monotonic()
                if self.show:
                    self._write(DIM if self.color else "thinking: ")
                elif self.color:
                    self._write(f"{DIM}thinking…{RESET}")
            if self.show and self.section == REASONING:
                self._text(text)
        elif kind == ANSWER:
            if self.section == REASONING:
                self._close_thinking(answer_follows=True)
                if self.show and not self.color:
                    self._write("answer: ")
            self.section = ANSWER
            self._text(text)

    def _close_thinking(self, answer_follows: bool) -> None:
        gap = "\n" if answer_follows else ""
        took = f"(thought for {time.monotonic() - self.started:.1f} s)"
        if self.show:
            self._write(f"{RESET}\n{gap}" if self.color else "\n")
        elif self.color:
            self._write(f"{CLEAR_LINE}{DIM}{took}{RESET}\n{gap}")
        else:
            self._write(took + "\n")

    def end(self, note: str | None = None) -> None:
        """Closes whatever is open (the dim style first) and adds a note such as [stopped]."""
        if self.section == REASONING:
            self._close_thinking(answer_follows=False)
        elif self.section == ANSWER:
            self._write("\n")
        self.section = "done"
        if note:
            self.note(note)

    def note(self, text: str) -> None:
        self._write(f"{DIM}{text}{RESET}\n" if self.color else text + "\n")


# ------------------------------------------------------------------------- the loop
class Chat:
    """The conversation: ``messages`` holds the system prompt, user turns and answers only."""

    def __init__(self, backend, *, system: str | None = None, show_thinking: bool = True,
                 out: TextIO | None = None, color: bool | None = None):
        self.backend, self.system, self.show_thinking = backend, system, show_thinking
        self.out = out or sys.stdout
        self.color = use_color(self.out) if color is None else color
        self.messages: list[dict] = []
        self.interrupts = Interrupts()
        self.reset()

    def reset(self) -> None:
        self.messages = [{"role": "system", "content": self.system}] if self.system else []

    def say(self, text: str) -> Turn | None:
        """One user turn: stream the reply; keep (user, answer) in the history unless it failed.
        A turn stopped before any answer text is dropped; a partial answer is kept as said."""
        user = {"role": "user", "content": text}
        view = View(self.out, self.color, self.show_thinking)
        turn, before = Turn(), self.interrupts.count
        pieces = self.backend.stream(self.messages + [user])
        try:
            raising = self.interrupts.raising if self.backend.interrupt_blocking_reads else contextlib.nullcontext
            with raising():
                for kind, piece in pieces:
                    if kind == FINISH:
                        turn.finish_reason = piece or None
                    elif kind == BUDGET:
                        turn.budget_hit = True
                    else:
                        view.piece(kind, piece)
                        if kind == REASONING:
                            turn.reasoning += piece
                        else:
                            turn.answer += piece
                    if self.interrupts.count > before:
                        turn.stopped = True
                        break
        except KeyboardInterrupt:
            turn.stopped = True
        except ChatError as e:
            view.end()
            view.note(f"error: {e}")
            return None
        finally:
            pieces.close()       # cancels the request / closes the HTTP stream if still open
        view.end(self._note(turn))
        if turn.stopped and not turn.answer:
            return turn
        self.messages += [user, {"role": "assistant", "content": turn.answer}]
        return turn

    def _note(self, turn: Turn) -> str | None:
        if turn.stopped:
            return "[stopped]"
        notes = []
        if turn.budget_hit:
            notes.append("[thinking budget reached; the answer followed]")
        if turn.finish_reason == "length":
            notes.append("[cut at the token limit before an answer; raise --max-tokens or cap the thinking with "
                         "--max-reasoning-tokens]" if not turn.answer else "[cut at the token limit]")
        elif not turn.answer:
            notes.append("[no answer: the model ended while still thinking]")
        return " ".join(notes) or None

    def command(self, line: str) -> bool:
        """Runs a /command; False means leave."""
        word = line.split()[0].lower()
        if word in ("/exit", "/quit"):
            return False
        if word == "/think":
            self.show_thinking = not self.show_thinking
            self._info("thinking shown" if self.show_thinking else "thinking hidden (/think shows it again)")
        elif word == "/reset":
            self.reset()
            self._info("history cleared")
        elif word == "/help":
            self._info("\n".join(f"{c:<8} {h}" for c, h in COMMANDS.items()) +
                       "\nCtrl-C stops an answer; start a message with // to send a leading /")
        else:
            self._info(f"unknown command {word}; /help lists them")
        return True

    def _info(self, text: str) -> None:
        self.out.write(f"{DIM}{text}{RESET}\n" if self.color else text + "\n")
        self.out.flush()

    def run(self, interactive: bool) -> int:
        """Reads lines until /exit, Ctrl-D, or two Ctrl-C in a row at the prompt."""
        if interactive:
            with contextlib.suppress(ImportError):
                import readline  # noqa: F401  (line editing and history for input())
            shown = "shown" if self.show_thinking else "hidden"
            self._info(f"r1lab chat · {self.backend.name} ({self.backend.where}) · thinking {shown}\n"
                       f"/think toggles the thinking, /reset clears the history, /exit leaves, "
                       f"Ctrl-C stops an answer; /help")
        with self.interrupts.installed():
            return self._loop(interactive)

    def _loop(self, interactive: bool) -> int:
        streak, seen = 0, self.interrupts.count    # Ctrl-C at the prompt in a row; SIGINTs accounted for
        while True:
            try:   # a Ctrl-C while something printed (after ``seen``) counts as one at the prompt
                with self.interrupts.raising(since=seen):
                    line = input(PROMPT) if interactive else sys.stdin.readline()
                if not interactive and not line:
                    raise EOFError
            except EOFError:
                if interactive:
                    self.out.write("\n")
                return 0
            except KeyboardInterrupt:
                streak, seen = streak + 1, self.interrupts.count
                if self._prompt_interrupt(streak, interactive):
                    return 0
                continue
            streak = 0
            line = line.strip()
            if line.startswith("/") and not line.startswith("//"):
                if not self.command(line):
                    return 0
            elif line:
                self.say(line[1:] if line.startswith("//") else line)
                seen = self.interrupts.count   # the Ctrl-C that stopped the answer is spent

    def _prompt_interrupt(self, streak: int, interactive: bool) -> bool:
        """Ctrl-C at the prompt: the first explains, the second leaves (True)."""
        self.out.write("\n")
        if streak >= 2 or not interactive:
            return True
        self._info("(Ctrl-C again, Ctrl-D or /exit leaves)")
        return False


class Interrupts:
    """SIGINT for the whole chat: always counted, raised as KeyboardInterrupt only inside
    ``raising()`` (blocked in input() or in an HTTP read). Elsewhere — in the middle of an
    engine step, or while a stopped answer is tidied up — a Ctrl-C cannot tear anything half
    way; the loops look at ``count`` instead.

    Python runs a signal handler between bytecodes, and readline's select() is only woken by a
    signal that arrives while it waits: a Ctrl-C landing just before it (while the prompt is
    being drawn) would wait for the next key. So every SIGINT is also written to a wakeup pipe,
    and a thread pokes the main thread with a harmless NUDGE signal until the handler has run."""

    NUDGE = signal.SIGUSR1
    NUDGE_EVERY_S, NUDGES = 0.05, 20

    def __init__(self):
        self.count = 0
        self._raise = False

    def _handler(self, signum, frame):
        self.count += 1
        if self._raise:
            self._raise = False      # once: a second Ctrl-C during the clean-up is only counted
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def raising(self, since: int | None = None):
        """Ctrl-C raises inside; with ``since``, one counted after it (just before entering) too."""
        self._raise = True
        try:
            if since is not None and self.count > since:
                self._raise = False
                raise KeyboardInterrupt
            yield
        finally:
            self._raise = False

    @contextlib.contextmanager
    def installed(self):
        r, w = os.pipe()
        os.set_blocking(w, False)
        old = signal.signal(signal.SIGINT, self._handler), signal.signal(self.NUDGE, lambda signum, frame: None)
        old_fd = signal.set_wakeup_fd(w, warn_on_full_buffer=False)
        nudger = threading.Thread(target=self._nudge, args=(r, threading.main_thread().ident), daemon=True)
        nudger.start()
        try:
            yield
        finally:
            signal.set_wakeup_fd(old_fd)
            signal.signal(signal.SIGINT, old[0])
            signal.signal(self.NUDGE, old[1])
            os.close(w)              # the thread reads end-of-file and leaves
            nudger.join(timeout=2)
            os.close(r)

    def _nudge(self, r: int, main: int) -> None:
        while data := os.read(r, 64):
            if signal.SIGINT not in data:
                continue
            before = self.count
            for _ in range(self.NUDGES):
                time.sleep(self.NUDGE_EVERY_S)
                if self.count > before or not self._raise:
                    break
                signal.pthread_kill(main, self.NUDGE)


def use_color(out: TextIO) -> bool:
    """Dim text only on a terminal, and not when NO_COLOR is set or TERM=dumb."""
    try:
        tty = out.isatty()
    except (AttributeError, ValueError):
        return False
    return tty and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"


def run_chat(model: str | None = None, *, endpoint: str | None = None, api_key: str | None = None,
             served_model: str | None = None, temperature: float = DEFAULT_TEMPERATURE,
             top_p: float = DEFAULT_TOP_P, max_tokens: int | None = None,
             max_reasoning_tokens: int | None = None, hide_thinking: bool = False, system: str | None = None,
             seed: int | None = None, device: str = "auto", dtype: str | None = None) -> int:
    """The ``r1lab chat`` verb: build the backend, then chat on stdin/stdout."""
    if (model is None) == (endpoint is None):
        raise ChatError("give a MODEL (checkpoint directory or shipped name) or --endpoint URL, not both")
    if endpoint is None and (served_model is not None or api_key is not None):
        raise ChatError("--model and --api-key apply to --endpoint (a local MODEL is the positional argument)")
    if max_tokens is not None and max_tokens < 1:
        raise ChatError(f"--max-tokens must be >= 1, got {max_tokens}")
    if max_reasoning_tokens is not None and max_reasoning_tokens < 0:
        raise ChatError(f"--max-reasoning-tokens must be >= 0, got {max_reasoning_tokens}")
    if temperature < 0 or not 0 < top_p <= 1:
        raise ChatError(f"--temperature must be >= 0 and --top-p in (0, 1], got {temperature} and {top_p}")
    common = dict(temperature=temperature, top_p=top_p, max_tokens=max_tokens,
                  max_reasoning_tokens=max_reasoning_tokens, seed=seed)
    if endpoint is not None:
        backend = EndpointBackend(endpoint, api_key=api_key, model=served_model, **common)
    else:
        backend = LocalBackend(model, device=device, dtype=dtype, **common)
    interactive = sys.stdin.isatty()
    return Chat(backend, system=system, show_thinking=not hide_thinking).run(interactive)
