"""`r1lab serve` against the official openai client and raw HTTP (issue 14 "Acceptance").

One module-scoped live server (``--port 0``, the shipped r1zero-base, API keys on) carries
most tests; a second, with 8 slots and no queue, answers 429 and is then drained with
SIGTERM. Prompts are chosen for what the tiny model does with them: "1 1 1 1 1 1" makes it
count in its thinking for as long as it may (a long request); "2 3 4 5" gives a short
thinking and an answer that depends on the seed.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import select
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

openai = pytest.importorskip("openai")
pytest.importorskip("fastapi")

MODEL = "r1zero-base"
READY = re.compile(r"r1lab serve: ready on http://([\d.]+):(\d+) \(model (\S+)\)")
START_TIMEOUT_S = 180
LONG = [{"role": "user", "content": "1 1 1 1 1 1"}]     # greedy: thinks until max_tokens
SHORT = [{"role": "user", "content": "2 3 4 5"}]        # thinking, </think>, an answer
KEY = "key-one"     # --api-key; key-two and key-three come from $R1LAB_API_KEYS


# ----------------------------------------------------------------------------- helpers
class Server:
    def __init__(self, *args: str, env: dict | None = None, key: str | None = None):
        self.key = key
        full_env = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}   # 2 shared cores: no thread thrash
        self.proc = subprocess.Popen([sys.executable, "-m", "r1lab.cli", "serve", MODEL, "--port", "0", *args],
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=full_env)
        self.stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, daemon=True).start()
        end = time.monotonic() + START_TIMEOUT_S
        line = ""
        while time.monotonic() < end:
            ready, _, _ = select.select([self.proc.stdout], [], [], 1.0)
            if ready:
                line = self.proc.stdout.readline()
                if READY.search(line) or not line:
                    break
            if self.proc.poll() is not None:
                break
        m = READY.search(line)
        if not m:
            self.proc.kill()
            raise RuntimeError(f"server did not start: {line!r} {''.join(self.stderr)[-2000:]}")
        self.host, self.port, self.name = m.group(1), int(m.group(2)), m.group(3)
        self.base = f"http://{self.host}:{self.port}"

    def _drain_stderr(self):
        for line in self.proc.stderr:
            self.stderr.append(line)

    def client(self, api_key: str | None = None, **kw) -> "openai.OpenAI":
        return openai.OpenAI(base_url=self.base + "/v1", api_key=api_key or self.key or "none", max_retries=0,
                             timeout=120, **kw)

    def request(self, method: str, path: str, body=None, headers: dict | None = None, raw: bytes | None = None):
        """(status, headers, parsed JSON or text)."""
        conn = http.client.HTTPConnection(self.host, self.port, timeout=120)
        data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
        h = {"Content-Type": "application/json", **({"Authorization": f"Bearer {self.key}"} if self.key else {}),
             **(headers or {})}
        conn.request(method, path, body=data, headers=h)
        r = conn.getresponse()
        text = r.read().decode()
        conn.close()
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        return r.status, dict(r.getheaders()), parsed

    def metrics(self) -> dict[str, float]:
        status, _, text = self.request("GET", "/metrics")
        assert status == 200
        out = {}
        for line in text.splitlines():
            if line.startswith("r1lab:"):
                key, value = line.rsplit(" ", 1)
                out[key] = float(value)
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)


def metric(m: dict, name: str, **labels) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    total = 0.0
    for key, v in m.items():
        k_name, _, k_labels = key.partition("{")
        if k_name == name and all(f'{a}="{b}"' in k_labels for a, b in labels.items()):
            total += v
    return total


def sse_events(resp) -> list:
    """The data of each SSE event of an http.client response ('[DONE]' kept as a string)."""
    events = []
    for raw in resp:
        line = raw.decode().strip()
        if line.startswith("data: "):
            data = line[len("data: "):]
            events.append(data if data == "[DONE]" else json.loads(data))
    return events


def wait_for(cond, timeout: float = 60.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def server():
    s = Server("--reasoning-effort-budgets", "low=2,medium=4,high=8", "--api-key", KEY,
               env={"R1LAB_API_KEYS": "key-two, key-three"}, key=KEY)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def offline():
    """The offline engine on the same model: what the server must reproduce."""
    import torch

    from r1lab.engine import Engine, EngineConfig
    from r1lab.generate import load_model_and_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)    # as the server runs (OMP_NUM_THREADS=1): the same float reductions
    model, tok = load_model_and_tokenizer(MODEL, None, "cpu")
    yield Engine(model, tok, EngineConfig(max_num_seqs=8)), tok
    torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- basics
def test_health_ready_models_page_and_openapi(server):
    assert server.request("GET", "/health")[:1] == (200,)
    status, _, body = server.request("GET", "/ready")
    assert status == 200 and body["status"] == "ready"
    models = server.client().models.list()
    assert [m.id for m in models.data] == [MODEL] and server.name == MODEL
    assert server.client().models.retrieve(MODEL).id == MODEL
    status, headers, page = server.request("GET", "/")
    assert status == 200 and headers["content-type"].startswith("text/html") and "<html" in page.lower()
    status, _, spec = server.request("GET", "/openapi.json")
    assert status == 200
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(spec["paths"])


def test_chat_reasoning_equals_offline_split_for_the_same_seed(server, offline):
    from r1lab.engine import SamplingParams
    from r1lab.reasoning import split_reasoning

    engine, _ = offline
    client = server.client()
    answers = set()
    for seed in (3, 6, 8):
        out = engine.generate([SHORT], SamplingParams(temperature=0.9, seed=seed, max_tokens=24))[0]
        o = out.outputs[0]
        reasoning, answer = split_reasoning(o.text)
        assert reasoning and answer, "the prompt no longer gives both parts: pick another"
        answers.add(answer)
        r = client.chat.completions.create(model=MODEL, messages=SHORT, temperature=0.9, seed=seed, max_tokens=24)
        msg = r.choices[0].message
        assert (msg.reasoning_content, msg.content) == (reasoning, answer)
        assert msg.model_extra["reasoning"] == reasoning
        assert r.choices[0].finish_reason == o.finish_reason
        assert r.usage.prompt_tokens == len(out.prompt_token_ids)
        assert r.usage.completion_tokens == len(o.token_ids)
        assert r.usage.total_tokens == len(out.prompt_token_ids) + len(o.token_ids)
        assert r.usage.completion_tokens_details.reasoning_tokens == o.reasoning_tokens > 0
        # the same through the stream: reasoning pieces first, then content; usage last
        stream = client.chat.completions.create(model=MODEL, messages=SHORT, temperature=0.9, seed=seed,
                                                max_tokens=24, stream=True, stream_options={"include_usage": True})
        kinds, parts, usage, finish = [], {"r": "", "c": ""}, None, None
        for chunk in stream:
            if chunk.usage is not None:
                assert chunk.choices == []
                usage = chunk.usage
                continue
            d = chunk.choices[0].delta
            extra = d.model_extra or {}
            if extra.get("reasoning_content"):
                assert extra["reasoning"] == extra["reasoning_content"]
                parts["r"] += extra["reasoning_content"]
                kinds.append("r")
            if d.content:
                parts["c"] += d.content
                kinds.append("c")
            finish = chunk.choices[0].finish_reason or finish
        assert (parts["r"], parts["c"]) == (reasoning, answer)
        assert kinds == sorted(kinds, reverse=True)       # every "r" before every "c"
        assert finish == o.finish_reason
        assert usage.completion_tokens == len(o.token_ids)
        assert usage.completion_tokens_details.reasoning_tokens == o.reasoning_tokens
    assert len(answers) > 1, "the seeds gave one answer: the seed test would not notice a seed ignored"


def test_completions_equal_offline_engine(server, offline):
    from r1lab.engine import SamplingParams

    engine, tok = offline
    client = server.client()
    prompt = "12+34="
    out = engine.generate([prompt], SamplingParams(temperature=0.8, seed=5, max_tokens=12))[0]
    o = out.outputs[0]
    r = client.completions.create(model=MODEL, prompt=prompt, temperature=0.8, seed=5, max_tokens=12)
    assert r.choices[0].text == o.text and r.choices[0].finish_reason == o.finish_reason
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (len(out.prompt_token_ids), len(o.token_ids))
    text = "".join(c.choices[0].text for c in client.completions.create(
        model=MODEL, prompt=prompt, temperature=0.8, seed=5, max_tokens=12, stream=True) if c.choices)
    assert text == o.text
    # a prompt given as token ids
    r = client.completions.create(model=MODEL, prompt=out.prompt_token_ids, temperature=0.8, seed=5, max_tokens=12)
    assert r.choices[0].text == o.text


def test_logprobs_and_top_logprobs_shapes(server):
    client = server.client()
    r = client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=6, seed=1, n=2, logprobs=True,
                                       top_logprobs=3)
    assert r.usage.completion_tokens == sum(len(c.logprobs.content) for c in r.choices)
    for c in r.choices:
        for e in c.logprobs.content:
            assert e.logprob <= 0 and isinstance(e.token, str) and bytes(e.bytes).decode(errors="replace")
            assert len(e.top_logprobs) == 3
            tops = [t.logprob for t in e.top_logprobs]
            assert tops == sorted(tops, reverse=True) and e.logprob <= tops[0] + 1e-6
    stream = client.chat.completions.create(model=MODEL, messages=SHORT, max_tokens=6, seed=1, logprobs=True,
                                            top_logprobs=2, stream=True, stream_options={"include_usage": True})
    n_lp, usage = 0, None
    for chunk in stream:
        usage = chunk.usage or usage
        for c in chunk.choices:
            if c.logprobs and c.logprobs.content:
                n_lp += len(c.logprobs.content)
                assert all(len(e.top_logprobs) == 2 for e in c.logprobs.content)
    assert n_lp == usage.completion_tokens
    r = client.completions.create(model=MODEL, prompt="12+34=", max_tokens=5, seed=1, logprobs=2)
    lp = r.choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(lp.text_offset)
    assert len(lp.tokens) == r.usage.completion_tokens and all(len(t) == 2 for t in lp.top_logprobs)


def test_n_and_stop(server):
    client = server.client()
    r = client.chat.completions.create(model=MODEL, messages=SHORT, n=3, max_tokens=10, seed=2, temperature=1.0)
    assert [c.index for c in r.choices] == [0, 1, 2]
    full = client.completions.create(model=MODEL, prompt="1 1 1 1", max_tokens=16, temperature=0)
    text = full.choices[0].text
    stop = text[5:7]
    assert stop and text.index(stop) > 0
    for stops in (stop, [stop, "never-generated"]):
        r = client.completions.create(model=MODEL, prompt="1 1 1 1", max_tokens=16, temperature=0, stop=stops)
        assert r.choices[0].text == text[: text.index(stop)] and r.choices[0].finish_reason == "stop"
    # streamed: n choices each end with their own finish_reason
    finished = {}
    for chunk in client.chat.completions.create(model=MODEL, messages=SHORT, n=2, max_tokens=8, seed=2,
                                                stream=True):
        for c in chunk.choices:
            if c.finish_reason:
                finished[c.index] = c.finish_reason
    assert set(finished) == {0, 1} and set(finished.values()) <= {"stop", "length"}


# ----------------------------------------------------------------------------- errors
def test_errors_are_typed_and_openai_shaped(server):
    client = server.client()
    ok = dict(model=MODEL, messages=SHORT, max_tokens=4)
    cases = [
        (openai.NotFoundError, dict(model="no-such-model"), "model"),
        (openai.BadRequestError, dict(temperature=3.0), "temperature"),
        (openai.BadRequestError, dict(n=1000), "n"),
        (openai.BadRequestError, dict(top_logprobs=2), "top_logprobs"),
        (openai.BadRequestError, dict(presence_penalty=1.0), "presence_penalty"),
        (openai.BadRequestError, dict(messages=[{"role": "user", "content": "hi"},
                                               {"role": "assistant", "content": "4", "reasoning_content": "2+2"},
                                               {"role": "user", "content": "and 3+3?"}]),
         "messages[1].reasoning_content"),
        (openai.BadRequestError, dict(messages=[{"role": "tool", "content": "x"}]), "messages[0].role"),
        (openai.BadRequestError, dict(messages=[{"role": "user", "content": "1 " * 2000}]), "messages"),
        (openai.BadRequestError, dict(stop=["a"] * 5), "stop"),
        (openai.UnprocessableEntityError, dict(n="2"), "n"),
    ]
    for exc, change, param in cases:
        with pytest.raises(exc) as info:
            client.chat.completions.create(**{**ok, **change})
        err = info.value.body
        assert set(err) >= {"message", "type", "param", "code"}, err
        assert err["param"] == param, (change, err)
    # raw HTTP: bad JSON, a body that is not an object, missing field, unknown route, wrong method, huge body
    for method, path, raw, status in [
        ("POST", "/v1/chat/completions", b"{not json", 400),
        ("POST", "/v1/chat/completions", b"[1, 2]", 422),
        ("POST", "/v1/chat/completions", json.dumps({"model": MODEL}).encode(), 422),
        ("GET", "/v1/nothing-here", None, 404),
        ("GET", "/v1/chat/completions", None, 405),
        ("POST", "/v1/completions", b'{"prompt": "' + b"x" * (2**20 + 10) + b'"}', 413),
    ]:
        got, _, body = server.request(method, path, raw=raw)
        assert got == status, (path, raw and raw[:40], got, body)
        assert set(body["error"]) == {"message", "type", "param", "code"}
    m = server.metrics()
    assert metric(m, "r1lab:request_failure_total", status="404") >= 2
    assert metric(m, "r1lab:request_failure_total", status="400") >= 1


def test_body_limit_is_enforced_while_reading(server):
    """A client that lies about Content-Length (or sends none, chunked) still gets 413."""
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.putrequest("POST", "/v1/completions")
    conn.putheader("Content-Type", "application/json")
    conn.putheader("Authorization", f"Bearer {KEY}")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    piece = b"x" * 65536
    status = None
    try:
        for _ in range(40):      # 2.5 MiB in all, more than the 1 MiB limit
            conn.send(b"%x\r\n%s\r\n" % (len(piece), piece))
        conn.send(b"0\r\n\r\n")
    except OSError:
        pass                     # the server answered and closed: fine
    r = conn.getresponse()
    status = r.status
    assert status == 413 and json.loads(r.read())["error"]["code"] == "body_too_large"
    conn.close()
    assert server.request("GET", "/health")[0] == 200


# ----------------------------------------------------------------------------- streams and slots
def test_client_disconnect_mid_stream_frees_the_slot(server):
    m0 = server.metrics()
    before = metric(m0, "r1lab:request_success_total", finished_reason="abort")
    conn = http.client.HTTPConnection(server.host, server.port, timeout=60)
    conn.request("POST", "/v1/chat/completions", body=json.dumps(
        {"model": MODEL, "messages": LONG, "max_tokens": 900, "temperature": 0, "stream": True}),
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {KEY}"})
    resp = conn.getresponse()
    assert resp.status == 200
    seen = 0
    for raw in resp:
        if raw.startswith(b"data: ") and b"reasoning_content" in raw:
            seen += 1
            if seen == 3:
                break
    m = server.metrics()
    assert metric(m, "r1lab:num_requests_running") == 1 and metric(m, "r1lab:kv_cache_usage_perc") > 0
    conn.sock.shutdown(2)
    conn.close()

    def freed():
        m = server.metrics()
        return (metric(m, "r1lab:num_requests_running") == 0 and metric(m, "r1lab:kv_cache_usage_perc") == 0
                and metric(m, "r1lab:request_success_total", finished_reason="abort") == before + 1)
    wait_for(freed, 60, "the cancelled request's slot and cache to be freed")
    generated = metric(server.metrics(), "r1lab:generation_tokens_total") - metric(m0, "r1lab:generation_tokens_total")
    assert generated < 900      # it stopped: the 900 tokens were never generated


def test_64_concurrent_streams_without_errors(server):
    client = server.client()

    def one(i):
        text, finish = "", None
        for chunk in client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": f"{i} {i}"}],
                                                    max_tokens=8, seed=i, stream=True):
            for c in chunk.choices:
                extra = c.delta.model_extra or {}
                text += (c.delta.content or "") + (extra.get("reasoning_content") or "")
                finish = c.finish_reason or finish
        return finish

    with ThreadPoolExecutor(64) as pool:
        results = list(pool.map(one, range(64)))
    assert all(r in ("stop", "length") for r in results), results
    m = server.metrics()
    assert metric(m, "r1lab:num_requests_running") == 0 and metric(m, "r1lab:num_requests_waiting") == 0
    assert metric(m, "r1lab:time_to_first_token_seconds_count") >= 64
    assert metric(m, "r1lab:e2e_request_latency_seconds_count") >= 64
    assert metric(m, "r1lab:inter_token_latency_seconds_count") > 0


# ----------------------------------------------------------------------------- thinking budget
def test_thinking_budget_cuts_reasoning_and_an_answer_follows(server, offline):
    _, tok = offline
    client = server.client()
    free = client.chat.completions.create(model=MODEL, messages=LONG, temperature=0, max_tokens=40)
    assert free.usage.completion_tokens_details.reasoning_tokens > 10 and not free.choices[0].message.content
    assert free.choices[0].model_extra["reasoning_budget_hit"] is False
    for budget in (0, 3, 6):
        r = client.chat.completions.create(model=MODEL, messages=LONG, temperature=0, max_tokens=40, logprobs=True,
                                           extra_body={"max_reasoning_tokens": budget})
        c = r.choices[0]
        assert c.model_extra["reasoning_budget_hit"] is True
        assert r.usage.completion_tokens_details.reasoning_tokens == budget
        tokens = [e.token for e in c.logprobs.content]
        assert abs(tokens.index("</think>") - budget) <= 1     # the thinking stops at the budget (± 1 token)
        assert c.message.content, "an answer must follow the cut thinking"
        assert len(tok.encode(c.message.reasoning_content)) <= budget + 1
    # reasoning_effort maps to --reasoning-effort-budgets (low=2 here), also streamed
    hit, reasoning = None, 0
    for chunk in client.chat.completions.create(model=MODEL, messages=LONG, temperature=0, max_tokens=40,
                                                stream=True, stream_options={"include_usage": True},
                                                extra_body={"reasoning_effort": "low"}):
        for c in chunk.choices:
            if c.finish_reason:
                hit = c.model_extra["reasoning_budget_hit"]
        if chunk.usage:
            reasoning = chunk.usage.completion_tokens_details.reasoning_tokens
    assert hit is True and reasoning == 2
    m = server.metrics()
    assert metric(m, "r1lab:reasoning_tokens_total") >= 2 + 3 + 6


# ----------------------------------------------------------------------------- keys
def test_api_keys(server):
    for key in (KEY, "key-three"):        # --api-key and $R1LAB_API_KEYS
        assert server.client(api_key=key).models.list().data[0].id == MODEL
    for key in ("wrong", "key-on", "key-one-two", "KEY-ONE"):
        with pytest.raises(openai.AuthenticationError) as info:
            server.client(api_key=key).chat.completions.create(model=MODEL, messages=SHORT, max_tokens=2)
        assert info.value.body["code"] == "invalid_api_key"
    for headers in ({"Authorization": ""}, {"Authorization": f"Basic {KEY}"}, {"Authorization": f"Bearer{KEY}"}):
        status, _, body = server.request("POST", "/v1/chat/completions", {"model": MODEL, "messages": SHORT},
                                         headers=headers)
        assert status == 401 and set(body["error"]) == {"message", "type", "param", "code"}, headers
    for path in ("/health", "/ready", "/metrics", "/"):     # open without a key
        assert server.request("GET", path, headers={"Authorization": ""})[0] == 200, path


# ----------------------------------------------------------------------------- queue, SIGTERM
def test_full_server_is_429_then_sigterm_lets_8_streams_finish_and_exits_0():
    """8 slots, no queue: the 9th request at once is refused with 429 + Retry-After. Then 8
    streams run, SIGTERM arrives: /ready and new requests say 503, all 8 finish, exit 0."""
    s = Server("--max-num-seqs", "8", "--max-queue", "0", "--drain-timeout", "300")
    try:
        client = s.client()

        def one(_):
            try:
                r = client.chat.completions.create(model=MODEL, messages=LONG, temperature=0, max_tokens=60)
                return r.choices[0].finish_reason
            except openai.RateLimitError as e:
                assert e.response.headers["retry-after"] == "1" and e.body["code"] == "queue_full"
                return "429"

        with ThreadPoolExecutor(11) as pool:
            results = list(pool.map(one, range(11)))
        assert results.count("429") >= 1 and results.count("length") >= 8, results
        assert set(results) <= {"429", "length"}
        assert metric(s.metrics(), "r1lab:request_failure_total", status="429") == results.count("429")

        first = threading.Barrier(9)
        results = [None] * 8

        def stream(i):
            conn = http.client.HTTPConnection(s.host, s.port, timeout=300)
            conn.request("POST", "/v1/chat/completions", body=json.dumps(
                {"model": MODEL, "messages": LONG, "max_tokens": 96, "temperature": 0, "stream": True}),
                headers={"Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.readline()          # the first event line: the request is accepted and running
            first.wait(120)
            events = sse_events(resp)
            finish = [c["finish_reason"] for e in events if isinstance(e, dict) for c in e.get("choices", [])
                      if c.get("finish_reason")]
            results[i] = (events[-1] if events else None, finish)

        threads = [threading.Thread(target=stream, args=(i,)) for i in range(8)]
        for t in threads:
            t.start()
        first.wait(120)
        s.proc.send_signal(signal.SIGTERM)
        wait_for(lambda: s.request("GET", "/ready")[0] == 503, 30, "/ready to say 503 while draining")
        status, _, body = s.request("POST", "/v1/chat/completions", {"model": MODEL, "messages": SHORT})
        assert status == 503 and body["error"]["code"] == "draining"
        for t in threads:
            t.join(300)
        assert results == [("[DONE]", ["length"])] * 8, results
        engine = engine_pid(s.proc.pid)
        assert s.proc.wait(60) == 0, "".join(s.stderr)
        wait_for(lambda: not pid_alive(engine), 30, "the engine process to end with the server")
    finally:
        s.stop()


def engine_pid(server_pid: int) -> int:
    """The pid of the server's engine process (its child started by multiprocessing's spawn; the
    other child, multiprocessing's resource tracker, is not it)."""
    found: list[int] = []

    def look():
        found[:] = [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == server_pid
                    and b"spawn_main" in _cmdline(int(p))]
        return bool(found)

    wait_for(look, 30, "the engine process")
    assert len(found) == 1, found
    return found[0]


