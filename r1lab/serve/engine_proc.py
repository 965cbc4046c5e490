"""The engine in its own process, the HTTP server in another (vLLM V1's AsyncLLM / EngineCore split).

Why: the engine's scheduler, sampler and model code are Python, and so are the HTTP handlers,
the SSE writes and the JSON of every chunk. In one process they take turns on the GIL: under
64 streams the engine thread waited for the event loop (and the event loop for the engine)
and the server made 0.5-0.65 of the offline engine's tokens/s (benchmarks/RESULTS.md). In two
processes each runs on its own core.

The parent (``EngineProcess``, in the server) has the surface of ``EngineLoop``: ``submit``,
``cancel``, ``start_drain``, ``wait_idle``, ``cancel_all``, ``stop``, ``in_flight``, ``dead``,
``draining``, ``capacity``. Admission (429 queue full, 503 draining) is decided there at once,
as before. The child (``_child_main``) loads the model, builds the ``Engine`` and runs the same
``EngineLoop`` as the in-process server, whose ``deliver`` sends each round's events — with the
metric updates of the round — through one pipe message; a reader thread in the parent applies
the metrics to the real Prometheus registry and hands the events to the requests' queues.

Messages (pickled over a ``multiprocessing`` pipe):
  parent -> child: ("submit", key, prompt_ids, SamplingParams, stream, arrival), ("cancel", key),
                   ("cancel_all",), ("stop",)
  child -> parent: ("ready",) or ("load_error", message) once; then ("events", [(key, event)],
                   metric_ops) per round; event = (ACCEPTED, rid) | (DELTAS, items) |
                   (DONE, RequestOutput) | (ERROR, (status, message, param, code, headers))

The child ignores SIGINT and SIGTERM (a Ctrl-C in the terminal, or systemd's stop signal to the
whole group, must not kill the engine under a draining server): the parent decides when it
ends. When the parent dies the pipe closes and the child exits. ``arrival`` is
``time.monotonic()``, one clock for both processes on Linux, so latencies are measured from the
HTTP request's arrival as before.
"""

from __future__ import annotations

import itertools
import logging
import multiprocessing
import os
import signal
import threading
import time
from dataclasses import dataclass

from .errors import APIError
from .loop import DONE, ERROR, Admission, EngineLoop, Handle, deliver_to_event_loops
from .metrics import ServeMetrics

log = logging.getLogger("r1lab.serve")
READY_TIMEOUT_S = 600.0       # loading a large checkpoint may take minutes
STOP_TIMEOUT_S = 10.0


@dataclass
class EngineSpec:
    """What the engine process needs to build its engine (all picklable)."""

    model_dir: str
    device: str = "auto"
    dtype: str | None = None
    kv_cache_bytes: int = 256 * 2**20
    max_num_seqs: int = 64
    max_batch_tokens: int = 4096
    spec_mtp: bool = False
    threads: int | None = None      # torch CPU threads (None: leave torch's default)


class EngineProcessError(RuntimeError):
    """The engine process could not start (the message is the child's one line)."""


class EngineProcess(Admission):
    """The parent's handle on the engine process (see the module docstring)."""

    def __init__(self, spec: EngineSpec, metrics: ServeMetrics, max_queue: int):
        super().__init__(spec.max_num_seqs + max_queue)
        self.spec, self.metrics = spec, metrics
        self._send_lock = threading.Lock()
        self._handles: dict[int, Handle] = {}     # key -> handle, until DONE or ERROR arrives
        self._keys = itertools.count()
        self._stopping = False
        self.on_dead = None      # called (from the reader thread) with the error when the child dies
        ctx = multiprocessing.get_context("spawn")   # never fork a process that holds torch and threads
        self._conn, child_conn = ctx.Pipe()
        self._proc = ctx.Process(target=_child_main, args=(child_conn, spec), name="r1lab-engine", daemon=True)
        self._child_conn = child_conn
        self._reader = threading.Thread(target=self._read, name="r1lab-engine-reader", daemon=True)

    # ------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the child and wait until its model is loaded (EngineProcessError if it cannot)."""
        self._proc.start()
        self._child_conn.close()          # the child's end lives in the child now
        deadline = time.monotonic() + READY_TIMEOUT_S
        while not self._conn.poll(0.2):
            if not self._proc.is_alive():
                raise EngineProcessError(f"the engine process exited while loading (exit code {self._proc.exitcode})")
            if time.monotonic() > deadline:
                self._proc.kill()
                raise EngineProcessError(f"the engine process did not load the model within {READY_TIMEOUT_S:g} s")
        try:
            msg = self._conn.recv()
        except (EOFError, OSError):
            self._proc.join(5)
            raise EngineProcessError(f"the engine process exited while loading (exit code {self._proc.exitcode})"
                                     ) from None
        if msg[0] == "load_error":
            self._proc.join(5)
            raise EngineProcessError(msg[1])
        self._reader.start()

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        self._stopping = True
        self._send(("stop",))
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join(5)
        self._conn.close()

    # ------------------------------------------------------------ the EngineLoop surface
    def submit(self, handle: Handle) -> None:
        with self._cv:
            self._admit()
            handle.key = next(self._keys)
            self._handles[handle.key] = handle
        self._send(("submit", handle.key, handle.prompt, handle.params, handle.stream, handle.arrival))

    def cancel(self, handle: Handle) -> None:
        if handle.key in self._handles:
            self._send(("cancel", handle.key))

    def cancel_all(self) -> None:
        self._send(("cancel_all",))

    # ------------------------------------------------------------ internals
    def _send(self, msg) -> None:
        try:
            with self._send_lock:
                self._conn.send(msg)
        except (OSError, ValueError):     # the child is gone: the reader reports it
            pass

    def _read(self) -> None:
        """The reader thread: one message per engine round."""
        while True:
            try:
                msg = self._conn.recv()
            except (EOFError, OSError):
                break
            if msg[0] != "events":
                continue
            _, items, ops = msg
            apply_metric_ops(self.metrics, ops)
            self._dispatch(items)
        if not self._stopping:
            self._proc.join(5)
            e = RuntimeError(f"the engine process exited (exit code {self._proc.exitcode})")
            log.error("%s", e)
            with self._cv:
                self.dead = e
                pending, self._handles = list(self._handles.values()), {}
                self._busy = 0           # every request in flight ends here
                self._cv.notify_all()
            err = APIError(500, f"the engine loop stopped: {e}", code="engine_dead")
            deliver_to_event_loops([(h, (ERROR, err)) for h in pending])
            if self.on_dead is not None:
                self.on_dead(e)

    def _dispatch(self, items: list) -> None:
        out = []
        for key, event in items:
            h = self._handles.get(key)
            if h is None:
                continue
            if event[0] == ERROR:
                status, message, param, code, headers = event[1]
                event = (ERROR, APIError(status, message, param=param, code=code, headers=headers))
            out.append((h, event))
        self._finish_all(out)

    def _finish_all(self, out: list) -> None:
        ended = [h for h, event in out if event[0] in (DONE, ERROR)]
        if ended:
            with self._cv:
                for h in ended:
                    if self._handles.pop(h.key, None) is not None:
                        self._busy -= 1
                self._cv.notify_all()
        deliver_to_event_loops(out)


