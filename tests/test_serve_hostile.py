"""Hostile input against a live ``r1lab serve`` (issue 14, acceptance: "a catalogue of >= 40 malformed or
hostile requests gets 4xx, never 5xx, and the server keeps serving; schemathesis against /openapi.json
finds no 5xx").

One server subprocess for the module (the shipped ``r1zero-base``, ``--port 0``). Every request here is
written as raw bytes on a socket, so the catalogue can send what no well-behaved client library would:
broken JSON, lying Content-Length headers, invalid UTF-8, bodies that never finish. After every case the
server must still answer ``/health`` and a small valid chat request, and its log must hold no traceback
(an exception that never reached a client, e.g. on a connection the client dropped, is a bug too).
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

MODEL = "r1zero-base"
KEY = "test-key"
BODY_LIMIT = 2**20            # --max-body-bytes 1MiB
MAX_MODEL_LEN = 256           # small context: cheap generations, easy "prompt too long" cases
MAX_NUM_SEQS = 4
CHAT, COMPLETIONS = "/v1/chat/completions", "/v1/completions"
READY_TIMEOUT_S = 180
IO_TIMEOUT_S = 60             # one request; generous for a loaded 2-core machine, never asserted as a speed
MAX_ERROR_BODY = 64 * 1024    # an error never echoes a huge input back (amplification, log spam)


# ------------------------------------------------------------------------------------------- the server
@dataclass
class Server:
    proc: subprocess.Popen
    port: int
    log: Path
    seen: int = 0             # how much of the log the traceback check has read

    def new_log(self) -> str:
        text = self.log.read_text(errors="replace")
        new, self.seen = text[self.seen:], len(text)
        return new


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    d = tmp_path_factory.mktemp("serve_hostile")
    log = d / "server.log"
    cmd = [sys.executable, "-m", "r1lab.cli", "serve", MODEL, "--host", "127.0.0.1", "--port", "0",
           "--api-key", KEY, "--max-body-bytes", "1MiB", "--max-model-len", str(MAX_MODEL_LEN),
           "--max-num-seqs", str(MAX_NUM_SEQS)]
    # One torch thread: this module tests robustness, not speed, and on a busy 2-core machine two
    # intra-op threads contend (8 tokens took 2.5 s instead of 0.18 s).
    env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS="1")
    env.pop("R1LAB_API_KEYS", None)
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=d)
    port, deadline = None, time.monotonic() + READY_TIMEOUT_S
    while port is None:
        m = re.search(r"ready on http://[\d.]+:(\d+)", log.read_text(errors="replace"))
        if m:
            port = int(m.group(1))
        elif proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"r1lab serve did not start (rc={proc.poll()}):\n{log.read_text(errors='replace')[-4000:]}")
        else:
            time.sleep(0.1)
    srv = Server(proc, port, log)
    srv.new_log()
    yield srv
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


# ----------------------------------------------------------------------------------- a raw HTTP client
@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes
    raw: bytes = b""

    def json(self):
        return json.loads(self.body)

    @property
    def is_json(self) -> bool:
        return self.headers.get("content-type", "").startswith("application/json")


def _dechunk(body: bytes) -> tuple[bytes, bytes]:
    """(the de-chunked body, what follows it)."""
    out, i = bytearray(), 0
    while i < len(body):
        j = body.find(b"\r\n", i)
        if j < 0:
            break
        size = int(body[i:j].split(b";")[0], 16)
        if size == 0:
            end = body.find(b"\r\n\r\n", j)
            return bytes(out), body[end + 4:] if end >= 0 else b""
        out += body[j + 2:j + 2 + size]
        i = j + 2 + size + 2
    return bytes(out), b""


def parse_responses(raw: bytes) -> list[Response]:
    """Every HTTP response in ``raw`` (several when requests were pipelined)."""
    out = []
    while raw:
        head, sep, rest = raw.partition(b"\r\n\r\n")
        if not sep:
            break
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        if headers.get("transfer-encoding", "").lower() == "chunked":
            body, raw = _dechunk(rest)
        elif "content-length" in headers:
            n = int(headers["content-length"])
            body, raw = rest[:n], rest[n:]
        else:
            body, raw = rest, b""
        out.append(Response(status, headers, body, head + sep + body))
    return out


def parse_response(raw: bytes) -> Response | None:
    """The first response in ``raw`` (None: none, e.g. the connection was dropped)."""
    rs = parse_responses(raw)
    if rs:
        rs[0].raw = raw
    return rs[0] if rs else None


def exchange(port: int, data: bytes, timeout: float = IO_TIMEOUT_S) -> Response | None:
    """Send ``data`` (from a thread, so a server that answers early, e.g. 413 before reading a huge body,
    is read while we are still sending) and read until the server closes. None: no HTTP response."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    def send():
        try:
            for i in range(0, len(data), 65536):
                sock.sendall(data[i:i + 65536])
        except OSError:
            pass  # the server answered and closed before taking the whole body: fine
    t = threading.Thread(target=send, daemon=True)
    t.start()
    chunks = []
    try:
        while True:
            b = sock.recv(65536)
            if not b:
                break
            chunks.append(b)
    except ConnectionResetError:
        pass
    finally:
        t.join(timeout)
        sock.close()
    return parse_response(b"".join(chunks))


