"""`r1lab chat` through a pseudo-terminal (issue 14 item 3): streaming, the thinking dimmed and
hideable, /think, /reset, /exit, Ctrl-C stopping an answer without leaving, the history
sending back only answers, one-line errors; in-process engine and --endpoint (a fake slow SSE
server, and a live `r1lab serve`)."""

from __future__ import annotations

import io
import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from r1lab.chat import DIM, RESET
from r1lab.cli import main

QUESTION = "Compute 3 + 4 + 5."
SAMPLING = dict(temperature=0.6, top_p=0.95, seed=0, max_tokens=24)   # = the chat flags used below
CHAT = [sys.executable, "-m", "r1lab.cli", "chat"]
ROOT = Path(__file__).resolve().parents[1]


class Terminal:
    """A child process on a pseudo-terminal: ``expect`` reads until a pattern, ``send`` types."""

    def __init__(self, argv: list[str], env: dict | None = None):
        env = {**os.environ, "TERM": "xterm", "OMP_NUM_THREADS": "1", **(env or {})}   # a tiny model: no thread spin
        env.pop("NO_COLOR", None)
        self.pid, self.fd = pty.fork()
        if self.pid == 0:   # the child: its stdin/stdout/stderr are the terminal
            try:
                os.chdir(ROOT)
                os.execvpe(argv[0], argv, env)
            finally:
                os._exit(127)
        self.raw = ""       # everything read, "\r\n" folded to "\n"
        self.pos = 0        # where the next expect starts looking
        self.status: int | None = None

    def _read(self, timeout: float) -> bool:
        ready, _, _ = select.select([self.fd], [], [], timeout)
        if not ready:
            return False
        try:
            data = os.read(self.fd, 65536)
        except OSError:     # EIO: the child closed the terminal
            data = b""
        if not data:
            raise EOFError(f"the chat closed its terminal; output so far:\n{self.raw[-2000:]}")
        self.raw += data.decode("utf-8", "replace").replace("\r\n", "\n")
        return True

    def expect(self, pattern: str, timeout: float = 120.0) -> re.Match:
        """Waits for ``pattern`` (a regex) after the last match; returns the match."""
        rx = re.compile(pattern, re.S)
        end = time.monotonic() + timeout
        while True:
            m = rx.search(self.raw, self.pos)
            if m:
                self.pos = m.end()
                return m
            left = end - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out waiting for {pattern!r}; output since the last match:\n"
                                     f"{self.raw[self.pos:]!r}")
            self._read(min(left, 1.0))

    def send(self, text: str) -> None:
        os.write(self.fd, text.encode())

    def since(self, start: int) -> str:
        return self.raw[start:self.pos]

    def wait(self, timeout: float = 60.0) -> int:
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with_suppressed_eof(self._read, 0.2)
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.status = os.waitstatus_to_exitcode(status)
                return self.status
        raise AssertionError(f"the chat did not exit; output:\n{self.raw[-2000:]!r}")

    def close(self) -> None:
        if self.status is None:
            with_suppressed_eof(lambda: None)
            try:
                os.kill(self.pid, signal.SIGKILL)
                os.waitpid(self.pid, 0)
            except (ProcessLookupError, ChildProcessError):
                pass
        os.close(self.fd)


def with_suppressed_eof(fn, *args):
    try:
        return fn(*args)
    except EOFError:
        return None


@pytest.fixture
def terminals():
    opened: list[Terminal] = []

    def start(*args: str, env: dict | None = None) -> Terminal:
        t = Terminal([*CHAT, *args], env)
        opened.append(t)
        return t

    yield start
    for t in opened:
        t.close()