def _ppid(pid: int) -> int | None:
    try:
        return int(open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[1])
    except (OSError, ValueError):
        return None


def _cmdline(pid: int) -> bytes:
    try:
        return open(f"/proc/{pid}/cmdline", "rb").read()
    except OSError:
        return b""


def pid_alive(pid: int) -> bool:
    try:
        state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"      # a zombie has exited


def test_the_engine_runs_in_its_own_process_and_its_death_stops_the_server():
    """The engine is a child process (not the HTTP process). Killed mid-stream: the stream ends
    with an SSE error event (engine_dead), /health says 503 until the server stops, and the
    server exits 1 with one line on stderr (a supervisor restarts it)."""
    s = Server("--max-num-seqs", "4")
    try:
        engine = engine_pid(s.proc.pid)
        assert engine != s.proc.pid
        conn = http.client.HTTPConnection(s.host, s.port, timeout=120)
        conn.request("POST", "/v1/chat/completions", body=json.dumps(
            {"model": MODEL, "messages": LONG, "max_tokens": 3000, "temperature": 0, "stream": True}),
            headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        resp.readline()                       # the request runs in the engine process
        os.kill(engine, signal.SIGKILL)
        events = sse_events(resp)
        assert events and isinstance(events[-1], dict) and events[-1]["error"]["code"] == "engine_dead", events[-3:]
        assert "[DONE]" not in events
        assert s.proc.wait(60) == 1
        err = "".join(s.stderr)
        assert "the engine process exited" in err and "Traceback" not in err, err[-2000:]
    finally:
        s.stop()


def test_a_killed_server_takes_its_engine_process_with_it():
    s = Server()
    try:
        engine = engine_pid(s.proc.pid)
        s.proc.kill()
        s.proc.wait(30)
        wait_for(lambda: not pid_alive(engine), 30, "the orphaned engine process to exit")
    finally:
        s.stop()


def test_serve_refuses_bad_flags_and_a_missing_model_before_binding(tmp_path, capsys):
    from r1lab.cli import main

    assert main(["serve", str(tmp_path / "missing"), "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("r1lab: error:") and "does not exist" in err and len(err.strip().splitlines()) == 1
    assert main(["serve", MODEL, "--max-model-len", "999999", "--port", "0"]) == 2
    assert "--max-model-len" in capsys.readouterr().err
    for flag, value in (("--kv-cache-bytes", "lots"), ("--reasoning-effort-budgets", "huge=5"),
                        ("--max-num-seqs", "0"), ("--port", "-1"), ("--max-body-bytes", "0")):
        with pytest.raises(SystemExit) as info:
            main(["serve", MODEL, flag, value])
        assert info.value.code == 2 and flag in capsys.readouterr().err, flag


# ----------------------------------------------------------------------------- in-process
def test_engine_failure_mid_stream_is_an_sse_error_event_and_serving_continues(offline):
    """A step that raises: the stream gets one `data: {"error": …}` event and ends; the next
    request is served. Two apps in one process (each has its own metrics registry)."""
    from fastapi.testclient import TestClient

    from r1lab.engine import Engine, EngineConfig
    from r1lab.serve.app import ServeConfig, create_app
    from r1lab.serve.loop import EngineLoop

    _, tok = offline
    engine = Engine(offline[0].model, tok, EngineConfig(max_num_seqs=4))
    real_step, calls = engine.step, {"n": 0, "fail_at": 4}

    def step():
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise RuntimeError("simulated device failure")
        return real_step()

    engine.step = step
    apps = [create_app(ServeConfig(model_name="m")) for _ in range(2)]
    state = apps[0].state.r1
    loop = EngineLoop(engine, state.metrics, max_queue=8)
    loop.start()
    state.attach(tok, loop, engine.cfg.max_position_embeddings)
    try:
        with TestClient(apps[0]) as http_client:
            body = {"model": "m", "messages": LONG, "max_tokens": 50, "temperature": 0, "stream": True}
            with http_client.stream("POST", "/v1/chat/completions", json=body) as r:
                assert r.status_code == 200
                events = [json.loads(x[6:]) if x != "data: [DONE]" else x
                          for x in r.iter_lines() if x.startswith("data: ")]
            assert "error" in events[-1] and events[-1]["error"]["code"] == "engine_error"
            assert "[DONE]" not in events
            ok = http_client.post("/v1/chat/completions", json={**body, "stream": False, "max_tokens": 5})
            assert ok.status_code == 200 and ok.json()["choices"][0]["finish_reason"] == "length"
            assert http_client.get("/health").status_code == 200
    finally:
        loop.stop()


def test_before_the_model_is_loaded_and_a_body_that_never_arrives():
    """Loading: /health 200, /ready and /v1 503. A body still incomplete after the timeout: 408."""
    import asyncio

    from fastapi.testclient import TestClient

    from r1lab.serve.app import ServeConfig, _BodyLimit, create_app

    app = create_app(ServeConfig(model_name="m"))
    with TestClient(app) as c:
        assert c.get("/health").status_code == 200
        r = c.get("/ready")
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"
        r = c.post("/v1/chat/completions", json={"model": "m", "messages": SHORT})
        assert r.status_code == 503 and r.json()["error"]["code"] == "loading"

    sent = []

    async def slow_loris():
        first = True

        async def receive():
            nonlocal first
            if first:
                first = False
                return {"type": "http.request", "body": b'{"model": "m", ', "more_body": True}
            await asyncio.sleep(3600)      # the rest never comes

        async def send(message):
            sent.append(message)

        async def app_never_called(scope, receive, send):
            raise AssertionError("the app must not see a body that never arrived")

        guard = _BodyLimit(app_never_called, max_bytes=1000, timeout_s=0.2)
        await guard({"type": "http", "method": "POST", "path": "/v1/completions", "headers": []}, receive, send)

    asyncio.run(asyncio.wait_for(slow_loris(), 30))
    assert sent[0]["status"] == 408 and json.loads(sent[1]["body"])["error"]["code"] == "body_timeout"


def test_pre_rendered_stream_chunks_are_the_json_of_their_objects():
    """The SSE hot path renders a chunk from a pre-rendered envelope and a templated choice: the
    text must be exactly ``json.dumps`` of the object (quotes, backslashes, control characters,
    non-ASCII, lone surrogates from byte-level pieces)."""
    import asyncio

    from r1lab.serve.app import ServeState, ServeConfig, _Generation, _text_choice
    from r1lab.serve.loop import Handle
    from r1lab.serve.protocol import ChatCompletionRequest

    texts = ['a "quoted" \\ back', "tab\there\nnew", "\x00\x1f\x7f", "日本語 ∑ 😀", "</think>", "\ud800", ""]
    for include_usage in (False, True):
        body = ChatCompletionRequest(model="m", messages=SHORT, stream=True,
                                     stream_options={"include_usage": include_usage})
        gen = _Generation(ServeState(ServeConfig(model_name='m "x" ☃')), body,
                          Handle(asyncio.new_event_loop(), [1], None, True, 0.0), 3, True, True)
        for text in texts:
            for delta in ({"content": text}, {"reasoning_content": text, "reasoning": text}):
                choice = {"index": 2, "delta": delta, "logprobs": None, "finish_reason": None}
                assert json.loads(_text_choice(2, delta)) == choice
                assert _text_choice(2, delta) == json.dumps(choice, ensure_ascii=False)
                chunk = gen._chunk([_text_choice(2, delta)])
                assert chunk.startswith("data: ") and chunk.endswith("\n\n")
                want = {"id": gen.id, "object": "chat.completion.chunk", "created": gen.created, "model": 'm "x" ☃',
                        "choices": [choice]}
                if include_usage:
                    want["usage"] = None
                assert json.loads(chunk[6:]) == want
        usage = {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}
        assert json.loads(gen._chunk([], usage=usage)[6:])["usage"] == usage