def request_bytes(method: str, path: str, body: bytes | None = None, *, auth: str | None = f"Bearer {KEY}",
                  content_type: str | None = "application/json", headers: list[tuple[str, str]] = (),
                  version: str = "HTTP/1.1", content_length: int | str | None = None) -> bytes:
    h = [("Host", "127.0.0.1"), ("Connection", "close")]
    if auth is not None:
        h.append(("Authorization", auth))
    if body is not None and content_type is not None:
        h.append(("Content-Type", content_type))
    if content_length is not None:
        h.append(("Content-Length", str(content_length)))
    elif body is not None:
        h.append(("Content-Length", str(len(body))))
    h += list(headers)
    head = f"{method} {path} {version}\r\n" + "".join(f"{k}: {v}\r\n" for k, v in h) + "\r\n"
    return head.encode("latin-1") + (body or b"")


def dumps(obj) -> bytes:
    return json.dumps(obj, allow_nan=True, ensure_ascii=False).encode("utf-8", "surrogatepass")


def chat_body(**over) -> dict:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    body.update(over)
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()


def alive(srv: Server, chat: bool = True) -> None:
    """The server keeps serving: /health and (``chat``) a small valid chat request both succeed."""
    r = exchange(srv.port, request_bytes("GET", "/health", auth=None))
    assert r is not None and r.status == 200, f"/health after the case: {r}"
    if not chat:
        return
    r = exchange(srv.port, request_bytes("POST", CHAT, dumps(chat_body())))
    assert r is not None and r.status == 200, f"valid chat after the case: {r and (r.status, r.body[:500])}"
    choice = r.json()["choices"][0]
    assert choice["message"]["role"] == "assistant" and choice["finish_reason"] in ("stop", "length")


def assert_no_traceback(srv: Server) -> None:
    new = srv.new_log()
    assert "Traceback" not in new and "Exception in ASGI application" not in new, \
        f"the server logged an exception:\n{new[-6000:]}"


def assert_openai_error(r: Response) -> None:
    assert r.is_json, f"error response is not JSON: {r.headers} {r.body[:300]!r}"
    err = r.json()
    assert isinstance(err, dict) and set(err) == {"error"}, err
    e = err["error"]
    assert {"message", "type", "param", "code"} <= set(e), e
    assert isinstance(e["message"], str) and e["message"], e
    assert isinstance(e["type"], str) and e["type"], e
    assert e["param"] is None or isinstance(e["param"], str), e
    assert e["code"] is None or isinstance(e["code"], (str, int)), e


# ------------------------------------------------------------------------------------------ the catalogue
@dataclass
class Case:
    id: str
    expect: set[int]
    body: object = None                       # dict/list -> JSON; bytes as given; None -> no body
    method: str = "POST"
    path: str = CHAT
    raw: bytes | None = None                  # the whole request, as given
    protocol: bool = False                    # rejected by the HTTP layer: plain-text errors are fine
    kw: dict = field(default_factory=dict)    # extra request_bytes() arguments

    def data(self) -> bytes:
        if self.raw is not None:
            return self.raw
        body = self.body if isinstance(self.body, bytes) or self.body is None else dumps(self.body)
        return request_bytes(self.method, self.path, body, **self.kw)


BAD = {400, 422}                 # bad parameter (400) or schema violation (422): both are the contract's
TOO_BIG = {413}
USER = {"role": "user", "content": "hi"}


