"""Errors in OpenAI's shape ``{"error": {"message", "type", "param", "code"}}`` for every status.

Status mapping (one rule, documented in the README's "Serve" section):

* 400 ``invalid_request_error`` — a value is out of range or not allowed (``temperature: 5``,
  ``reasoning_effort: "extreme"``, an unknown role, a previous ``reasoning_content`` sent
  back, a prompt longer than the context), or the body is not valid JSON;
* 422 ``invalid_request_error`` — the body does not fit the schema: a required field is
  missing or a field has the wrong JSON type (``"n": "2"``, ``"messages": {}``);
* 401 ``authentication_error``, 404 ``not_found_error`` (unknown model or route), 405, 408
  (body not received in time), 413 (body too large), 429 ``rate_limit_error`` (queue full,
  with ``Retry-After``), 503 ``service_unavailable_error`` (loading or draining), 500
  ``server_error``.

``code`` is a short string (``invalid_value``, ``missing_field``, ``invalid_api_key``,
``model_not_found``, ``queue_full``, …) as OpenAI's API does; ``param`` names the field
(``temperature``, ``messages[2].content``) or is null.
"""

from __future__ import annotations

import json
import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("r1lab.serve")

ERROR_TYPES = {400: "invalid_request_error", 401: "authentication_error", 403: "permission_error",
               404: "not_found_error", 405: "invalid_request_error", 408: "timeout_error",
               413: "invalid_request_error", 415: "invalid_request_error", 422: "invalid_request_error",
               429: "rate_limit_error", 500: "server_error", 503: "service_unavailable_error"}
MAX_ERROR_MESSAGE_CHARS = 1000   # never echo a huge input back


class APIError(Exception):
    """An error answered with ``status`` in OpenAI's shape."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.headers = headers or {}


def error_body(status: int, message: str, param: str | None = None, code: str | None = None) -> dict:
    if len(message) > MAX_ERROR_MESSAGE_CHARS:
        message = message[:MAX_ERROR_MESSAGE_CHARS] + "…"
    return {"error": {"message": message, "type": ERROR_TYPES.get(status, _phrase(status)), "param": param,
                      "code": code}}


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_") + "_error"
    except ValueError:
        return "error"


def error_response(err: APIError) -> JSONResponse:
    return JSONResponse(error_body(err.status, err.message, err.param, err.code), status_code=err.status,
                        headers=err.headers)


def sse_error(err: APIError) -> str:
    """A mid-stream error: one SSE event; the stream then ends (vLLM's create_streaming_error_response)."""
    return f"data: {json.dumps(error_body(err.status, err.message, err.param, err.code))}\n\n"


async def send_error(send, err: APIError) -> None:
    """Answer from a pure ASGI middleware (before the app runs)."""
    body = json.dumps(error_body(err.status, err.message, err.param, err.code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in err.headers.items()]
    await send({"type": "http.response.start", "status": err.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


# ----------------------------------------------------------------------- validation errors
def validation_error(errors: list[dict], known_fields: set[str]) -> APIError:
    """Pydantic/FastAPI errors -> one APIError: 422 for schema errors (missing field, wrong
    JSON type), 400 for everything else; ``param`` is the path of the first error."""
    schema = [e for e in errors if _is_schema_error(e)]
    first = schema[0] if schema and len(schema) == len(errors) else next(e for e in errors if not _is_schema_error(e))
    status = 422 if _is_schema_error(first) else 400
    param = _param(first.get("loc", ()), known_fields)
    etype = first.get("type", "")
    if etype == "json_invalid":
        return APIError(400, f"the body is not valid JSON: {first.get('msg', '')}", code="invalid_json")
    if etype == "model_attributes_type" and param is None:
        return APIError(422, "the body must be a JSON object (send Content-Type: application/json)",
                        code="invalid_type")
    msg = str(first.get("msg", "invalid value"))
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    where = f"{param}: " if param else ""
    code = "missing_field" if etype == "missing" else ("invalid_type" if status == 422 else "invalid_value")
    return APIError(status, where + msg, param=param, code=code)


def _is_schema_error(e: dict) -> bool:
    t = e.get("type", "")
    return t == "missing" or t.endswith("_type")


def _param(loc, known: set[str]) -> str | None:
    out = ""
    for part in loc:
        if part == "body" and not out:
            continue
        if isinstance(part, int):
            out += f"[{part}]"
        elif isinstance(part, str) and part in known:
            out += ("." if out else "") + part
        else:          # a union member's tag ("str", "list[str]") or a validator's name
            continue
    return out or None


# ------------------------------------------------------------------------- handlers
def install_handlers(app: FastAPI, known_fields: set[str], on_error=None) -> None:
    """Every error the app answers, FastAPI's and Starlette's own included, in OpenAI's shape.
    ``on_error(status)`` is called for each (the failure counter)."""

    def respond(err: APIError) -> JSONResponse:
        if on_error is not None:
            on_error(err.status)
        return error_response(err)

    @app.exception_handler(APIError)
    async def _api(request: Request, exc: APIError):
        return respond(exc)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        return respond(validation_error(list(exc.errors()), known_fields))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        status = exc.status_code
        if status == 404:
            msg = f"no route {request.method} {request.url.path}"
        elif status == 405:
            msg = f"method {request.method} is not allowed on {request.url.path}"
        else:
            msg = str(exc.detail)
        return respond(APIError(status, msg, code=_phrase(status).removesuffix("_error"),
                                headers=dict(exc.headers or {})))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return respond(APIError(500, f"internal server error ({type(exc).__name__})", code="internal_error"))
