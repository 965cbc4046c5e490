"""Request models of the OpenAI-compatible API (issue 14 "Deliver 1"; SPEC §8, §10).

Fields follow OpenAI's chat completions and (legacy) completions APIs, plus our thinking
budget: ``max_reasoning_tokens`` and ``reasoning_effort`` (low/medium/high → budgets set by
``--reasoning-effort-budgets``). Models are strict (JSON types are not coerced: ``"2"`` is
not a number) and ignore unknown fields, as vLLM does, so clients that send extra fields
still work. What we cannot honour is refused, never silently ignored:
``presence_penalty``/``frequency_penalty`` other than 0, a non-empty ``logit_bias``,
``tools``, a ``response_format`` other than text, ``echo``, ``suffix``, ``best_of`` ≠ n.

Every bound is a named constant below (STYLE "named limits"). Checks across fields raise
``APIError`` (400) naming the field in ``param``; pydantic lets such exceptions through.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from .errors import APIError

MAX_N = 16                    # completions per request
MAX_STOP = 4                  # stop strings per request (OpenAI's limit)
MAX_STOP_CHARS = 256          # characters per stop string
MAX_MESSAGES = 512            # messages per chat request
MAX_MESSAGE_CHARS = 200_000   # characters per message (the body limit applies as well)
MAX_PROMPT_TOKEN_IDS = 1_000_000   # token ids in a /v1/completions prompt given as ids
MAX_TOP_LOGPROBS = 20         # chat top_logprobs (OpenAI's limit)
MAX_COMPLETION_LOGPROBS = 5   # legacy completions logprobs (OpenAI's limit)
MAX_TEMPERATURE = 2.0         # OpenAI's range [0, 2]
MAX_TOKENS_BOUND = 2**31 - 1  # max_tokens accepted; the model's context caps it further
MAX_SEED = 2**63 - 1
MAX_NAME_CHARS = 256          # model, user, message name
REASONING_EFFORTS = ("low", "medium", "high")
DEFAULT_EFFORT_BUDGETS = {"low": 256, "medium": 1024, "high": 4096}

Int = Annotated[int, Field(strict=True)]
Float = Annotated[float, Field(strict=True)]


def _bad(param: str, message: str):
    raise APIError(400, f"{param}: {message}", param=param, code="invalid_value")


class _Model(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Model):
    type: Literal["text"]
    text: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)]


class ChatMessage(_Model):
    role: Literal["system", "developer", "user", "assistant"]
    content: Annotated[str, Field(max_length=MAX_MESSAGE_CHARS)] | list[TextPart] | None = None
    name: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    reasoning_content: str | None = None     # refused when sent back (DeepSeek API: 400)
    reasoning: str | None = None

    def text(self) -> str | None:
        if isinstance(self.content, list):
            return "".join(p.text for p in self.content)
        return self.content

    def for_template(self) -> dict:
        """The message as the R1 chat template takes it (``developer`` is OpenAI's new name for system)."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(_Model):
    include_usage: bool | None = False


class _Sampling(_Model):
    """Fields shared by chat and completions requests."""

    model: Annotated[str, Field(max_length=MAX_NAME_CHARS)]
    n: Annotated[Int, Field(ge=1, le=MAX_N)] | None = 1
    temperature: Annotated[Float, Field(ge=0, le=MAX_TEMPERATURE)] | None = 1.0
    top_p: Annotated[Float, Field(gt=0, le=1)] | None = 1.0
    top_k: Annotated[Int, Field(ge=-1, le=MAX_TOKENS_BOUND)] | None = 0
    min_p: Annotated[Float, Field(ge=0, le=1)] | None = 0.0
    max_tokens: Annotated[Int, Field(ge=1, le=MAX_TOKENS_BOUND)] | None = None
    stop: (Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]
           | Annotated[list[Annotated[str, Field(min_length=1, max_length=MAX_STOP_CHARS)]],
                       Field(max_length=MAX_STOP)] | None) = None
    seed: Annotated[Int, Field(ge=0, le=MAX_SEED)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    presence_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = 0.0
    frequency_penalty: Annotated[Float, Field(ge=-2, le=2)] | None = 0.0
    logit_bias: dict[str, Float] | None = None
    user: Annotated[str, Field(max_length=MAX_NAME_CHARS)] | None = None
    max_reasoning_tokens: Annotated[Int, Field(ge=0, le=MAX_TOKENS_BOUND)] | None = None
    reasoning_effort: Literal["low", "medium", "high"] | None = None

    @model_validator(mode="after")
    def _check_sampling(self):
        if self.stream_options is not None and not self.stream:
            _bad("stream_options", "needs stream: true")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name):
                _bad(name, "not supported (send 0 or leave it out)")
        if self.logit_bias:
            _bad("logit_bias", "not supported")
        return self

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def stop_list(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def reasoning_budget(self, effort_budgets: dict[str, int]) -> int | None:
        """max_reasoning_tokens wins over reasoning_effort when both are given."""
        if self.max_reasoning_tokens is not None:
            return self.max_reasoning_tokens
        return None if self.reasoning_effort is None else effort_budgets[self.reasoning_effort]


class ChatCompletionRequest(_Sampling):
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)]
    max_completion_tokens: Annotated[Int, Field(ge=1, le=MAX_TOKENS_BOUND)] | None = None
    logprobs: bool | None = False
    top_logprobs: Annotated[Int, Field(ge=0, le=MAX_TOP_LOGPROBS)] | None = None
    tools: list[dict] | None = None
    response_format: dict | None = None

    @model_validator(mode="after")
    def _check_chat(self):
        for i, m in enumerate(self.messages):
            for name in ("reasoning_content", "reasoning"):
                if getattr(m, name) is not None:
                    # DeepSeek API: the thinking of earlier turns must not be sent back
                    _bad(f"messages[{i}].{name}", "a previous turn's reasoning must not be sent back; "
                                                  "send only its content (the answer)")
            if m.content is None and m.role != "assistant":
                _bad(f"messages[{i}].content", f"a {m.role} message needs content")
            if isinstance(m.content, list) and sum(len(p.text) for p in m.content) > MAX_MESSAGE_CHARS:
                _bad(f"messages[{i}].content", f"longer than {MAX_MESSAGE_CHARS} characters")
        if self.top_logprobs is not None and not self.logprobs:
            _bad("top_logprobs", "needs logprobs: true")
        if self.tools:
            _bad("tools", "not supported")
        if self.response_format is not None and self.response_format.get("type", "text") != "text":
            _bad("response_format", "only {\"type\": \"text\"} is supported")
        return self

    @property
    def token_limit(self) -> int | None:
        """max_completion_tokens (OpenAI's newer name) wins over max_tokens, as in vLLM."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens

    @property
    def wants_logprobs(self) -> bool:
        return bool(self.logprobs)

    @property
    def engine_logprobs(self) -> int | None:
        """Alternatives per token for the engine (the chosen token's logprob always comes back)."""
        return self.top_logprobs if self.logprobs and self.top_logprobs else None


class CompletionRequest(_Sampling):
    prompt: (Annotated[str, Field(min_length=1, max_length=MAX_MESSAGE_CHARS)]
             | Annotated[list[Annotated[Int, Field(ge=0)]], Field(min_length=1, max_length=MAX_PROMPT_TOKEN_IDS)])
    logprobs: Annotated[Int, Field(ge=0, le=MAX_COMPLETION_LOGPROBS)] | None = None
    echo: bool | None = False
    suffix: str | None = None
    best_of: Annotated[Int, Field(ge=1, le=MAX_N)] | None = None

    @model_validator(mode="after")
    def _check_completion(self):
        if self.echo:
            _bad("echo", "not supported")
        if self.suffix:
            _bad("suffix", "not supported")
        if self.best_of is not None and self.best_of != (self.n or 1):
            _bad("best_of", "must equal n (or be left out)")
        return self

    @property
    def token_limit(self) -> int | None:
        return self.max_tokens

    @property
    def wants_logprobs(self) -> bool:
        return self.logprobs is not None

    @property
    def engine_logprobs(self) -> int | None:
        return self.logprobs or None


def known_fields() -> set[str]:
    """Every field name of the request models (error ``param`` paths are built from them)."""
    names: set[str] = set()
    for m in (TextPart, ChatMessage, StreamOptions, ChatCompletionRequest, CompletionRequest):
        names |= set(m.model_fields)
    return names


def parse_effort_budgets(text: str) -> dict[str, int]:
    """``low=256,medium=1024,high=4096`` (any subset; the rest keep their defaults)."""
    out = dict(DEFAULT_EFFORT_BUDGETS)
    for item in (x.strip() for x in text.split(",") if x.strip()):
        key, sep, value = item.partition("=")
        key = key.strip()
        if not sep or key not in REASONING_EFFORTS:
            raise ValueError(f"expected low=N,medium=N,high=N, got {item!r}")
        try:
            n = int(value)
        except ValueError:
            n = -1
        if n < 0:
            raise ValueError(f"{key}: the budget must be a non-negative integer, got {value.strip()!r}")
        out[key] = n
    return out
