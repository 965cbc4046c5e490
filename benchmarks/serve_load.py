"""Serving under load: concurrent streaming clients against ``r1lab serve`` vs the offline engine.

The server (``r1lab serve MODEL --port 0``, a subprocess on 127.0.0.1) gets ``C`` concurrent
streaming clients (``--clients 32 64``), each sending ``--requests`` chat completions one after
another (``stream: true``, usage in the last chunk); the offline side is ``Engine.generate``'s
loop in this process (``add_request`` for every prompt, ``step()`` until done, with a timestamp
when each request gets its first token) on the same model, the same chat prompts, the same
sampling parameters and seeds (request i: seed i), the same engine config as the server's
(``--kv-cache-bytes``, ``max_num_seqs`` = C: the engine then keeps C requests running as the
C clients do). Both sides are warmed up, runs alternate (server, offline, server, …) so a slow
spell of the machine hits both, and each figure is the median of ``--runs`` (>= 3) runs; every
run is printed.

The offline engine runs twice per run: with torch's default threads (every core: what
``r1lab generate`` gets) and with the server's engine-process threads (``r1lab serve`` gives its
engine all cores but one and leaves one to the HTTP process and, here, the clients): the first
ratio is the whole cost of serving on this machine, the second the cost of the HTTP layer.

Figures: generated tokens/s (server: sum of ``usage.completion_tokens`` over the wall time from
the first request sent to the last stream closed; offline: tokens over the loop's wall time),
the ratio server/offline, TTFT p50/p99 (server: from sending the request to the first chunk
carrying reasoning or content text; offline: from the start of the step that admitted the
request — the first C at once, then each as a slot frees up, which is when its client would
send it — to the end of the step that gave it its first token), per-run CPU of the server (its HTTP
and engine processes) and of the client, and errors (HTTP status, SSE error events, a stream without [DONE],
no token text); requests whose completion-token count differs from the offline one (same
seed) are counted apart, as a check that both sides did the same work. Also printed: the
median of the runs' own ratios (each pair ran back to back, so it shrugs off a slow spell).

The client is a minimal asyncio HTTP/1.1 client (one keep-alive connection per client, chunked
transfer decoding, SSE ``data:`` lines): it shares the 2 CPUs with the server, so it must cost
as little as possible — openai's client parses every chunk into pydantic models.

    python benchmarks/serve_load.py [--model r1zero-base] [--clients 32 64] [--requests 2] \\
        [--runs 5] [--max-tokens 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import platform
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time

MIN_RUNS = 3
READY = "r1lab serve: ready on http://"


# ------------------------------------------------------------------------------ workload
def make_prompts(count: int) -> list[list[dict]]:
    """Chat prompts from the shipped base's task (digit sums), as many as asked (cycled)."""
    from r1lab.tasks import get_task

    task = get_task("chain_add", terms=10, digits=1, mod=4, solution="prefix", wording="digit_sum")
    exs = list(itertools.islice(task.examples("test"), count))
    return [[{"role": "user", "content": task.prompt(ex, "plain")}] for ex in exs]


