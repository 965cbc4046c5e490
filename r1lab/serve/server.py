"""`r1lab serve MODEL`: load the model, run uvicorn, drain on SIGTERM (issue 14).

Order of events:
1. user errors (a missing MODEL, a bad --max-model-len, an unknown device) are raised as
   ``ServeError`` before anything binds, so the CLI prints one line and exits 2;
2. the socket is bound (``--port 0`` picks a free port) and uvicorn starts; meanwhile a thread
   loads the weights. ``/health`` answers at once, ``/ready`` and ``/v1/*`` say 503 until the
   model is loaded;
   The model is loaded by the engine process (``engine_proc``: the engine and the HTTP server
   run in two processes, so neither waits for the other's Python); this process loads only the
   config and the tokenizer;
3. once both are done the server prints ``r1lab serve: ready on http://HOST:PORT (model NAME)``;
4. if the engine process dies, running requests get a 500 (an SSE error event when streaming),
   the server stops and exits 1, so a supervisor (systemd, Kubernetes) restarts it;
5. SIGTERM (or Ctrl-C): stop accepting (new requests 503, ``/ready`` 503), let the running
   requests finish for up to ``--drain-timeout`` seconds, cancel what is left, exit 0. A
   second signal exits at once.
"""

from __future__ import annotations

import logging
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field

log = logging.getLogger("r1lab.serve")
SHUTDOWN_GRACE_S = 2.0     # after draining: time for the last responses to flush before uvicorn cancels them


class ServeError(ValueError):
    """A user error found before the server starts (one line)."""


@dataclass
class ServeOptions:
    model: str
    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: tuple[str, ...] = ()
    served_model_name: str | None = None
    max_num_seqs: int = 64
    max_queue: int = 256
    max_model_len: int | None = None
    kv_cache_bytes: int = 256 * 2**20
    spec_mtp: bool = False
    effort_budgets: dict[str, int] = field(default_factory=dict)
    max_body_bytes: int = 2**20
    drain_timeout: float = 30.0
    client_timeout: float = 30.0     # a request's headers, and then its body, must arrive within this
    device: str = "auto"
    dtype: str | None = None
    threads: int | None = None       # the engine's torch CPU threads (None: all cores but one on CPU)


def default_model_name(model: str) -> str:
    """The MODEL argument's last path part (``runs/r1/final`` -> ``final``; ``r1zero-base`` as is)."""
    parts = [p for p in model.replace("\\", "/").split("/") if p]
    return parts[-1] if parts else model


