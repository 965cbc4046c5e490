"""The FastAPI app: OpenAI-compatible routes over the engine loop (issue 14; SPEC §8, §10).

Routes: ``POST /v1/chat/completions`` and ``POST /v1/completions`` (streamed as SSE or not),
``GET /v1/models[/{id}]``, ``GET /health`` (alive), ``GET /ready`` (model loaded and not
draining), ``GET /metrics`` (Prometheus), ``GET /`` (the web chat) and ``/static/…``.

Chat responses carry the thinking in ``message.reasoning_content`` and ``message.reasoning``
(vLLM's newer name; the same text), the answer in ``content``; stream deltas carry reasoning
pieces first, then content. The split is ``r1lab.reasoning``'s one rule, started in
reasoning when the rendered prompt opened ``<think>`` (the R1 template always does).

Guards, outermost first (pure ASGI, before any body is parsed):
``_ApiKeys`` — ``Authorization: Bearer KEY`` on ``/v1/*`` when keys are configured (SHA-256
digests compared with ``hmac.compare_digest``, every key tried, so timing reveals nothing);
``_BodyLimit`` — POST bodies are read here, counting bytes as they arrive (a lying or absent
``Content-Length`` does not help), 413 past ``max_body_bytes``, 408 if the body does not
arrive within ``body_timeout_s`` (slow-loris), then replayed to the app.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import math
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..reasoning import (ANSWER_KIND, ReasoningStreamParser, ids_open_reasoning, prompt_opens_reasoning,
                         reasoning_tag_ids, split_reasoning)
from .errors import APIError, install_handlers, send_error, sse_error
from .loop import DELTAS, DONE, ERROR, EngineLoop, Handle
from .metrics import ServeMetrics
from .protocol import DEFAULT_EFFORT_BUDGETS, ChatCompletionRequest, CompletionRequest, known_fields

STATIC_DIR = Path(__file__).resolve().parent / "static"
DEFAULT_MAX_BODY_BYTES = 2**20
BODY_TIMEOUT_S = 30.0          # the whole request body must arrive within this (slow-loris guard)
NEG_INF_LOGPROB = -9999.0      # JSON has no -inf (vLLM's stand-in)
FINISH_REASONS = {"stop": "stop", "length": "length", "cancelled": "abort"}
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}   # nginx: do not buffer the stream
PLACEHOLDER_PAGE = ("<!doctype html><title>r1lab serve</title><h1>r1lab serve</h1>"
                    "<p>The web chat is not installed; the API is at <code>/v1</code>.</p>")


@dataclass
class ServeConfig:
    model_name: str
    api_keys: tuple[str, ...] = ()
    max_queue: int = 256
    max_model_len: int | None = None         # None: the model's context
    effort_budgets: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_EFFORT_BUDGETS))
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    body_timeout_s: float = BODY_TIMEOUT_S
    static_dir: Path = STATIC_DIR


class ServeState:
    """What the routes share: the config, metrics, and once loaded the tokenizer and the loop."""

    def __init__(self, config: ServeConfig):
        self.config = config
        self.metrics = ServeMetrics(config.model_name)
        self.loop: EngineLoop | None = None      # or an EngineProcess (the same surface)
        self.tokenizer = None
        self.tag_ids: tuple[int, int] | None = None
        self.max_model_len = 0
        self.created = int(time.time())
        self._token_info: dict[int, tuple[str, list[int]]] = {}

    def attach(self, tokenizer, loop, context_len: int) -> None:
        """The model is loaded (``loop``: an ``EngineLoop`` or ``EngineProcess``): start answering."""
        self.max_model_len = min(context_len, self.config.max_model_len or context_len)
        self.tokenizer = tokenizer
        self.tag_ids = reasoning_tag_ids(tokenizer)
        self.loop = loop

    @property
    def draining(self) -> bool:
        return self.loop is not None and self.loop.draining

    def token_info(self, tid: int) -> tuple[str, list[int]]:
        """(text, UTF-8 bytes) of one token, cached."""
        info = self._token_info.get(tid)
        if info is None:
            info = self._token_info[tid] = _token_text_bytes(self.tokenizer, tid)
        return info


# --------------------------------------------------------------------------- the app
def create_app(config: ServeConfig) -> FastAPI:
    state = ServeState(config)
    app = FastAPI(title="r1lab serve", version="1", summary="OpenAI-compatible API with the thinking split out "
                  "(reasoning_content), a thinking budget and Prometheus metrics.")
    app.state.r1 = state
    install_handlers(app, known_fields(), on_error=state.metrics.failure)

    @app.exception_handler(_ClientGone)
    async def _gone(request: Request, exc: _ClientGone):
        return Response(status_code=499)    # nginx's "client closed request"; never read

    @app.get("/health", summary="Liveness: the process answers and its engine loop runs")
    async def health():
        if state.loop is not None and state.loop.dead is not None:
            raise APIError(503, f"the engine loop stopped: {state.loop.dead}", code="engine_dead")
        return {"status": "ok"}

    @app.get("/ready", summary="Readiness: the model is loaded and the server is not draining")
    async def ready():
        if state.loop is None:
            raise APIError(503, "the model is loading", code="loading")
        if state.draining:
            raise APIError(503, "the server is shutting down", code="draining")
        if state.loop.dead is not None:
            raise APIError(503, f"the engine loop stopped: {state.loop.dead}", code="engine_dead")
        return {"status": "ready", "model": config.model_name}

    @app.get("/metrics", summary="Prometheus metrics (r1lab:…)")
    async def metrics():
        return Response(generate_latest(state.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/v1/models", summary="The served model")
    async def list_models():
        return {"object": "list", "data": [_model_card(state)]}

    @app.get("/v1/models/{model_id:path}", summary="One model")
    async def get_model(model_id: str):
        _check_model(state, model_id)
        return _model_card(state)

    @app.post("/v1/chat/completions", summary="Chat completion (reasoning_content + content)")
    async def chat_completions(body: ChatCompletionRequest, request: Request):
        _check_serving(state, body.model)
        tok = state.tokenizer
        messages = [m.for_template() for m in body.messages]
        try:
            text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        except ValueError as e:      # TokenizerError: the template's own checks
            raise APIError(400, str(e), param="messages", code="invalid_value") from None
        return await _generate(state, request, body, tok.encode(text), "messages", chat=True,
                               opens_reasoning=prompt_opens_reasoning(text))

    @app.post("/v1/completions", summary="Text completion (a prompt string or token ids)")
    async def completions(body: CompletionRequest, request: Request):
        _check_serving(state, body.model)
        if isinstance(body.prompt, str):
            ids, opened = _encode_text(state.tokenizer, body.prompt), prompt_opens_reasoning(body.prompt)
        else:
            vocab = state.tokenizer.vocab_size
            bad = next((t for t in body.prompt if t >= vocab), None)
            if bad is not None:
                raise APIError(400, f"prompt: token id {bad} is outside the vocabulary (0..{vocab - 1})",
                               param="prompt", code="invalid_value")
            ids = list(body.prompt)
            opened = ids_open_reasoning(state.tag_ids, ids)
        return await _generate(state, request, body, ids, "prompt", chat=False, opens_reasoning=opened)

    @app.get("/", include_in_schema=False)
    async def index():
        page = config.static_dir / "index.html"
        return FileResponse(page) if page.is_file() else HTMLResponse(PLACEHOLDER_PAGE)

    if config.static_dir.is_dir():
        from fastapi.staticfiles import StaticFiles

        app.mount("/static", StaticFiles(directory=config.static_dir), name="static")

    # outermost last: keys are checked before any body is read
    app.add_middleware(_BodyLimit, max_bytes=config.max_body_bytes, timeout_s=config.body_timeout_s,
                       on_error=state.metrics.failure)
    app.add_middleware(_ApiKeys, keys=config.api_keys, on_error=state.metrics.failure)
    return app


def _model_card(state: ServeState) -> dict:
    card = {"id": state.config.model_name, "object": "model", "created": state.created, "owned_by": "r1lab"}
    if state.max_model_len:
        card["max_model_len"] = state.max_model_len
    return card


def _check_model(state: ServeState, name: str) -> None:
    if name != state.config.model_name:
        raise APIError(404, f"The model `{name[:200]}` does not exist (this server serves "
                            f"`{state.config.model_name}`)", param="model", code="model_not_found")


def _check_serving(state: ServeState, model: str) -> None:
    if state.loop is None:
        raise APIError(503, "the model is loading; retry shortly", code="loading", headers={"Retry-After": "1"})
    _check_model(state, model)
    if state.draining:
        raise APIError(503, "the server is shutting down; retry on another replica", code="draining")


def _encode_text(tok, text: str) -> list[int]:
    """A text prompt's ids exactly as ``Engine`` encodes one: BOS first unless the text starts with it."""
    ids = tok.encode(text)
    bos = getattr(tok, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos] + ids
    return ids