# ------------------------------------------------------------------------- reference outputs
@pytest.fixture(scope="module")
def offline():
    """What the offline engine says for QUESTION with the chat's sampling: fresh, and as the
    second turn after the first answer (the history the chat must send); a third turn must
    differ from the first too, so that a /reset that forgets nothing shows."""
    from r1lab.engine import Engine, EngineConfig, SamplingParams
    from r1lab.generate import load_model_and_tokenizer
    from r1lab.reasoning import split_reasoning

    model, tok = load_model_and_tokenizer("r1zero-base", device="cpu")
    engine = Engine(model, tok, EngineConfig(kv_cache_bytes=16 * 2**20))
    params = SamplingParams(**SAMPLING)
    user = {"role": "user", "content": QUESTION}
    first = split_reasoning(engine.generate([[user]], params)[0].outputs[0].text)
    history = [user, {"role": "assistant", "content": first[1]}, user]
    second = split_reasoning(engine.generate([history], params)[0].outputs[0].text)
    history += [{"role": "assistant", "content": second[1]}, user]
    third = split_reasoning(engine.generate([history], params)[0].outputs[0].text)
    assert first[0] and first[1], f"the test needs a reply with thinking and an answer, got {first}"
    assert first not in (second, third), "the test needs later turns to differ from the first (to see /reset work)"
    return {"first": first, "second": second}


@pytest.fixture(scope="module")
def random_model(tmp_path_factory):
    """r1zero-base's architecture with random weights: it rambles to max_tokens (EOS is 1 in
    2048 per token), so an answer lasts long enough to be interrupted."""
    from r1lab.checkpoint import load_config, resolve_checkpoint, save_model
    from r1lab.model import build_model
    from r1lab.tokenizer import SHIPPED_TOKENIZER_DIR

    out = tmp_path_factory.mktemp("random") / "model"
    save_model(build_model(load_config(resolve_checkpoint("r1zero-base")), seed=0), out,
               tokenizer=SHIPPED_TOKENIZER_DIR)
    return str(out)


def _dimmed(text: str) -> list[str]:
    return re.findall(re.escape(DIM) + r"(.*?)" + re.escape(RESET), text, re.S)


# ------------------------------------------------------------------------- local model
def test_local_chat_streams_dims_thinking_toggles_and_resets(terminals, offline):
    (think1, answer1), (think2, answer2) = offline["first"], offline["second"]
    t = terminals("r1zero-base", "--max-tokens", "24", "--seed", "0")
    t.expect(r"r1lab chat · r1zero-base \(local engine on cpu\)")
    t.expect(re.escape(">>> "))

    start = t.pos
    t.send(QUESTION + "\r")
    t.expect(re.escape(answer1) + r"\n")
    t.expect(re.escape(">>> "))
    out = t.since(start)
    assert _dimmed(out)[0] == think1, out          # the thinking, between the dim and reset codes
    assert out.index(think1) < out.rindex(answer1)
    assert answer1 not in "".join(_dimmed(out))    # the answer is not dimmed

    start = t.pos                                  # second turn: the history holds the first answer
    t.send(QUESTION + "\r")
    t.expect(re.escape(">>> "))
    out = t.since(start)
    assert (_dimmed(out)[:1] == [think2]) if think2 else not _dimmed(out), out
    assert answer2 in out

    t.send("/reset\r")
    t.expect("history cleared")
    t.expect(re.escape(">>> "))
    start = t.pos                                  # fresh again: the first reply
    t.send(QUESTION + "\r")
    t.expect(re.escape(answer1) + r"\n")
    t.expect(re.escape(">>> "))
    assert _dimmed(t.since(start))[0] == think1

    t.send("/think\r")
    t.expect("thinking hidden")
    t.send("/reset\r")
    t.expect("history cleared")
    t.expect(re.escape(">>> "))
    start = t.pos                                  # fresh again: the first reply, thinking hidden
    t.send(QUESTION + "\r")
    t.expect(re.escape(answer1) + r"\n")
    t.expect(re.escape(">>> "))
    out = t.since(start)
    assert think1 not in out, out
    assert "(thought for" in out

    t.send("/think\r")
    t.expect("thinking shown")
    t.expect(re.escape(">>> "))                    # (a Ctrl-C at the visible prompt, as people press it)
    t.send("\x03")                                 # Ctrl-C at the prompt: a hint, still here
    t.expect("Ctrl-C again")
    t.expect(re.escape(">>> "))
    t.send("/exit\r")
    assert t.wait() == 0


def test_ctrl_c_stops_a_local_answer_and_keeps_the_chat(terminals, random_model):
    t = terminals(random_model, "--max-tokens", "1000", "--seed", "0")
    t.expect(re.escape(">>> "))
    t.send("tell me a long story\r")
    t.expect(re.escape(DIM) + r"\S")               # the thinking is streaming
    t.send("\x03")
    t.expect(r"\[stopped\]")
    t.expect(re.escape(">>> "))                    # back at the prompt, the process alive
    t.send("/help\r")
    t.expect("/reset")
    t.expect(re.escape(">>> "))
    t.send("\x03")
    t.expect("Ctrl-C again")
    t.expect(re.escape(">>> "))
    t.send("\x03")                                 # twice at the prompt leaves
    assert t.wait() == 0