# ------------------------------------------------------------------------- metrics over the pipe
class _Op:
    __slots__ = ("ops", "name")

    def __init__(self, ops: list, name: str):
        self.ops, self.name = ops, name

    def inc(self, value: float = 1) -> None:
        self.ops.append((self.name, "inc", value))

    def observe(self, value: float) -> None:
        self.ops.append((self.name, "observe", value))

    def set(self, value: float) -> None:
        self.ops.append((self.name, "set", value))


class MetricsRecorder:
    """Stands in for ``ServeMetrics`` in the engine process: records what ``EngineLoop`` does to
    the metrics, to be replayed on the real registry by the parent (``apply_metric_ops``)."""

    NAMES = ("running", "waiting", "kv_usage", "prompt_tokens", "generation_tokens", "reasoning_tokens", "ttft",
             "itl", "e2e")

    def __init__(self):
        self.ops: list = []
        for name in self.NAMES:
            setattr(self, name, _Op(self.ops, name))

    def success(self, finished_reason: str) -> None:
        self.ops.append(("success", "call", finished_reason))

    def take(self) -> list:
        ops = list(self.ops)
        self.ops.clear()
        return ops


def apply_metric_ops(metrics: ServeMetrics, ops: list) -> None:
    for name, method, value in ops:
        if method == "call":
            getattr(metrics, name)(value)
        else:
            getattr(getattr(metrics, name), method)(value)


# ------------------------------------------------------------------------- the child
def _child_main(conn, spec: EngineSpec) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        engine = _build(spec)
    except Exception as e:   # noqa: BLE001 — one line to the parent
        msg = str(e) if isinstance(e, (ValueError, RuntimeError, OSError)) else f"{type(e).__name__}: {e}"
        try:
            conn.send(("load_error", msg))
        finally:
            conn.close()
        return
    handles: dict[int, Handle] = {}
    send_lock = threading.Lock()
    recorder = MetricsRecorder()

    def deliver(out: list) -> None:
        items = []
        for h, event in out:
            if event[0] == ERROR:
                e = event[1]
                event = (ERROR, (e.status, e.message, e.param, e.code, dict(e.headers or {})))
            if event[0] in (DONE, ERROR):
                handles.pop(h.key, None)
            items.append((h.key, event))
        with send_lock:
            conn.send(("events", items, recorder.take()))

    # admission is the parent's: the child takes every request it is sent
    loop = EngineLoop(engine, recorder, max_queue=None, deliver=deliver)
    loop.start()
    with send_lock:
        conn.send(("ready",))
    try:
        while True:
            try:
                msg = conn.recv()
            except (EOFError, OSError):     # the parent is gone
                break
            kind = msg[0]
            if kind == "submit":
                _, key, prompt, params, stream, arrival = msg
                h = Handle(None, prompt, params, stream, arrival, key=key)
                handles[key] = h
                loop.submit(h)
            elif kind == "cancel":
                h = handles.get(msg[1])
                if h is not None:
                    loop.cancel(h)
            elif kind == "cancel_all":
                loop.cancel_all()
            elif kind == "stop":
                break
    finally:
        loop.stop()
        conn.close()


def _build(spec: EngineSpec):
    import torch

    from ..engine import Engine, EngineConfig
    from ..generate import load_model_and_tokenizer

    if spec.threads:
        torch.set_num_threads(spec.threads)
    model, tok = load_model_and_tokenizer(spec.model_dir, None, spec.device, spec.dtype)
    if spec.spec_mtp and not getattr(model, "mtp_layers", None):
        raise ValueError(f"--spec-mtp needs a model with an MTP module; {spec.model_dir} has none")
    return Engine(model, tok, EngineConfig(kv_cache_bytes=spec.kv_cache_bytes, max_num_seqs=spec.max_num_seqs,
                                           max_batch_tokens=spec.max_batch_tokens, spec_mtp=spec.spec_mtp))


def default_threads(device: str) -> int | None:
    """torch CPU threads for the engine process: on a CPU device, one core is left to the HTTP
    process (vLLM's advice for its CPU backend); None elsewhere (torch's default)."""
    if str(device) != "cpu":
        return None
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return max(1, cores - 1)