# ------------------------------------------------------------------------- generation
async def _generate(state: ServeState, request: Request, body, ids: list[int], prompt_param: str, *,
                    chat: bool, opens_reasoning: bool):
    from ..engine import SamplingError, SamplingParams

    arrival = time.monotonic()
    ctx = state.max_model_len
    if len(ids) >= ctx:
        raise APIError(400, f"the prompt has {len(ids)} tokens; this model's context is {ctx} tokens "
                            f"(prompt + completion)", param=prompt_param, code="context_length_exceeded")
    room = ctx - len(ids)
    limit = body.token_limit
    try:
        params = SamplingParams(
            n=body.n or 1, temperature=1.0 if body.temperature is None else body.temperature,   # < GREEDY_EPS: argmax
            top_p=1.0 if body.top_p is None else body.top_p, top_k=body.top_k or 0, min_p=body.min_p or 0.0,
            max_tokens=room if limit is None else min(limit, room), stop=body.stop_list(), seed=body.seed,
            logprobs=body.engine_logprobs, max_reasoning_tokens=body.reasoning_budget(state.config.effort_budgets))
    except SamplingError as e:
        first = str(e).split(" ", 1)[0]
        raise APIError(400, str(e), param=first if first in known_fields() else None, code="invalid_value") from None
    handle = Handle(asyncio.get_running_loop(), ids, params, bool(body.stream), arrival)
    state.loop.submit(handle)          # 429 queue full, 503 draining
    try:
        event = await _race_disconnect(request, handle.queue.get())
    except BaseException:
        state.loop.cancel(handle)
        raise
    if event[0] == ERROR:
        handle.finished = True
        raise event[1]
    gen = _Generation(state, body, handle, len(ids), chat, opens_reasoning)
    if body.stream:
        return _SSEResponse(gen.sse(), media_type="text/event-stream", headers=SSE_HEADERS)
    try:
        event = await _race_disconnect(request, handle.queue.get())
    except BaseException:
        state.loop.cancel(handle)
        raise
    handle.finished = True
    if event[0] == ERROR:
        raise event[1]
    return JSONResponse(gen.full_response(event[1]))