def run_server(opts: ServeOptions) -> int:
    import torch  # noqa: F401  (the heavy import before the socket binds)

    from ..checkpoint import CheckpointError, load_config, require_checkpoint
    from ..generate import GenerateError, resolve_device
    from .app import ServeConfig, create_app
    from .engine_proc import EngineProcess, EngineSpec, default_threads

    try:
        model_dir = str(require_checkpoint(opts.model))
        cfg = load_config(model_dir)
    except CheckpointError as e:
        raise ServeError(str(e)) from None
    ctx = cfg.max_position_embeddings
    if opts.max_model_len is not None and opts.max_model_len > ctx:
        raise ServeError(f"--max-model-len {opts.max_model_len} exceeds the model's context ({ctx})")
    if opts.max_num_seqs < 1 or opts.max_queue < 0:
        raise ServeError("--max-num-seqs must be >= 1 and --max-queue >= 0")
    if opts.threads is not None and opts.threads < 1:
        raise ServeError("--threads must be >= 1")
    if not opts.client_timeout > 0:
        raise ServeError("--client-timeout must be > 0 seconds")
    try:
        device, _ = resolve_device(opts.device, opts.dtype)
    except GenerateError as e:
        raise ServeError(str(e)) from None
    from ..engine import EngineConfig, EngineError
    max_batch_tokens = max(4096, opts.max_num_seqs)
    try:     # checked here, before anything binds; the engine process builds its own
        EngineConfig(kv_cache_bytes=opts.kv_cache_bytes, max_num_seqs=opts.max_num_seqs,
                     max_batch_tokens=max_batch_tokens, spec_mtp=opts.spec_mtp)
    except EngineError as e:
        raise ServeError(str(e)) from None
    spec = EngineSpec(model_dir=model_dir, device=opts.device, dtype=opts.dtype, kv_cache_bytes=opts.kv_cache_bytes,
                      max_num_seqs=opts.max_num_seqs, max_batch_tokens=max_batch_tokens, spec_mtp=opts.spec_mtp,
                      threads=opts.threads or default_threads(device))

    name = opts.served_model_name or default_model_name(opts.model)
    config = ServeConfig(model_name=name, api_keys=tuple(opts.api_keys), max_queue=opts.max_queue,
                         max_model_len=opts.max_model_len, effort_budgets=dict(opts.effort_budgets),
                         max_body_bytes=opts.max_body_bytes, body_timeout_s=opts.client_timeout)
    app = create_app(config)
    state = app.state.r1
    try:
        sock = _bind(opts.host, opts.port)
    except OSError as e:
        raise ServeError(f"cannot listen on {opts.host}:{opts.port}: {e.strerror or e}") from None
    host, port = sock.getsockname()[:2]
    url_host = f"[{host}]" if ":" in host else host

    import uvicorn

    server = _Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                    http=_header_timeout_protocol(opts.client_timeout),
                                    timeout_graceful_shutdown=SHUTDOWN_GRACE_S),
                     state=state, drain_timeout=opts.drain_timeout)
    ready = _ReadyLine(f"r1lab serve: ready on http://{url_host}:{port} (model {name})")
    server.on_started = ready.one_done

    def load():
        try:
            from ..tokenizer import load_tokenizer

            proc = EngineProcess(spec, state.metrics, opts.max_queue)
            proc.on_dead = engine_died
            holder.append(proc)
            proc.start()                      # the model loads in the engine process
            state.attach(load_tokenizer(model_dir), proc, ctx)
            ready.one_done()
        except Exception as e:   # noqa: BLE001 — reported as one line, then the server stops
            server.load_error = e
            server.should_exit = True

    holder: list = []        # the engine process, once created (stopped below even if it never got ready)
    died: list = []

    def engine_died(e: BaseException) -> None:
        died.append(e)
        print(f"r1lab serve: {e}; stopping", file=sys.stderr, flush=True)
        server.should_exit = True

    loader = threading.Thread(target=load, name="r1lab-load", daemon=True)
    loader.start()
    try:
        server.run(sockets=[sock])
    finally:
        loader.join(1.0)
        for proc in holder:
            proc.stop()
    if server.load_error is not None:
        e = server.load_error
        if isinstance(e, (ServeError, ValueError, RuntimeError, OSError)):
            raise ServeError(f"loading {opts.model}: {e}") from None
        raise e
    return 1 if died else 0


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto=IPPROTO_TCP, not 0: asyncio sets TCP_NODELAY only on sockets that say so; without it every
    # response after the first on a kept-alive connection (and every SSE chunk) waits ~40 ms (Nagle
    # + delayed ACK)
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _header_timeout_protocol(timeout_s: float, base=None):
    """uvicorn's HTTP protocol (``base``; default h11, the strict parser: it refuses headers over
    64 KiB and HTTP/1.1 requests without Host, which httptools lets through) that closes a connection whose
    request headers are not complete ``timeout_s`` after it opened or after its previous response
    ended (uvicorn has no such timeout: headers sent one byte a minute would hold the connection
    forever; nginx's ``client_header_timeout``). A request being served is never cut."""
    if base is None:
        from uvicorn.protocols.http.h11_impl import H11Protocol as base

    class Protocol(base):
        def connection_made(self, transport):
            super().connection_made(transport)
            self._r1_idle_since = self.loop.time()
            self._r1_timer = self.loop.call_later(timeout_s, self._r1_check)

        def on_response_complete(self):
            super().on_response_complete()
            self._r1_idle_since = self.loop.time()

        def connection_lost(self, exc):
            self._r1_timer.cancel()
            super().connection_lost(exc)

        def _r1_check(self):
            if self.transport.is_closing():
                return
            cycle = self.cycle
            busy = cycle is not None and not cycle.response_complete
            waited = self.loop.time() - self._r1_idle_since
            if not busy and waited >= timeout_s:
                self.transport.close()
                return
            self._r1_timer = self.loop.call_later(timeout_s if busy else timeout_s - waited, self._r1_check)

    return Protocol


class _ReadyLine:
    """Printed once both the socket listens and the model is loaded."""

    def __init__(self, line: str):
        self.line, self._left, self._lock = line, 2, threading.Lock()

    def one_done(self) -> None:
        with self._lock:
            self._left -= 1
            if self._left == 0:
                print(self.line, flush=True)


def _make_server_class():
    import uvicorn

    class Server(uvicorn.Server):
        """uvicorn, with SIGTERM/SIGINT draining instead of an immediate shutdown, and exit 0."""

        def __init__(self, config, state, drain_timeout: float):
            super().__init__(config)
            self.state, self.drain_timeout = state, drain_timeout
            self.on_started = None
            self.load_error: BaseException | None = None
            self._draining = False

        async def startup(self, sockets=None):
            await super().startup(sockets=sockets)
            if self.started and self.on_started is not None:
                self.on_started()

        def handle_exit(self, sig, frame):
            # not appended to _captured_signals: uvicorn would re-raise it and the exit status
            # would be the signal's, not 0
            if self._draining or self.state.loop is None:
                self.force_exit = self._draining
                self.should_exit = True
                return
            self._draining = True
            loop = self.state.loop
            loop.start_drain()
            print(f"r1lab serve: {signal.Signals(sig).name}: draining {loop.in_flight} request(s) "
                  f"(up to {self.drain_timeout:g} s)", file=sys.stderr, flush=True)

            def drain():
                if not loop.wait_idle(self.drain_timeout):
                    print(f"r1lab serve: drain timeout: cancelling {loop.in_flight} request(s)", file=sys.stderr,
                          flush=True)
                    loop.cancel_all()
                    loop.wait_idle(SHUTDOWN_GRACE_S)
                self.should_exit = True

            threading.Thread(target=drain, name="r1lab-drain", daemon=True).start()

    return Server


class _Server:
    """Built lazily so importing this module does not import uvicorn."""

    def __new__(cls, *args, **kwargs):
        return _make_server_class()(*args, **kwargs)