def msgs(*m) -> dict:
    return chat_body(messages=list(m))


def raw_json(text: str) -> bytes:
    """A body written by hand (NaN literals, duplicate keys, escapes json.dumps would not produce)."""
    return text.encode("utf-8")


VALID = dumps(chat_body())
LONG_TEXT = "hello world " * 400                       # far beyond MAX_MODEL_LEN tokens
deep = 100_000

CASES = [
    # -- not JSON / not an object
    Case("invalid_json", BAD, VALID[:-7]),
    Case("json_trailing_garbage", BAD, VALID + b"xyz"),
    Case("empty_body", BAD, b""),
    Case("json_array", BAD, b"[]"),
    Case("json_number", BAD, b"42"),
    Case("json_null", BAD, b"null"),
    Case("json_string", BAD, b'"hello"'),
    Case("invalid_utf8", BAD, b'{"model": "r1zero-base", "messages": [{"role": "user", "content": "\xff\xfe\xc3"}]}'),
    Case("raw_control_char_in_string", BAD, b'{"model": "r1zero-base", "messages": [{"role": "user", "content": "a\x00b"}]}'),
    Case("content_type_text_plain", BAD | {415}, VALID, kw={"content_type": "text/plain"}),
    Case("content_type_form", BAD | {415}, b"model=r1zero-base&messages=hi",
         kw={"content_type": "application/x-www-form-urlencoded"}),
    Case("deep_nested_lists", BAD | TOO_BIG, b'{"model": "r1zero-base", "messages": ' + b"[" * deep + b"]" * deep + b"}"),
    Case("deep_nested_objects", BAD | TOO_BIG, b'{"model": "r1zero-base", "messages": [{"role": "user", "content": '
         + b'{"a": ' * deep + b"1" + b"}" * deep + b"}]}"),
    Case("duplicate_keys_last_wins", BAD, raw_json('{"model": "r1zero-base", "messages": [{"role": "user", '
                                                   '"content": "hi"}], "messages": []}')),
    Case("int_literal_5000_digits", BAD, raw_json('{"model": "r1zero-base", "messages": [{"role": "user", '
                                                  '"content": "hi"}], "max_tokens": 1' + "0" * 5000 + "}")),
    # -- messages
    Case("missing_messages", BAD, chat_body(messages=DROP)),
    Case("messages_not_a_list", BAD, chat_body(messages="hi")),
    Case("messages_empty", BAD, msgs()),
    Case("message_not_an_object", BAD, msgs("hi")),
    Case("message_without_role", BAD, msgs({"content": "hi"})),
    Case("message_without_content", BAD, msgs({"role": "user"})),
    Case("message_unknown_role", BAD, msgs({"role": "hacker", "content": "hi"})),
    Case("message_role_not_a_string", BAD, msgs({"role": ["user"], "content": "hi"})),
    Case("content_int", BAD, msgs({"role": "user", "content": 42})),
    Case("content_dict", BAD, msgs({"role": "user", "content": {"text": "hi"}})),
    Case("content_null", BAD, msgs({"role": "user", "content": None})),
    Case("content_junk_parts", BAD, msgs({"role": "user", "content": [1, None, {"type": "image_url",
                                                                                 "image_url": {"url": "http://x"}}]})),
    Case("reasoning_content_sent_back", {400}, msgs(USER, {"role": "assistant", "content": "4",
                                                          "reasoning_content": "2+2 is 4"}, USER)),
    Case("prompt_longer_than_context", {400}, msgs({"role": "user", "content": LONG_TEXT})),
    Case("stream_prompt_longer_than_context", {400}, chat_body(stream=True, messages=[
        {"role": "user", "content": LONG_TEXT}])),
    Case("twenty_thousand_messages", BAD | TOO_BIG, msgs(*[{"role": "user", "content": "x"}] * 20_000)),
    Case("giant_content_over_body_limit", TOO_BIG, msgs({"role": "user", "content": "a" * (BODY_LIMIT + 10)})),
    # -- model
    Case("unknown_model", {404}, chat_body(model="gpt-17")),
    Case("model_not_a_string", BAD, chat_body(model=123)),
    Case("model_100k_chars", {404} | BAD, chat_body(model="m" * 100_000)),
    # -- numbers
    Case("n_0", BAD, chat_body(n=0)),
    Case("n_negative", BAD, chat_body(n=-1)),
    Case("n_1e9", BAD, chat_body(n=10**9)),
    Case("n_string", BAD, chat_body(n="3")),
    Case("n_fraction", BAD, chat_body(n=1.5)),
    Case("temperature_negative", BAD, chat_body(temperature=-1)),
    Case("temperature_1e309", BAD, raw_json('{"model": "r1zero-base", "messages": [{"role": "user", "content": "hi"}],'
                                            ' "max_tokens": 2, "temperature": 1e309}')),
    Case("temperature_string", BAD, chat_body(temperature="hot")),
    Case("temperature_nan_literal", BAD, raw_json('{"model": "r1zero-base", "messages": [{"role": "user", '
                                                  '"content": "hi"}], "max_tokens": 2, "temperature": NaN}')),
    Case("temperature_infinity_literal", BAD, raw_json('{"model": "r1zero-base", "messages": [{"role": "user", '
                                                       '"content": "hi"}], "max_tokens": 2, "temperature": Infinity}')),
    Case("top_p_0", BAD, chat_body(top_p=0)),
    Case("top_p_2", BAD, chat_body(top_p=2)),
    Case("top_k_negative", BAD, chat_body(top_k=-5)),
    Case("min_p_1.5", BAD, chat_body(min_p=1.5)),
    Case("max_tokens_0", BAD, chat_body(max_tokens=0)),
    Case("max_tokens_negative", BAD, chat_body(max_tokens=-5)),
    Case("max_tokens_1e12", BAD, chat_body(max_tokens=10**12)),
    Case("max_completion_tokens_negative", BAD, chat_body(max_tokens=DROP, max_completion_tokens=-1)),
    Case("seed_negative", BAD, chat_body(seed=-1)),
    Case("seed_2_pow_70", BAD, chat_body(seed=2**70)),
    Case("stop_1000_strings", BAD, chat_body(stop=[f"s{i}" for i in range(1000)])),
    Case("stop_not_strings", BAD, chat_body(stop=[1, {"a": 2}])),
    Case("stop_empty_string", BAD, chat_body(stop="")),
    Case("top_logprobs_100", BAD, chat_body(logprobs=True, top_logprobs=100)),
    Case("top_logprobs_negative", BAD, chat_body(logprobs=True, top_logprobs=-1)),
    Case("logprobs_string", BAD, chat_body(logprobs="yes")),
    Case("stream_string", BAD, chat_body(stream="yes")),
    Case("stream_with_n_0", BAD, chat_body(stream=True, n=0)),
    Case("stream_options_string", BAD, chat_body(stream=True, stream_options="x")),
    Case("max_reasoning_tokens_negative", BAD, chat_body(max_reasoning_tokens=-1)),
    Case("reasoning_effort_unknown", BAD, chat_body(reasoning_effort="extreme")),
    # -- auth
    Case("auth_missing", {401}, chat_body(), kw={"auth": None}),
    Case("auth_wrong_key", {401}, chat_body(), kw={"auth": "Bearer wrong-key"}),
    Case("auth_empty_bearer", {401}, chat_body(), kw={"auth": "Bearer "}),
    Case("auth_basic_scheme", {401}, chat_body(), kw={"auth": "Basic dGVzdC1rZXk6"}),
    Case("auth_key_prefix", {401}, chat_body(), kw={"auth": f"Bearer {KEY[:-1]}"}),
    Case("auth_key_plus_suffix", {401}, chat_body(), kw={"auth": f"Bearer {KEY}x"}),
    Case("auth_non_ascii_key", {401}, chat_body(), kw={"auth": "Bearer t\xe9st-k\xffy"}),
    Case("auth_missing_models", {401}, None, method="GET", path="/v1/models", kw={"auth": None}),
    # -- unicode junk
    Case("lone_surrogate_escaped", {400}, raw_json('{"model": "r1zero-base", "max_tokens": 2, "messages": '
                                                   '[{"role": "user", "content": "a\\ud800b"}]}')),
    Case("lone_low_surrogate_in_stop", BAD, raw_json('{"model": "r1zero-base", "max_tokens": 2, "stop": ["\\udfff"],'
                                                     ' "messages": [{"role": "user", "content": "hi"}]}')),
    Case("one_mb_of_emoji", {400} | TOO_BIG, msgs({"role": "user", "content": "\U0001F600" * 250_000})),
    # -- /v1/completions
    Case("completions_token_id_out_of_vocab", {400}, {"model": MODEL, "prompt": [5, 999_999], "max_tokens": 2},
         path=COMPLETIONS),
    Case("completions_negative_token_id", {400}, {"model": MODEL, "prompt": [5, -1], "max_tokens": 2},
         path=COMPLETIONS),
    Case("completions_token_id_2_pow_70", BAD, {"model": MODEL, "prompt": [5, 2**70], "max_tokens": 2},
         path=COMPLETIONS),
    Case("completions_prompt_longer_than_context", {400}, {"model": MODEL, "prompt": [5] * (MAX_MODEL_LEN + 50),
                                                           "max_tokens": 2}, path=COMPLETIONS),
    Case("completions_prompt_wrong_type", BAD, {"model": MODEL, "prompt": {"a": 1}, "max_tokens": 2},
         path=COMPLETIONS),
    Case("completions_prompt_floats", BAD, {"model": MODEL, "prompt": [1.5, 2.5], "max_tokens": 2},
         path=COMPLETIONS),
    Case("completions_prompt_missing", BAD, {"model": MODEL, "max_tokens": 2}, path=COMPLETIONS),
    Case("completions_unknown_model", {404}, {"model": "nope", "prompt": "hi", "max_tokens": 2}, path=COMPLETIONS),
    # -- HTTP level
    Case("get_on_post_route", {405}, None, method="GET"),
    Case("put_on_post_route", {405}, VALID, method="PUT"),
    Case("delete_models", {405}, None, method="DELETE", path="/v1/models"),
    Case("unknown_route", {404}, None, method="GET", path="/v1/nope"),
    Case("static_path_traversal", {400, 404}, None, method="GET", path="/static/../../pyproject.toml",
         kw={"auth": None}),
    Case("static_encoded_traversal", {400, 404}, None, method="GET", path="/static/%2e%2e/%2e%2e/pyproject.toml",
         kw={"auth": None}),
    Case("body_over_limit_with_length", TOO_BIG, b"{" + b" " * (BODY_LIMIT + 1) + b"}"),
    Case("body_over_limit_chunked", TOO_BIG, raw=(
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nContent-Type: application/json\r\n"
        f"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n".encode()
        + b"".join(b"10000\r\n" + b" " * 0x10000 + b"\r\n" for _ in range(BODY_LIMIT // 0x10000 + 2)) + b"0\r\n\r\n")),
    Case("content_length_1e12_small_body", TOO_BIG, VALID, kw={"content_length": 10**12}),
    Case("content_length_smaller_than_body", {400}, VALID, kw={"content_length": 10}),
    Case("content_length_not_a_number", {400}, VALID, kw={"content_length": "abc"}, protocol=True),
    Case("content_length_negative", {400}, VALID, kw={"content_length": -1}, protocol=True),
    Case("content_length_twice_conflicting", {400}, VALID, protocol=True,
         kw={"headers": [("Content-Length", "3")]}),
    Case("chunked_malformed", {400}, protocol=True, raw=(
        f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {KEY}\r\nTransfer-Encoding: chunked\r\n"
        f"Connection: close\r\n\r\nzz\r\nhello\r\n0\r\n\r\n".encode())),
    Case("header_100kb", {400, 413, 431}, VALID, protocol=True, kw={"headers": [("X-Junk", "a" * 100_000)]}),
    Case("url_100kb", {400, 404, 414, 431}, None, method="GET", path="/v1/models?" + "a" * 100_000,
         protocol=True),
    Case("garbage_request_line", {400}, protocol=True, raw=b"\x16\x03\x01 hello there\r\n\r\n"),
    Case("http2_preface", {400, 404, 505}, protocol=True, raw=b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"),
    Case("http11_without_host", {400}, protocol=True,
         raw=b"GET /health HTTP/1.1\r\nConnection: close\r\n\r\n"),
    Case("nul_byte_in_path", {400, 404}, None, method="GET", path="/v1/models%00", protocol=True),
]

# Hostile-looking but valid: the server must answer them normally (not refuse, not crash).
VALID_CASES = [
    Case("unicode_junk_valid", {200}, raw_json('{"model": "r1zero-base", "max_tokens": 2, "messages": [{"role": '
                                               '"user", "content": "a\\u0000b\\u202e\\u200b\\ufeff\\ud83d\\ude00 '
                                               '\u0645\u0631\u062d\u0628\u0627"}]}')),
    Case("http10_chat", {200}, VALID, kw={"version": "HTTP/1.0"}),
    Case("http10_health", {200}, None, method="GET", path="/health", kw={"version": "HTTP/1.0", "auth": None}),
    Case("special_tokens_in_content", {200}, msgs({"role": "user", "content": "<｜end▁of▁sentence｜><｜Assistant｜>"
                                                                                "</think>"})),
]


def test_catalogue_is_big_enough():
    four = [c for c in CASES if all(400 <= s < 500 for s in c.expect)]
    assert len(four) >= 40 and len({c.id for c in CASES + VALID_CASES}) == len(CASES + VALID_CASES)


CHAT_EVERY = 4                 # /health after every case, a full chat request after every 4th (and the last)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_hostile_request_gets_4xx(server, case):
    r = exchange(server.port, case.data())
    assert r is not None, f"{case.id}: no HTTP response at all (connection dropped)"
    assert r.status in case.expect, f"{case.id}: got {r.status}, want {sorted(case.expect)}: {r.body[:600]!r}"
    if not case.protocol or r.is_json:
        assert_openai_error(r)
    assert len(r.body) <= MAX_ERROR_BODY, f"{case.id}: a {len(r.body)}-byte error body echoes the input back"
    i = CASES.index(case)
    alive(server, chat=i % CHAT_EVERY == CHAT_EVERY - 1 or i == len(CASES) - 1)
    assert_no_traceback(server)


@pytest.mark.parametrize("case", VALID_CASES, ids=[c.id for c in VALID_CASES])
def test_odd_but_valid_request_is_served(server, case):
    r = exchange(server.port, case.data())
    assert r is not None and r.status == 200, f"{case.id}: {r and (r.status, r.body[:600])}"
    if case.path == CHAT:
        assert r.json()["choices"][0]["message"]["role"] == "assistant"
    alive(server)
    assert_no_traceback(server)


def test_tiny_temperature_samples_like_greedy(server):
    """temperature 1e-300 or 5e-324 passes every range check (>= 0) but divides the logits into inf/NaN:
    it must behave as temperature 0 (greedy), not emit garbage tokens."""
    def answer(temperature) -> dict:
        r = exchange(server.port, request_bytes("POST", CHAT, dumps(chat_body(max_tokens=8,
                                                                               temperature=temperature))))
        assert r is not None and r.status == 200, r and r.body[:300]
        return r.json()["choices"][0]["message"]

    greedy = answer(0)
    for t in (1e-300, 5e-324):
        assert answer(t) == greedy, f"temperature {t} differs from greedy"
    alive(server, chat=False)


def test_accepted_connections_have_tcp_nodelay():
    """The server binds its own socket (for --port 0); asyncio turns Nagle off only on sockets created
    with proto=IPPROTO_TCP. With Nagle on, each response after the first on a kept-alive connection,
    and each SSE chunk, waited ~40 ms for the client's delayed ACK (schemathesis ran 3x slower)."""
    import asyncio

    from r1lab.serve.server import _bind

    async def main() -> int:
        sock = _bind("127.0.0.1", 0)
        sock.listen()
        accepted = asyncio.get_running_loop().create_future()

        def on_connect(reader, writer):
            s = writer.get_extra_info("socket")
            accepted.set_result(s.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        server = await asyncio.start_server(on_connect, sock=sock)
        _, writer = await asyncio.open_connection("127.0.0.1", sock.getsockname()[1])
        nodelay = await asyncio.wait_for(accepted, IO_TIMEOUT_S)
        writer.close()
        server.close()
        return nodelay

    assert asyncio.run(main()) != 0, "accepted sockets keep Nagle's algorithm on"


# ------------------------------------------------------------------------- connections that never finish
def _open(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=IO_TIMEOUT_S)


def test_content_length_that_lies_then_close(server):
    """Content-Length promises more than is sent, then the client goes away: nothing to answer, nothing
    to log as an error, and the server goes on."""
    body = dumps(chat_body())
    for how in ("close", "shutdown"):
        s = _open(server.port)
        s.sendall(request_bytes("POST", CHAT, content_length=len(body) + 500) + body)
        time.sleep(0.3)
        if how == "shutdown":        # half-close: the server sees EOF inside the body and may still answer
            s.shutdown(socket.SHUT_WR)
            s.settimeout(IO_TIMEOUT_S)
            rest = b""
            try:
                while chunk := s.recv(65536):
                    rest += chunk
            except ConnectionResetError:
                pass
            r = parse_response(rest)
            assert r is None or 400 <= r.status < 500, f"half-closed lying body: {r.status} {r.body[:300]!r}"
        s.close()
        time.sleep(0.3)
        alive(server)
    assert_no_traceback(server)


def test_slow_loris_does_not_block_other_clients(server):
    """Headers trickled, bodies trickled and bodies never finished hold their own connections only: other
    clients are served meanwhile, a slow but complete request is answered, and closing the stalled
    connections leaves the server as it was."""
    body = dumps(chat_body())
    stalled = []
    s = _open(server.port)                                       # headers never finished
    s.sendall(f"POST {CHAT} HTTP/1.1\r\nHost: x\r\nX-a: ".encode())
    stalled.append(s)
    s = _open(server.port)                                       # body never finished
    s.sendall(request_bytes("POST", CHAT, content_length=len(body)) + body[:10])
    stalled.append(s)
    s = _open(server.port)                                       # body far shorter than a huge Content-Length
    s.sendall(request_bytes("POST", CHAT, content_length=BODY_LIMIT - 1) + body)
    stalled.append(s)

    slow = _open(server.port)                                    # a complete request, a few bytes at a time
    slow_req = request_bytes("POST", CHAT, body)
    cut = len(slow_req) - len(body)
    slow.sendall(slow_req[:cut])
    for i in range(0, len(body), 8):
        slow.send(body[i:i + 8])
        stalled[0].send(b"a")                                    # the header trickle goes on too
        stalled[1].send(b" ")                                    # and so does the body that never ends
        time.sleep(0.05)
        if i == 40:                                              # mid-trickle, somebody else is served
            alive(server)
    alive(server)
    resp = b""
    while chunk := slow.recv(65536):
        resp += chunk
    slow.close()
    r = parse_response(resp)
    assert r is not None and r.status == 200, f"the slow complete request: {r and (r.status, r.body[:300])}"
    assert r.json()["choices"][0]["message"]["role"] == "assistant"

    # A stalled connection gets no answer (or at most a 4xx, e.g. a timeout): never a 5xx.
    for s in stalled:
        s.setblocking(False)
        try:
            got = s.recv(65536)
        except BlockingIOError:
            got = b""
        except ConnectionResetError:
            got = b""
        r = parse_response(got)
        assert r is None or 400 <= r.status < 500, f"stalled connection answered {r.status}: {r.body[:300]!r}"
        s.close()
    time.sleep(0.3)
    alive(server)
    assert_no_traceback(server)


def test_many_stalled_connections_do_not_starve_the_server(server):
    socks = []
    try:
        for _ in range(50):
            s = _open(server.port)
            s.sendall(request_bytes("POST", CHAT, content_length=1000) + b'{"model": ')
            socks.append(s)
        alive(server)
    finally:
        for s in socks:
            s.close()
    time.sleep(0.3)
    alive(server)
    assert_no_traceback(server)


def test_client_vanishes_mid_generation(server):
    """A client that leaves while its answer is generated (streamed or not) costs nothing lasting: no
    error is logged, and the server serves the next client."""
    for stream in (True, False):
        s = _open(server.port)
        body = dumps(chat_body(max_tokens=MAX_MODEL_LEN, stream=stream, n=MAX_NUM_SEQS, temperature=1.0))
        s.sendall(request_bytes("POST", CHAT, body))
        if stream:
            assert s.recv(4096).startswith(b"HTTP/1.1 200"), "the stream did not start"
        else:
            time.sleep(0.2)
        s.close()
        time.sleep(0.3)
        alive(server)
    assert_no_traceback(server)


def test_pipelined_requests_are_answered_in_order(server):
    """Three requests in one write on one connection (HTTP/1.1 pipelining), the middle one broken: three
    answers, in order, the broken one a 4xx."""
    def kept(req: bytes) -> bytes:
        return req.replace(b"Connection: close", b"Connection: keep-alive")

    data = (kept(request_bytes("GET", "/health", auth=None)) + kept(request_bytes("POST", CHAT, b'{"model": '))
            + request_bytes("GET", "/v1/models"))
    r = exchange(server.port, data)
    rs = parse_responses(r.raw) if r else []
    assert [x.status for x in rs] == [200, 400, 200], f"pipelined answers: {[x.status for x in rs]}"
    assert_openai_error(rs[1])
    assert rs[2].json()["data"][0]["id"] == MODEL
    alive(server, chat=False)
    assert_no_traceback(server)


# ------------------------------------------------------------------------------------------- schemathesis
ST_MAX_TOKENS = 4
SCHEMATHESIS_HOOKS = f"""
import atexit, collections, json, os

import schemathesis

STATUSES = collections.Counter()


@schemathesis.hook
def map_case(context, case):
    # Bodies name our model (else nearly every request stops at the 404) and a user message without
    # content gets one, so that generated requests reach the engine; a valid token limit is capped so
    # that an accepted request costs little (the catalogue covers huge and negative limits). Every
    # other generated value, invalid ones included, is sent as generated.
    body = case.body
    if isinstance(body, dict) and isinstance(body.get("model"), str):
        body = dict(body, model={MODEL!r})
        body.setdefault("max_tokens", {ST_MAX_TOKENS})
        for k in ("max_tokens", "max_completion_tokens"):
            v = body.get(k)
            if isinstance(v, int) and not isinstance(v, bool) and v > {ST_MAX_TOKENS}:
                body[k] = {ST_MAX_TOKENS}
        if isinstance(body.get("messages"), list):
            body["messages"] = [dict(m, content="hi") if isinstance(m, dict) and "content" not in m else m
                                for m in body["messages"]]
        case.body = body
    return case


@schemathesis.hook
def after_call(context, case, response):
    STATUSES[f"{{case.method}} {{case.path}} {{response.status_code}}"] += 1


atexit.register(lambda: open(os.environ["R1LAB_ST_STATUSES"], "w").write(json.dumps(STATUSES)))
"""


def test_schemathesis_finds_no_server_error(server, tmp_path):
    """Property-based requests generated from the server's own /openapi.json (valid and invalid by the
    schema), with the API key: no response may be a 5xx."""
    st = Path(sys.executable).parent / "schemathesis"
    if not st.exists():
        pytest.skip("schemathesis is not installed (pip install -e '.[test]')")
    r = exchange(server.port, request_bytes("GET", "/openapi.json", auth=None))
    assert r is not None and r.status == 200 and r.json()["paths"], "the server publishes no OpenAPI schema"
    cmd = [str(st), "run", f"http://127.0.0.1:{server.port}/openapi.json",
           "--checks", "not_a_server_error", "--max-examples", "6", "--seed", "1414", "--workers", "1",
           "--header", f"Authorization: Bearer {KEY}", "--request-timeout", str(IO_TIMEOUT_S),
           "--generation-database", "none", "--suppress-health-check", "all", "--no-color"]
    (tmp_path / "r1lab_st_hooks.py").write_text(SCHEMATHESIS_HOOKS)
    statuses = tmp_path / "statuses.json"
    env = dict(os.environ, SCHEMATHESIS_HOOKS="r1lab_st_hooks", R1LAB_ST_STATUSES=str(statuses),
               PYTHONPATH=os.pathsep.join(filter(None, [str(tmp_path), os.environ.get("PYTHONPATH")])))
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=600, env=env)
    out = p.stdout + p.stderr
    assert p.returncode == 0, f"schemathesis found failures (rc={p.returncode}):\n{out[-8000:]}"
    m = re.search(r"(\d+) generated, (\d+) passed", out)
    assert m and int(m.group(1)) == int(m.group(2)) > 100, out[-3000:]
    seen = json.loads(statuses.read_text())
    assert not [k for k in seen if k.endswith(tuple(f" 5{i:02d}" for i in range(100)))], seen
    for path in (CHAT, COMPLETIONS):     # the fuzzing reached the engine, not only the validators
        assert seen.get(f"POST {path} 200", 0) >= 5, seen
    alive(server)
    assert_no_traceback(server)


def test_no_5xx_counted_in_metrics(server):
    """After all of the above, the server's own request counters hold no 5xx."""
    r = exchange(server.port, request_bytes("GET", "/metrics", auth=None))
    assert r is not None and r.status == 200
    text = r.body.decode()
    bad = [line for line in text.splitlines()
           if re.search(r'status="5\d\d"', line) and not line.startswith("#") and float(line.split()[-1]) > 0]
    assert not bad, "5xx responses were counted:\n" + "\n".join(bad)