class _ClientGone(Exception):
    """The client disconnected before its answer was ready (answered with nothing: nobody listens)."""


async def _race_disconnect(request: Request, awaitable):
    """Await ``awaitable`` unless the client disconnects first (then raise _ClientGone)."""
    task = asyncio.ensure_future(awaitable)
    listener = asyncio.ensure_future(_wait_disconnect(request))
    try:
        done, _ = await asyncio.wait({task, listener}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        listener.cancel()
        if not task.done():
            task.cancel()
    if task in done:
        return task.result()
    raise _ClientGone()


async def _wait_disconnect(request: Request) -> None:
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


class _SSEResponse(StreamingResponse):
    """A stream that ends (and cancels its generation) as soon as the client disconnects,
    whether or not a write is pending (Starlette notices only on a failed write with ASGI 2.4)."""

    async def __call__(self, scope, receive, send):
        async with anyio.create_task_group() as tg:
            async def stream():
                try:
                    await self.stream_response(send)
                except OSError:        # the client went away mid-write
                    pass
                tg.cancel_scope.cancel()

            tg.start_soon(stream)
            await self.listen_for_disconnect(receive)
            tg.cancel_scope.cancel()


class _Generation:
    """Builds the response (whole or streamed) of one accepted request."""

    def __init__(self, state: ServeState, body, handle: Handle, prompt_tokens: int, chat: bool,
                 opens_reasoning: bool):
        self.state, self.body, self.handle = state, body, handle
        self.prompt_tokens, self.chat, self.opens_reasoning = prompt_tokens, chat, opens_reasoning
        self.id = ("chatcmpl-" if chat else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())
        self.model = state.config.model_name
        self.logprobs = body.wants_logprobs
        # every chunk is this envelope around its choices (rendered once, not per token)
        head = json.dumps({"id": self.id, "object": "chat.completion.chunk" if chat else "text_completion",
                           "created": self.created, "model": self.model}, ensure_ascii=False)
        self._head = "data: " + head[:-1] + ', "choices": ['
        self._tail = "]" + (', "usage": null' if body.include_usage else "") + "}\n\n"

    # ---------------------------------------------------------------- whole response
    def full_response(self, final) -> dict:
        choices = []
        for o in final.outputs:
            reason = FINISH_REASONS.get(o.finish_reason, o.finish_reason)
            if self.chat:
                reasoning, answer = split_reasoning(o.text, self.opens_reasoning)
                choice = {"index": o.index,
                          "message": {"role": "assistant", "content": answer, "reasoning_content": reasoning,
                                      "reasoning": reasoning},
                          "logprobs": self._chat_logprobs(o.token_ids, o.logprobs, o.top_logprobs)
                          if self.logprobs else None,
                          "finish_reason": reason}
            else:
                choice = {"index": o.index, "text": o.text,
                          "logprobs": self._legacy_logprobs(o.token_ids, o.logprobs, o.top_logprobs)
                          if self.logprobs else None,
                          "finish_reason": reason}
            choice["reasoning_budget_hit"] = o.reasoning_budget_hit
            choices.append(choice)
        return {"id": self.id, "object": "chat.completion" if self.chat else "text_completion",
                "created": self.created, "model": self.model, "choices": choices, "usage": self._usage(final)}

    def _usage(self, final) -> dict:
        completion = sum(len(o.token_ids) for o in final.outputs)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
                "total_tokens": self.prompt_tokens + completion,
                "completion_tokens_details": {"reasoning_tokens": sum(o.reasoning_tokens for o in final.outputs)}}

    # ---------------------------------------------------------------- stream
    async def sse(self):
        h, loop = self.handle, self.state.loop
        n = self.body.n or 1
        parsers = [ReasoningStreamParser(started_in_reasoning=self.opens_reasoning) for _ in range(n)]
        try:
            if self.chat:
                yield "".join(self._chunk([{"index": i, "delta": {"role": "assistant", "content": ""},
                                            "logprobs": None, "finish_reason": None}]) for i in range(n))
            while True:
                events = [await h.queue.get()]
                while not h.queue.empty():      # a slow reader catches up in one write
                    events.append(h.queue.get_nowait())
                out = []
                for kind, payload in events:
                    if kind == DELTAS:
                        for d, tops in payload:
                            out += self._delta_chunks(d, tops, parsers[d.index])
                    elif kind == DONE:
                        h.finished = True
                        if self.body.include_usage:
                            out.append(self._chunk([], usage=self._usage(payload)))
                        out.append("data: [DONE]\n\n")
                    elif kind == ERROR:
                        h.finished = True
                        self.state.metrics.failure(payload.status)
                        out.append(sse_error(payload))
                if out:
                    yield "".join(out)
                if h.finished:
                    return
        finally:
            if not h.finished:      # the client left (or the server is stopping): free the slot
                loop.cancel(h)

    def _chunk(self, choices: list, usage: dict | None = None) -> str:
        """One SSE event: ``data: {id, object, created, model, choices[, usage]}``."""
        body = ", ".join(c if isinstance(c, str) else json.dumps(c, ensure_ascii=False) for c in choices)
        if usage is None:
            return self._head + body + self._tail
        return self._head + body + "], \"usage\": " + json.dumps(usage) + "}\n\n"

    def _delta_chunks(self, d, tops, parser: ReasoningStreamParser) -> list[str]:
        i = d.index
        lp = None
        if self.logprobs and d.token_ids:
            lp = (self._chat_logprobs if self.chat else self._legacy_logprobs)(d.token_ids, d.logprobs, tops)
        chunks = []
        if self.chat:
            pieces = parser.feed(d.text)
            if d.finish_reason is not None:
                pieces += parser.finish()
            deltas = [{"content": p.text} if p.kind == ANSWER_KIND else
                      {"reasoning_content": p.text, "reasoning": p.text} for p in pieces]
            if lp is not None and not deltas:
                deltas = [{}]
            for j, delta in enumerate(deltas):
                if lp is None:       # the hot path: a text delta, rendered without a dict
                    chunks.append(self._chunk([_text_choice(i, delta)]))
                    continue
                last = j == len(deltas) - 1
                chunks.append(self._chunk([{"index": i, "delta": delta, "logprobs": lp if last else None,
                                            "finish_reason": None}]))
        elif d.text or lp is not None:
            chunks.append(self._chunk([{"index": i, "text": d.text, "logprobs": lp, "finish_reason": None}]))
        if d.finish_reason is not None:
            end = {"index": i, "logprobs": None, "finish_reason": FINISH_REASONS.get(d.finish_reason, d.finish_reason),
                   "reasoning_budget_hit": d.reasoning_budget_hit}
            end.update({"delta": {}} if self.chat else {"text": ""})
            chunks.append(self._chunk([end]))
        return chunks

    # ---------------------------------------------------------------- logprobs
    def _chat_logprobs(self, token_ids, logprobs, tops) -> dict:
        info = self.state.token_info
        content = []
        for k, (tid, lp) in enumerate(zip(token_ids, logprobs)):
            text, raw = info(tid)
            alts = []
            if tops is not None and k < len(tops):
                for aid, alp in tops[k].items():
                    atext, araw = info(aid)
                    alts.append({"token": atext, "logprob": _finite(alp), "bytes": araw})
            content.append({"token": text, "logprob": _finite(lp), "bytes": raw, "top_logprobs": alts})
        return {"content": content}

    def _legacy_logprobs(self, token_ids, logprobs, tops) -> dict:
        info = self.state.token_info
        texts = [info(t)[0] for t in token_ids]
        offsets, at = [], 0
        for t in texts:
            offsets.append(at)
            at += len(t)
        top = [{info(aid)[0]: _finite(alp) for aid, alp in tops[k].items()} if tops and k < len(tops) else {}
               for k in range(len(token_ids))]
        return {"tokens": texts, "token_logprobs": [_finite(x) for x in logprobs], "top_logprobs": top,
                "text_offset": offsets}


