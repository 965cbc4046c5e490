"""The engine loop: one background thread owns the ``Engine`` (issue 14: "HTTP handlers only
enqueue, stream and cancel").

The engine is not thread-safe, so only this thread touches it. HTTP handlers (on the
asyncio event loop) call ``submit`` and ``cancel``, which put work in a lock-protected inbox
and wake the thread. The thread, in a loop:

1. takes the inbox: adds new requests to the engine (``add_request``; a refusal — prompt too
   long for the cache, … — becomes a 400 for that request) and cancels requests whose client
   left (the engine frees their blocks at the next step);
2. runs ``engine.step()`` while any request is unfinished, else sleeps on the condition;
3. routes the step's ``StreamDelta``s and the final outputs of finished requests (released
   from the engine at once) with ONE call of ``deliver`` per step (per step, not per token: the
   hand-off must not cost throughput). The default ``deliver`` puts them on the per-request
   ``asyncio.Queue``s with one ``call_soon_threadsafe`` per event loop; in the engine process
   (``engine_proc``) it sends them to the HTTP process instead;
4. updates the metrics (gauges, token counters, latencies).

Admission control: at most ``max_num_seqs + max_queue`` requests are in flight (submitted and
not finished): ``max_num_seqs`` generating, ``max_queue`` waiting for a slot; past that
``submit`` raises a 429 with ``Retry-After``. (Counted in requests, decided at once on the
asyncio side, so simultaneous arrivals are judged exactly; a request with n > 1 takes n
slots in the engine, so with such requests more may wait than ``max_queue``.) While draining
(SIGTERM) ``submit`` raises a 503; ``wait_idle`` lets the server wait for the running requests.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from .errors import APIError
from .metrics import ServeMetrics

log = logging.getLogger("r1lab.serve")

RETRY_AFTER_S = 1          # Retry-After of a 429 (queue full)
FINISH_ABORT = "abort"     # metrics label of a cancelled request (vLLM's name)

# events put on a request's queue
ACCEPTED, DELTAS, DONE, ERROR = "accepted", "deltas", "done", "error"


@dataclass
class Handle:
    """One request as the HTTP side sees it: its event queue and the loop it lives on."""

    aloop: asyncio.AbstractEventLoop | None     # None in the engine process (no HTTP side there)
    prompt: list[int]
    params: object            # SamplingParams
    stream: bool
    arrival: float            # time.monotonic() when the HTTP request arrived
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    rid: int | None = None
    key: int | None = None    # the request's number between the HTTP and the engine process
    finished: bool = False    # DONE or ERROR delivered (set on the asyncio side)
    # loop-thread bookkeeping
    seen: list[int] = field(default_factory=list)      # tokens counted so far, per completion
    last_token: list[float] = field(default_factory=list)
    first_token: float | None = None


class Admission:
    """What ``EngineLoop`` and ``engine_proc.EngineProcess`` share: admission (``capacity``
    requests in flight, then 429; 503 while draining or dead), counted under ``_cv``, and
    waiting for the requests in flight to end."""

    def __init__(self, capacity: int | None):
        self._cv = threading.Condition()
        self._busy = 0                           # requests submitted and not finished
        self.capacity = capacity                 # None: no limit (the engine process; the HTTP side admits)
        self.draining = False
        self.dead: BaseException | None = None

    def _admit(self) -> None:
        """Count one more request in flight, or raise the APIError that refuses it (hold ``_cv``)."""
        if self.dead is not None:
            raise APIError(503, f"the engine loop stopped: {self.dead}", code="engine_dead")
        if self.draining:
            raise APIError(503, "the server is shutting down; retry on another replica", code="draining",
                           headers={"Retry-After": str(RETRY_AFTER_S)})
        if self.capacity is not None and self._busy >= self.capacity:
            raise APIError(429, f"the server is full ({self._busy} requests running or waiting); retry later",
                           code="queue_full", headers={"Retry-After": str(RETRY_AFTER_S)})
        self._busy += 1

    def start_drain(self) -> None:
        with self._cv:
            self.draining = True
            self._cv.notify_all()

    def wait_idle(self, timeout: float | None) -> bool:
        """Wait until no request is in flight; False if ``timeout`` passed first."""
        end = None if timeout is None else time.monotonic() + timeout
        with self._cv:
            while self._busy:
                left = None if end is None else end - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._cv.wait(left)
            return True

    @property
    def in_flight(self) -> int:
        return self._busy


class EngineLoop(Admission):
    def __init__(self, engine, metrics: ServeMetrics, max_queue: int | None, deliver=None):
        super().__init__(None if max_queue is None else engine.config.max_num_seqs + max_queue)
        self.engine, self.metrics, self.max_queue = engine, metrics, max_queue
        self._deliver = deliver or deliver_to_event_loops
        self._inbox: list[Handle] = []
        self._cancels: list[Handle] = []
        self._live: dict[int, Handle] = {}       # rid -> handle (loop thread only)
        self._stop = False
        self.steps = 0
        self._thread = threading.Thread(target=self._run, name="r1lab-engine-loop", daemon=True)

    # ------------------------------------------------------------ any thread
    def start(self) -> None:
        self._thread.start()

    def submit(self, handle: Handle) -> None:
        with self._cv:
            self._admit()
            self._inbox.append(handle)
            self._cv.notify()

    def cancel(self, handle: Handle) -> None:
        """The client left: stop generating for it (safe to call twice, or after it finished)."""
        with self._cv:
            self._cancels.append(handle)
            self._cv.notify()

    def cancel_all(self) -> None:
        with self._cv:
            self._cancels.append(None)    # None = every live request
            self._cv.notify()

    def stop(self, timeout: float = 5.0) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # ------------------------------------------------------------ the loop thread
    def _run(self) -> None:
        try:
            while True:
                with self._cv:
                    while not (self._inbox or self._cancels or self._live or self._stop):
                        self._cv.wait()
                    if self._stop:
                        break
                    inbox, self._inbox = self._inbox, []
                    cancels, self._cancels = self._cancels, []
                out: list = []          # (handle, event) of this round, delivered at once
                try:
                    self._take(inbox, cancels, out)
                    if self._live:
                        self._step(out)
                finally:             # what was decided is delivered, even if the loop is dying
                    self._post(out)
        except BaseException as e:   # noqa: BLE001 — the loop must report, not vanish
            log.exception("the engine loop stopped")
            self._die(e)

    def _take(self, inbox: list[Handle], cancels: list, out) -> None:
        gone = {id(h) for h in cancels if h is not None}
        for h in inbox:
            if id(h) in gone:            # the client left before its request reached the engine
                self._finish(h, out, (ERROR, APIError(499, "client closed the request")))
                continue
            try:
                h.rid = self.engine.add_request(h.prompt, h.params, stream=h.stream)
            except Exception as e:   # noqa: BLE001 — the engine's refusals are the request's fault
                self._finish(h, out, (ERROR, _as_api_error(e)))
                continue
            self._live[h.rid] = h
            self.metrics.prompt_tokens.inc(len(h.prompt))
            out.append((h, (ACCEPTED, h.rid)))
        if None in cancels:
            for rid in list(self._live):
                self.engine.cancel(rid)
        for h in cancels:
            if h is not None and h.rid is not None and h.rid in self._live:
                self.engine.cancel(h.rid)

    def _step(self, out) -> None:
        eng, m = self.engine, self.metrics
        try:
            deltas = eng.step()
        except Exception as e:   # noqa: BLE001 — fail what is running, keep serving
            log.exception("engine step failed")
            err = APIError(500, f"generation failed: {type(e).__name__}: {e}", code="engine_error")
            for rid, h in list(self._live.items()):
                del self._live[rid]
                self._finish(h, out, (ERROR, err))
            self._recover()
            return
        self.steps += 1
        now = time.monotonic()
        by_rid: dict[int, list] = defaultdict(list)
        for d in deltas:
            by_rid[d.request_id].append(d)
        running = 0
        for rid, h in list(self._live.items()):
            ro = eng.output(rid)
            if ro.outputs:
                running += 1
                self._count_tokens(h, ro, now)
            mine = by_rid.get(rid)
            if mine:
                # top logprobs are not in StreamDelta: the newest entries of the completion's list
                items = []
                for d in mine:
                    o = ro.outputs[d.index]
                    k = len(d.token_ids)
                    tops = o.top_logprobs[len(o.top_logprobs) - k:] if o.top_logprobs is not None and k else None
                    items.append((d, tops))
                out.append((h, (DELTAS, items)))
            if eng.requests[rid].done:
                final = eng.output(rid, release=True)
                del self._live[rid]
                running -= 1
                self._record_finish(h, final, now)
                self._finish(h, out, (DONE, final))
        m.running.set(max(running, 0))
        m.waiting.set(len(eng.waiting) + len(self._inbox))
        cache = eng.cache
        m.kv_usage.set(1.0 - cache.free_blocks() / cache.num_blocks)

    def _count_tokens(self, h: Handle, ro, now: float) -> None:
        m = self.metrics
        if not h.seen:
            h.seen = [0] * len(ro.outputs)
            h.last_token = [now] * len(ro.outputs)
        new_total = 0
        for i, o in enumerate(ro.outputs):
            new = len(o.token_ids) - h.seen[i]
            if new <= 0:
                continue
            if h.first_token is None:
                h.first_token = now
                m.ttft.observe(now - h.arrival)
            elif h.seen[i]:
                m.itl.observe((now - h.last_token[i]) / new)
            h.seen[i] += new
            h.last_token[i] = now
            new_total += new
        if new_total:
            m.generation_tokens.inc(new_total)

    def _record_finish(self, h: Handle, final, now: float) -> None:
        m = self.metrics
        m.e2e.observe(now - h.arrival)
        m.reasoning_tokens.inc(sum(o.reasoning_tokens for o in final.outputs))
        reasons = {o.finish_reason for o in final.outputs}
        if "cancelled" in reasons:
            m.success(FINISH_ABORT)
        else:
            m.success("length" if "length" in reasons else "stop")

    def _finish(self, h: Handle, out, event) -> None:
        out.append((h, event))
        with self._cv:
            self._busy -= 1
            self._cv.notify_all()

    def _post(self, out: list) -> None:
        if out:
            self._deliver(out)

    def _recover(self) -> None:
        """After a failed step: cancel everything the engine holds (the next step frees it) so the
        next request starts clean; if even that step fails, the engine is dead."""
        eng = self.engine
        for rid in list(eng.requests):
            eng.cancel(rid)
        try:
            eng.step()
        except Exception as e:   # noqa: BLE001
            raise RuntimeError(f"the engine could not recover after a failed step: {e}") from e
        for rid in list(eng.requests):
            if eng.requests[rid].done:
                eng.output(rid, release=True)

    def _die(self, e: BaseException) -> None:
        out: list = []
        with self._cv:
            self.dead = e
            pending = self._inbox + list(self._live.values())
            self._inbox, self._live = [], {}
        err = APIError(500, f"the engine loop stopped: {type(e).__name__}: {e}", code="engine_dead")
        for h in pending:
            self._finish(h, out, (ERROR, err))
        self._post(out)


def deliver_to_event_loops(items: list) -> None:
    """From any thread: hand each request its events of one round, with one
    ``call_soon_threadsafe`` per event loop."""
    by_loop: dict[asyncio.AbstractEventLoop, list] = defaultdict(list)
    for h, event in items:
        by_loop[h.aloop].append((h, event))
    for aloop, mine in by_loop.items():
        try:
            aloop.call_soon_threadsafe(_put_events, mine)
        except RuntimeError:     # the event loop is closed (server shutting down)
            pass


def _put_events(items: list) -> None:
    """On the event loop: put each request's events on its queue."""
    for h, event in items:
        h.queue.put_nowait(event)


def _as_api_error(e: Exception) -> APIError:
    from ..engine import EngineError, SamplingError
    from ..engine.cache import CacheError

    if isinstance(e, (EngineError, SamplingError, CacheError)):
        msg = str(e)
        first = msg.split(" ", 1)[0]
        param = first if first in _ENGINE_PARAMS else None
        return APIError(400, msg, param=param, code="invalid_value")
    return APIError(500, f"{type(e).__name__}: {e}", code="internal_error")


_ENGINE_PARAMS = {"n", "temperature", "top_p", "top_k", "min_p", "max_tokens", "seed", "logprobs", "stop",
                  "max_reasoning_tokens"}