def test_plain_output_when_not_a_terminal(offline, monkeypatch, capsys):
    think, answer = offline["first"]
    for hide, expected in ((False, f"thinking: {think}\nanswer: {answer}\n"), (True, f")\n{answer}\n")):
        monkeypatch.setattr(sys, "stdin", io.StringIO(QUESTION + "\n"))
        argv = ["chat", "r1zero-base", "--max-tokens", "24", "--seed", "0", "--device", "cpu"]
        assert main(argv + ["--hide-thinking"] * hide) == 0
        out = capsys.readouterr().out
        assert "\x1b[" not in out and expected in out, out
        assert (think in out) != hide, out


@pytest.mark.parametrize("args, message", [
    (["no/such/model"], "model path no/such/model does not exist"),
    (["--endpoint", "http://127.0.0.1:{dead}/v1"], "cannot reach http://127.0.0.1:{dead}/v1"),
    (["--endpoint", "ftp://x"], "--endpoint must be an http(s) URL"),
    ([], "give a MODEL"),
    (["r1zero-base", "--model", "x"], "--model and --api-key apply to --endpoint"),
])
def test_errors_are_one_line(args, message, capsys):
    dead = _free_port()
    assert main(["chat", *[a.format(dead=dead) for a in args]]) == 2
    err = capsys.readouterr().err
    assert err.startswith("r1lab: error: ") and err.count("\n") == 1, err
    assert message.format(dead=dead) in err