def _text_choice(index: int, delta: dict) -> str:
    """``{"index": i, "delta": {...}, "logprobs": null, "finish_reason": null}`` as JSON text
    (the same text ``json.dumps`` gives the dict)."""
    fields = ", ".join(f'"{k}": {json.dumps(v, ensure_ascii=False)}' for k, v in delta.items())
    return f'{{"index": {index}, "delta": {{{fields}}}, "logprobs": null, "finish_reason": null}}'


def _finite(x: float) -> float:
    return NEG_INF_LOGPROB if math.isnan(x) or x < NEG_INF_LOGPROB else float(x)


def _token_text_bytes(tok, tid: int) -> tuple[str, list[int]]:
    """A token's text and its exact bytes (a byte-level piece may hold part of a UTF-8 character)."""
    from ..tokenizer import _byte_level_table

    piece = tok.id_to_token(tid) or ""
    table = _byte_level_table()
    if piece and all(c in table for c in piece):
        raw = bytes(table[c] for c in piece)
    else:                     # an added token (<think>, BOS, …) is its own text
        raw = tok.decode([tid]).encode("utf-8")
    return raw.decode("utf-8", errors="replace"), list(raw)


# ------------------------------------------------------------------------- ASGI guards
class _ApiKeys:
    def __init__(self, app, keys: tuple[str, ...], on_error=None):
        self.app, self.on_error = app, on_error
        self.digests = [hashlib.sha256(k.encode()).digest() for k in keys]

    async def __call__(self, scope, receive, send):
        if (self.digests and scope["type"] == "http" and scope["path"].startswith("/v1")
                and scope["method"] != "OPTIONS" and not self._authorized(scope)):
            if self.on_error:
                self.on_error(401)
            await send_error(send, APIError(401, "invalid or missing API key (send Authorization: Bearer KEY)",
                                            code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"}))
            return
        await self.app(scope, receive, send)

    def _authorized(self, scope) -> bool:
        value = b""
        for k, v in scope["headers"]:
            if k == b"authorization":
                value = v
                break
        scheme, _, token = value.decode("latin-1").partition(" ")
        given = hashlib.sha256(token.strip().encode("utf-8", "surrogateescape")).digest()
        ok = False
        for d in self.digests:        # every key, no early exit
            ok |= hmac.compare_digest(given, d)
        return ok and scheme.lower() == "bearer"


class _BodyLimit:
    def __init__(self, app, max_bytes: int, timeout_s: float, on_error=None):
        self.app, self.max_bytes, self.timeout_s, self.on_error = app, max_bytes, timeout_s, on_error

    async def _fail(self, send, err: APIError) -> None:
        if self.on_error:
            self.on_error(err.status)
        await send_error(send, err)

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] not in ("POST", "PUT", "PATCH"):
            await self.app(scope, receive, send)
            return
        too_big = APIError(413, f"the request body is larger than {self.max_bytes} bytes", code="body_too_large")
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > self.max_bytes:
                await self._fail(send, too_big)
                return
        chunks, size = [], 0
        try:
            with anyio.fail_after(self.timeout_s):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        return
                    body = message.get("body", b"")
                    size += len(body)
                    if size > self.max_bytes:
                        await self._fail(send, too_big)
                        return
                    chunks.append(body)
                    if not message.get("more_body", False):
                        break
        except TimeoutError:
            await self._fail(send, APIError(408, f"the request body did not arrive within {self.timeout_s:g} s",
                                            code="body_timeout"))
            return
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