# ------------------------------------------------------------------------------ the server
class Server:
    def __init__(self, model: str, max_num_seqs: int, kv_cache_bytes: int, extra: list[str] = ()):
        cmd = [sys.executable, "-m", "r1lab.cli", "serve", model, "--port", "0", "--max-num-seqs", str(max_num_seqs),
               "--max-queue", "1024", "--kv-cache-bytes", str(kv_cache_bytes), *extra]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith(READY):
            self.proc.kill()
            raise SystemExit(f"the server did not start: {line!r} {self.proc.stderr.read()[-2000:]}")
        self.url = line[len(READY):].split()[0]
        self.host, port = self.url.rsplit(":", 1)
        self.port = int(port)
        self.model = line.rsplit("(model ", 1)[1].rstrip(")\n")
        # keep draining stderr so the server never blocks on a full pipe
        threading.Thread(target=self.proc.stderr.read, daemon=True).start()

    def cpu_seconds(self) -> float | None:
        """User + system CPU time of the server: the HTTP process and its engine process (Linux
        /proc; None elsewhere)."""
        total = 0.0
        try:
            pids = [self.proc.pid] + [int(p) for p in os.listdir("/proc") if p.isdigit() and _ppid(int(p)) == self.proc.pid]
            for pid in pids:
                fields = _stat(pid)
                if fields is not None:
                    total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except OSError:
            return None
        return total

    def close(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def _stat(pid: int) -> list[str] | None:
    try:
        return open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def _ppid(pid: int) -> int | None:
    fields = _stat(pid)
    return None if fields is None else int(fields[1])


class HTTPError(Exception):
    pass


async def _read_chunked(reader):
    """Yield the body pieces of a chunked response (stops after the terminal 0-size chunk)."""
    while True:
        size_line = await reader.readline()
        if not size_line:
            raise HTTPError("connection closed mid-body")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            while (await reader.readline()) not in (b"\r\n", b""):   # trailers
                pass
            return
        data = await reader.readexactly(size + 2)
        yield data[:-2]


async def stream_chat(conn, host: str, port: int, body: bytes) -> tuple[float | None, int, int]:
    """One streaming chat request on a keep-alive connection: (TTFT, completion tokens, errors)."""
    reader, writer = conn
    t0 = time.perf_counter()
    writer.write(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                 f"Content-Length: {len(body)}\r\nAccept: text/event-stream\r\n\r\n".encode() + body)
    await writer.drain()
    status = await reader.readline()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode("latin-1").partition(":")
        headers[k.strip().lower()] = v.strip()
    code = int(status.split()[1])
    if headers.get("transfer-encoding") != "chunked":
        await reader.readexactly(int(headers.get("content-length", 0)))
        return None, 0, 1
    ttft, tokens, errors, done, buf = None, 0, int(code != 200), False, b""
    async for piece in _read_chunked(reader):
        buf += piece
        while b"\n\n" in buf:
            event, buf = buf.split(b"\n\n", 1)
            if not event.startswith(b"data: "):
                continue
            data = event[6:]
            if data == b"[DONE]":
                done = True
                continue
            obj = json.loads(data)
            if "error" in obj:
                errors += 1
                continue
            if ttft is None:
                for c in obj.get("choices", ()):
                    d = c.get("delta", {})
                    if d.get("content") or d.get("reasoning_content"):
                        ttft = time.perf_counter() - t0
                        break
            if obj.get("usage"):
                tokens = obj["usage"]["completion_tokens"]
    return ttft, tokens, errors + int(not done)


async def server_run(srv: Server, prompts, clients: int, max_tokens: int, temperature: float):
    """``clients`` connections; client c sends prompts c, c + clients, … one after another."""
    bodies = [json.dumps({"model": srv.model, "messages": p, "stream": True, "max_tokens": max_tokens,
                          "temperature": temperature, "seed": i,
                          "stream_options": {"include_usage": True}}).encode() for i, p in enumerate(prompts)]
    conns = [await asyncio.open_connection(srv.host, srv.port) for _ in range(clients)]
    ttfts, tokens, errors = [None] * len(prompts), [0] * len(prompts), [0]

    async def client(c: int):
        for i in range(c, len(prompts), clients):
            try:
                ttfts[i], tokens[i], e = await stream_chat(conns[c], srv.host, srv.port, bodies[i])
                errors[0] += e
            except Exception as ex:   # noqa: BLE001 — counted, reported
                errors[0] += 1
                print(f"  client {c} request {i}: {type(ex).__name__}: {ex}", flush=True)

    cpu0, client0 = srv.cpu_seconds(), time.process_time()
    t = time.perf_counter()
    await asyncio.gather(*(client(c) for c in range(clients)))
    dt = time.perf_counter() - t
    cpu1, client1 = srv.cpu_seconds(), time.process_time()
    for _, w in conns:
        w.close()
    return {"tok_s": sum(tokens) / dt, "tokens": tokens, "ttft": [x for x in ttfts if x is not None],
            "errors": errors[0] + sum(x is None for x in ttfts), "seconds": dt,
            "server_cpu_s": None if cpu0 is None else cpu1 - cpu0, "client_cpu_s": client1 - client0}


# ------------------------------------------------------------------------------ offline
def offline_run(model, tok, prompts, clients: int, max_tokens: int, temperature: float, kv_cache_bytes: int):
    from r1lab.engine import Engine, EngineConfig, SamplingParams

    eng = Engine(model, tok, EngineConfig(kv_cache_bytes=kv_cache_bytes, max_num_seqs=clients,
                                          max_batch_tokens=max(4096, clients)))
    params = [SamplingParams(temperature=temperature, max_tokens=max_tokens, seed=i) for i in range(len(prompts))]
    t = time.perf_counter()
    rids = [eng.add_request(p, sp) for p, sp in zip(prompts, params)]   # Engine.generate's loop, timed
    admitted: dict[int, float] = {}   # start of the step that admitted the request: its "arrival"
    ttft: dict[int, float] = {}
    while eng.has_unfinished():
        start = time.perf_counter()
        eng.step()
        now = time.perf_counter()
        for r in rids:
            if r in ttft:
                continue
            req = eng.requests[r]
            if req.admitted and r not in admitted:
                admitted[r] = start
            if req.seqs and req.seqs[0].out.token_ids:
                ttft[r] = now - admitted[r]
    dt = time.perf_counter() - t
    tokens = [len(eng.output(r, release=True).outputs[0].token_ids) for r in rids]
    return {"tok_s": sum(tokens) / dt, "tokens": tokens, "ttft": [ttft[r] for r in rids], "errors": 0,
            "seconds": dt}


# ------------------------------------------------------------------------------ report
def pct(xs, q):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, max(0, round(q / 100 * (len(xs) - 1))))]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="r1zero-base")
    ap.add_argument("--clients", type=int, nargs="+", default=[32, 64])
    ap.add_argument("--requests", type=int, default=8,
                    help="requests per client per run, sent one after another (default 8: mostly steady state, "
                         "not one wave's ramp-up and tail)")
    ap.add_argument("--runs", type=int, default=MIN_RUNS)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--kv-cache-bytes", type=int, default=256 * 2**20)
    ap.add_argument("--serve-args", default="", help="extra flags for r1lab serve, e.g. '--threads 2'")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if args.runs < MIN_RUNS:
        ap.error(f"--runs must be >= {MIN_RUNS}, got {args.runs}")

    import torch

    import r1lab
    from r1lab.checkpoint import require_checkpoint
    from r1lab.generate import load_model_and_tokenizer
    from r1lab.serve.engine_proc import default_threads

    serve_args = shlex.split(args.serve_args)
    all_threads = torch.get_num_threads()
    engine_threads = (int(serve_args[serve_args.index("--threads") + 1]) if "--threads" in serve_args
                      else default_threads("cpu"))

    model, tok = load_model_and_tokenizer(str(require_checkpoint(args.model)), None, "auto", None)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    import fastapi
    import uvicorn
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, torch threads "
          f"{torch.get_num_threads()}; python {platform.python_version()}, torch {torch.__version__}, "
          f"fastapi {fastapi.__version__}, uvicorn {uvicorn.__version__}, r1lab {r1lab.__version__} ({commit})")
    print(f"model {args.model}; chat prompts, stream, temperature {args.temperature}, max_tokens {args.max_tokens}, "
          f"seed per request; {args.requests} requests per client; {args.runs} interleaved runs per side")
    print(f"offline: torch's default {all_threads} threads; offline/{engine_threads}t: the server engine process's "
          f"{engine_threads} thread(s) (the rest of the CPU is the HTTP process's and the clients')\n", flush=True)
    figures = {"commit": commit, "torch": torch.__version__, "runs": args.runs, "max_tokens": args.max_tokens,
               "requests_per_client": args.requests}
    rows = []
    for clients in args.clients:
        prompts = make_prompts(clients * args.requests)
        srv = Server(args.model, clients, args.kv_cache_bytes, shlex.split(args.serve_args))
        try:
            # warm-up: one short round on each side
            asyncio.run(server_run(srv, prompts[:clients], clients, 8, args.temperature))
            offline_run(model, tok, prompts[:clients], clients, 8, args.temperature, args.kv_cache_bytes)
            torch.set_num_threads(engine_threads)
            offline_run(model, tok, prompts[:clients], clients, 8, args.temperature, args.kv_cache_bytes)
            torch.set_num_threads(all_threads)
            runs_s, runs_o, runs_t = [], [], []
            for r in range(args.runs):
                s = asyncio.run(server_run(srv, prompts, clients, args.max_tokens, args.temperature))
                o = offline_run(model, tok, prompts, clients, args.max_tokens, args.temperature, args.kv_cache_bytes)
                torch.set_num_threads(engine_threads)
                try:
                    t = offline_run(model, tok, prompts, clients, args.max_tokens, args.temperature,
                                    args.kv_cache_bytes)
                finally:
                    torch.set_num_threads(all_threads)
                runs_t.append(t)
                # same seeds: the same completions unless batching rounds a sampled draw differently
                s["mismatch"] = mismatch = sum(a != b for a, b in zip(s["tokens"], o["tokens"]))
                runs_s.append(s)
                runs_o.append(o)
                cpu = "" if s["server_cpu_s"] is None else f"server CPU {s['server_cpu_s']:.2f} s, "
                print(f"clients {clients:>3} run {r + 1}: server {s['tok_s']:7.0f} tok/s ({sum(s['tokens'])} tokens, "
                      f"{s['seconds']:.2f} s, {cpu}client CPU {s['client_cpu_s']:.2f} s, TTFT p50 {pct(s['ttft'], 50) * 1e3:.0f} ms p99 "
                      f"{pct(s['ttft'], 99) * 1e3:.0f} ms, errors {s['errors']}) | offline {o['tok_s']:7.0f} tok/s "
                      f"({sum(o['tokens'])} tokens, {o['seconds']:.2f} s, TTFT p50 {pct(o['ttft'], 50) * 1e3:.0f} ms "
                      f"p99 {pct(o['ttft'], 99) * 1e3:.0f} ms) | offline/{engine_threads}t {t['tok_s']:7.0f} tok/s | "
                      f"ratio {s['tok_s'] / o['tok_s']:.2f}, /{engine_threads}t {s['tok_s'] / t['tok_s']:.2f}"
                      + (f" [{mismatch} token-count mismatches]" if mismatch else ""), flush=True)
        finally:
            srv.close()
        med = lambda runs, key: statistics.median(key(x) for x in runs)  # noqa: E731
        row = {"clients": clients,
               "server_tok_s": med(runs_s, lambda x: x["tok_s"]), "offline_tok_s": med(runs_o, lambda x: x["tok_s"]),
               "server_ttft_p50_ms": med(runs_s, lambda x: pct(x["ttft"], 50)) * 1e3,
               "server_ttft_p99_ms": med(runs_s, lambda x: pct(x["ttft"], 99)) * 1e3,
               "offline_ttft_p50_ms": med(runs_o, lambda x: pct(x["ttft"], 50)) * 1e3,
               "offline_ttft_p99_ms": med(runs_o, lambda x: pct(x["ttft"], 99)) * 1e3,
               "errors": sum(x["errors"] for x in runs_s),
               "token_count_mismatches": sum(x["mismatch"] for x in runs_s),
               "server_runs": [x["tok_s"] for x in runs_s], "offline_runs": [x["tok_s"] for x in runs_o],
               "engine_threads": engine_threads, "offline_same_threads_tok_s": med(runs_t, lambda x: x["tok_s"]),
               "offline_same_threads_runs": [x["tok_s"] for x in runs_t]}
        row["ratio"] = row["server_tok_s"] / row["offline_tok_s"]
        row["ratio_same_threads"] = row["server_tok_s"] / row["offline_same_threads_tok_s"]
        # each run's pair ran back to back: the median of the pairs' ratios shrugs off a slow spell
        row["median_run_ratio"] = statistics.median(a / b for a, b in zip(row["server_runs"], row["offline_runs"]))
        rows.append(row)
        figures[f"clients_{clients}"] = row
    print(f"\nmedians of {args.runs} runs")
    print(f"{'clients':>8}{'server tok/s':>14}{'offline tok/s':>15}{'ratio':>7}{'run ratio':>10}"
          f"{f'offline/{engine_threads}t':>12}{'ratio':>7}"
          f"{'TTFT p50/p99 ms: server':>25}{'offline':>12}{'errors':>8}")
    for r in rows:
        print(f"{r['clients']:>8}{r['server_tok_s']:>14.0f}{r['offline_tok_s']:>15.0f}{r['ratio']:>7.2f}"
              f"{r['median_run_ratio']:>10.2f}{r['offline_same_threads_tok_s']:>12.0f}{r['ratio_same_threads']:>7.2f}{r['server_ttft_p50_ms']:>18.0f}/{r['server_ttft_p99_ms']:<6.0f}"
              f"{r['offline_ttft_p50_ms']:>6.0f}/{r['offline_ttft_p99_ms']:<6.0f}{r['errors']:>6}")
    print("RESULT " + " ".join(f"c{r['clients']}_ratio={r['ratio']:.2f} c{r['clients']}_run_ratio="
                               f"{r['median_run_ratio']:.2f} c{r['clients']}_ratio_{engine_threads}t="
                               f"{r['ratio_same_threads']:.2f} c{r['clients']}_errors={r['errors']}"
                               for r in rows))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