# ------------------------------------------------------------------------- endpoint: a fake slow server
class FakeServer(ThreadingHTTPServer):
    """An OpenAI-style server that streams slowly: 'forever' in the last user message streams
    thinking until the client goes; anything else thinks a little, then answers."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), FakeHandler)
        self.bodies: list[dict] = []
        self.client_left = threading.Event()
        self.url = f"http://127.0.0.1:{self.server_address[1]}"


class FakeHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def _json(self, obj, status=200):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        if self.path == "/v1/models":
            return self._json({"object": "list", "data": [{"id": "fake-r1", "object": "model", "created": 0,
                                                           "owned_by": "test"}]})
        self._json({"error": {"message": "not found", "type": "not_found", "param": None, "code": None}}, 404)

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.bodies.append(body)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        self.end_headers()
        forever = "forever" in body["messages"][-1]["content"]

        def chunk(delta, finish=None):
            obj = {"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "fake-r1",
                   "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            self.wfile.write(f"data: {json.dumps(obj)}\n\n".encode())
            self.wfile.flush()

        try:
            chunk({"role": "assistant", "content": ""})
            for i in range(10**6 if forever else 3):
                chunk({"reasoning_content": f"step {i}. ", "reasoning": f"step {i}. "})
                time.sleep(0.05)
            chunk({"content": "The answer "})
            chunk({"content": "is 12."}, finish="stop")
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.server.client_left.set()


@pytest.fixture
def fake_server():
    server = FakeServer()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_endpoint_ctrl_c_closes_the_stream_and_history_holds_only_answers(terminals, fake_server):
    t = terminals("--endpoint", fake_server.url, "--max-tokens", "50")
    t.expect(r"fake-r1 \(" + re.escape(fake_server.url + "/v1") + r"\)")
    t.expect(re.escape(">>> "))
    t.send("what is 5 + 7?\r")
    t.expect(re.escape(DIM) + r"step 0\. step 1\. step 2\. " + re.escape(RESET) + r"\n\nThe answer is 12\.\n")
    t.expect(re.escape(">>> "))

    t.send("think forever\r")
    t.expect(r"step 3\. ")
    t.send("\x03")
    t.expect(r"\[stopped\]")
    t.expect(re.escape(">>> "))
    assert fake_server.client_left.wait(10), "the chat did not close the HTTP stream on Ctrl-C"

    t.send("and now?\r")
    t.expect(r"The answer is 12\.\n")
    t.expect(re.escape(">>> "))
    t.send("\x04")                                 # Ctrl-D leaves
    assert t.wait() == 0

    first, stopped, last = fake_server.bodies
    assert first["model"] == "fake-r1" and first["stream"] is True and first["max_tokens"] == 50
    assert first["messages"] == [{"role": "user", "content": "what is 5 + 7?"}]
    # the stopped turn (no answer yet) is dropped; the answer goes back without its thinking
    assert last["messages"] == [{"role": "user", "content": "what is 5 + 7?"},
                                {"role": "assistant", "content": "The answer is 12."},
                                {"role": "user", "content": "and now?"}]


# ------------------------------------------------------------------------- endpoint: a live r1lab serve
API_KEY = "chat-test-key"


@pytest.fixture(scope="module")
def live_server():
    if subprocess.run([sys.executable, "-m", "r1lab.cli", "serve", "--help"], capture_output=True).returncode:
        pytest.skip("r1lab serve is not available in this tree")
    proc = subprocess.Popen([sys.executable, "-m", "r1lab.cli", "serve", "r1zero-base", "--port", "0",
                             "--api-key", API_KEY], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"ready on (http://\S+)", line)
            if m:
                break
        else:
            raise AssertionError("r1lab serve exited before it was ready:\n" + "".join(lines))
        threading.Thread(target=proc.stdout.read, daemon=True).start()   # keep its pipe drained
        yield m.group(1)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_live_server_streams_the_thinking_dimmed(terminals, live_server, offline):
    think, answer = offline["first"]
    t = terminals("--endpoint", live_server, "--api-key", API_KEY, "--max-tokens", "24", "--seed", "0")
    t.expect(r"r1zero-base \(" + re.escape(live_server + "/v1") + r"\)")
    t.expect(re.escape(">>> "))
    start = t.pos
    t.send(QUESTION + "\r")
    t.expect(re.escape(answer) + r"\n")
    t.expect(re.escape(">>> "))
    out = t.since(start)
    assert _dimmed(out) and _dimmed(out)[0] == think, out   # = the offline engine's split, same seed
    t.send(QUESTION + "\r")                          # a second turn: the server takes our history
    t.expect(re.escape(">>> "))
    assert "error" not in t.raw[start:], t.raw[start:]
    t.send("/exit\r")
    assert t.wait() == 0


def test_live_server_wrong_key_is_one_line(live_server, capsys):
    assert main(["chat", "--endpoint", live_server, "--api-key", "wrong"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("r1lab: error: ") and err.count("\n") == 1, err
    assert "rejected the API key" in err


# ------------------------------------------------------------------------- the history, in-process
def test_history_sends_back_only_answers_and_reset_keeps_the_system_prompt():
    from r1lab.chat import ANSWER, FINISH, REASONING, Chat

    class Backend:
        interrupt_blocking_reads, name, where = False, "fake", "here"
        seen: list = []

        def stream(self, messages):
            self.seen.append([dict(m) for m in messages])
            yield REASONING, "I think "
            yield REASONING, "hard."
            yield ANSWER, f"answer {len(self.seen)}"
            yield FINISH, "stop"

    out = io.StringIO()
    chat = Chat(Backend(), system="be brief", out=out, color=False)
    chat.say("one")
    chat.say("two")
    sent = Backend.seen[-1]
    assert sent == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "one"},
                    {"role": "assistant", "content": "answer 1"}, {"role": "user", "content": "two"}]
    assert "thinking: I think hard.\nanswer: answer 1\n" in out.getvalue()
    chat.command("/reset")
    chat.say("three")
    assert Backend.seen[-1] == [{"role": "system", "content": "be brief"}, {"role": "user", "content": "three"}]


def test_model_text_cannot_drive_the_terminal():
    from r1lab.chat import ANSWER, REASONING, View

    out = io.StringIO()
    view = View(out, color=True, show_thinking=True)
    view.piece(REASONING, "a\x1b]0;pwned\x07b")
    view.piece(ANSWER, "c\x1b[31md\n\te\x9b")
    view.end()
    shown = out.getvalue()
    assert "a^[]0;pwned^Gb" in shown and "c^[[31md\n\te\ufffd" in shown
    assert shown.replace(DIM, "").replace(RESET, "").count("\x1b") == 0


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]

