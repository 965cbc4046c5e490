"""The engine: a scheduler loop with continuous batching over a paged KV cache (issue 5).

``Engine(model, tokenizer, EngineConfig(...))`` runs any r1lab model through the model
seam (docs/architecture.md): ``model(input_ids, positions, cache=view)`` with a
``BatchView`` of the engine-owned ``PagedKVCache``.

One ``step()``:
1. drop cancelled requests (their blocks return to the pool);
2. admit waiting requests in FIFO order while their blocks fit and ``max_num_seqs``
   allows — a request reserves ``n × ceil((prompt + max_new) / block_size)`` blocks at
   admission, so a running sequence can never run out of cache (no preemption needed,
   no out-of-memory by design); a request that could never fit is refused at once;
3. one decode forward over every running sequence (one token each);
4. one prefill forward over chunks (≤ ``prefill_chunk`` tokens each, ≤ ``max_batch_tokens``
   in the step together with the decode tokens) of admitted prompts. A prompt is prefilled
   once; when its last chunk is done its blocks are copied to its n-1 siblings and all n
   sample their first token from the same logits;
5. sample every row at once (sampler.py), append, finish on EOS / stop ids / stop strings /
   max_tokens / context end, free finished sequences' blocks.

Returned token ids include a final stop token (EOS or a stop id) with its logprob — the
trainer needs it; ``text`` excludes the stop token / stop string unless ``include_stop``.

``tokenizer`` may be None (vLLM's ``skip_tokenizer_init``): prompts are token ids, outputs
carry token ids and empty text, and only ``stop_token_ids`` end a completion (there is no
EOS to know); text prompts, chat messages, stop strings and a thinking budget are refused
with an error.

Thinking budget (``SamplingParams.max_reasoning_tokens``; needs a tokenizer that spells
``<think>`` and ``</think>`` as one token each, as ours and DeepSeek's do):
* a completion is *in reasoning* from its start when its prompt opened ``<think>`` without
  closing it — the last ``<think>`` id in the prompt comes after the last ``</think>`` id
  (chat prompts always: the generation prompt ends ``<｜Assistant｜><think>\n``; for a text
  prompt this agrees with ``reasoning.prompt_opens_reasoning`` whenever that is true;
  ``Engine.opens_reasoning(prompt_ids)`` applies the rule) — or from the moment it
  generates ``<think>``; it leaves reasoning when it generates ``</think>``;
* ``CompletionOutput.reasoning_tokens`` counts the tokens generated in reasoning (neither
  tag, nor forced tokens). It is counted for every request, budget or not;
* once that count has reached the budget (at once for a budget of 0) the completion's next
  token may only be ``</think>``, the model closing its thinking by itself (then nothing
  is forced and a budget the model stays within changes nothing). Any other sampled token
  is replaced: the engine forces ``FORCED_CLOSE`` = ``"\n</think>\n\n"``, its token ids one
  per step (with ``spec_mtp`` a forced token stands in for the MTP draft, so the step's
  verification forward scores the next one too: up to two per step), each with the
  model's own log-probability of that token at that position in ``logprobs``
  (``sampling_logprobs`` 0; nothing is drawn for them after the first), and sets
  ``CompletionOutput.reasoning_budget_hit``; then the model writes the answer freely.
  Forced tokens are ordinary tokens of ``token_ids``/``text``/stream deltas (stop strings and
  ``max_tokens`` apply to them), so ``ReasoningStreamParser`` splits at the forced ``</think>``;
* each of the n completions of a request has its own count; a completion that opens
  ``<think>`` again after its budget is spent is at its limit again at once;
* streaming: every ``StreamDelta`` carries the completion's ``reasoning_tokens`` and
  ``reasoning_budget_hit`` so far (the final delta, ``finish_reason`` set, has the totals).
Without a budget nothing is forced: the tokens are exactly those of an engine without the feature.
"""

from __future__ import annotations

import contextlib
import itertools
from collections import deque
from dataclasses import dataclass, field
from typing import Iterator, Mapping, Sequence

import torch

from ..reasoning import ids_open_reasoning, reasoning_tag_ids
from ..tokenizer import END_THINK, THINK
from .cache import CacheError, PagedKVCache
from .sampler import (SamplingError, SamplingParams, draw, make_generator, processed_probs, sample,
                      speculative_accept)

STOP, LENGTH, CANCELLED = "stop", "length", "cancelled"
REPLACEMENT_CHAR = "\ufffd"   # a decoded partial UTF-8 character: held back while streaming
FORCED_CLOSE = "\n" + END_THINK + "\n\n"   # the thinking budget's forced end of thinking


class EngineError(ValueError):
    """A bad engine config or request (the message says which field)."""


@dataclass
class EngineConfig:
    """max_batch_tokens: new tokens per step (decode tokens + prefill chunks).
    kv_cache_bytes: the cache budget; the pool is allocated once, at this size or just under.
    dtype: KV cache dtype (None = the model's). device: must be the model's (None = the model's).
    block_size: tokens per cache block. max_num_seqs: running sequences at most.
    prefill_chunk: most prompt tokens of one request per step.
    spec_mtp: speculative decoding with the model's first MTP depth as the drafter (SPEC §2):
    each step drafts one token per sequence with MTP and verifies it with the main model;
    the accepted tokens are distributed exactly as without it (greedy: identical output)."""

    max_batch_tokens: int = 4096
    kv_cache_bytes: int = 256 * 2**20
    dtype: str | torch.dtype | None = None
    device: str | torch.device | None = None
    block_size: int = 16
    max_num_seqs: int = 256
    prefill_chunk: int = 512
    spec_mtp: bool = False

    def __post_init__(self):
        for name in ("max_batch_tokens", "kv_cache_bytes", "block_size", "max_num_seqs", "prefill_chunk"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise EngineError(f"engine config field {name!r}: must be an integer >= 1, got {v!r}")
        if not isinstance(self.spec_mtp, bool):
            raise EngineError(f"engine config field 'spec_mtp': must be true or false, got {self.spec_mtp!r}")
        if isinstance(self.dtype, str):
            dt = getattr(torch, self.dtype, None)
            if not isinstance(dt, torch.dtype):
                raise EngineError(f"engine config field 'dtype': unknown dtype {self.dtype!r}")
            self.dtype = dt
        if self.max_num_seqs > self.max_batch_tokens:
            raise EngineError(f"engine config field 'max_num_seqs': must be <= max_batch_tokens "
                              f"({self.max_batch_tokens}) so every running sequence decodes each step, "
                              f"got {self.max_num_seqs}")


@dataclass
class CompletionOutput:
    index: int
    token_ids: list[int] = field(default_factory=list)
    text: str = ""
    logprobs: list[float] = field(default_factory=list)           # raw model distribution (see sampler.py)
    sampling_logprobs: list[float] = field(default_factory=list)  # distribution actually sampled from
    top_logprobs: list[dict[int, float]] | None = None             # when SamplingParams.logprobs is set
    finish_reason: str | None = None                               # 'stop' | 'length' | 'cancelled'
    stop_reason: int | str | None = None                           # the stop token id or stop string matched
    reasoning_tokens: int = 0                                      # generated inside <think>…</think> (not
                                                                   # the tags, not forced tokens)
    reasoning_budget_hit: bool = False                             # max_reasoning_tokens forced FORCED_CLOSE

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


@dataclass
class RequestOutput:
    request_id: int
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput]

    @property
    def finished(self) -> bool:
        return all(o.finished for o in self.outputs)


@dataclass
class StreamDelta:
    """What one completion gained in one step (text held back while it may still change).
    ``reasoning_tokens``/``reasoning_budget_hit``: the completion's values so far (module docstring)."""

    request_id: int
    index: int
    token_ids: list[int]
    logprobs: list[float]
    text: str
    finish_reason: str | None
    reasoning_tokens: int = 0
    reasoning_budget_hit: bool = False


# ------------------------------------------------------------------------- internals
@dataclass
class _Seq:
    sid: int
    req: "_Request"
    out: CompletionOutput
    generator: torch.Generator
    text: str = ""          # incrementally decoded text (kept only when the request tracks text)
    prefix_off: int = 0     # incremental detokenisation offsets (see Engine._advance_text)
    read_off: int = 0
    emitted_tokens: int = 0
    emitted_text: int = 0
    mtp_h: torch.Tensor | None = None   # speculative decoding: main hidden states whose MTP entry is pending,
    mtp_pos: int = 0                    # for positions mtp_pos, mtp_pos + 1, …
    reasoning: bool = False             # inside <think> … </think> now
    at_limit: bool = False              # thinking budget spent: the next token is </think> or forced
    forced: list[int] = field(default_factory=list)   # thinking budget: token ids still to force, in order


@dataclass
class _Request:
    rid: int
    prompt: str | None
    prompt_ids: list[int]
    params: SamplingParams
    max_new: int
    seqs: list[_Seq] = field(default_factory=list)
    prefilled: int = 0
    admitted: bool = False
    stream: bool = False    # produce StreamDelta objects for this request
    opens_reasoning: bool = False   # the prompt left a <think> open: completions start in reasoning

    @property
    def tracks_text(self) -> bool:
        return self.stream or bool(self.params.stop)

    @property
    def prompt_done(self) -> bool:
        return self.prefilled == len(self.prompt_ids)

    @property
    def done(self) -> bool:
        return self.admitted and all(s.out.finished for s in self.seqs)

    def output(self) -> RequestOutput:
        return RequestOutput(self.rid, self.prompt, self.prompt_ids, [s.out for s in self.seqs])


class Engine:
    def __init__(self, model: torch.nn.Module, tokenizer, config: EngineConfig | None = None):
        self.model, self.tokenizer = model, tokenizer
        self.config = config = config or EngineConfig()
        p = next(model.parameters())
        if config.device is not None and torch.device(config.device) != p.device:
            # the engine never moves the model: a trainer hands it its live policy
            raise EngineError(f"engine config field 'device': model is on {p.device}, config says {config.device}")
        self.device = p.device
        self.cfg = model.config
        self.cache = PagedKVCache.from_budget(self.cfg, config.kv_cache_bytes, config.block_size,
                                              config.dtype or p.dtype, self.device)
        self.eos_token_id = getattr(tokenizer, "eos_token_id", None)   # None without a tokenizer
        self._ids = itertools.count()
        self._sids = itertools.count()
        self.waiting: deque[_Request] = deque()
        self.prefilling: list[_Request] = []
        self.running: list[_Seq] = []
        self.requests: dict[int, _Request] = {}
        self._cancel: set[int] = set()
        self.spec = config.spec_mtp
        if self.spec and not getattr(model, "mtp_layers", None):
            raise EngineError("spec_mtp needs a model with an MTP module (num_nextn_predict_layers >= 1); "
                              "this model has none")
        self.spec_drafted = 0    # draft tokens proposed / accepted since the engine started
        self.spec_accepted = 0
        self._tags = _reasoning_tags(tokenizer)   # (<think> id, </think> id, FORCED_CLOSE ids) or None

    @property
    def acceptance_rate(self) -> float | None:
        """Share of MTP draft tokens the main model accepted (None before any draft)."""
        return self.spec_accepted / self.spec_drafted if self.spec_drafted else None

    # -------------------------------------------------------------- public API
    def generate(self, prompts, params: SamplingParams | Sequence[SamplingParams] | None = None) -> list[RequestOutput]:
        """Complete every prompt (text, token ids, or chat messages); outputs in prompt order."""
        rids = self._add_all(prompts, params)
        with _eval(self.model):  # once, not per step
            while not all(self.requests[r].done for r in rids):
                self.step()
        return [self.requests.pop(r).output() for r in rids]

    def stream(self, prompts, params=None) -> Iterator[StreamDelta]:
        """Like ``generate`` but yields per-completion deltas as they are produced. Leaving the
        loop early cancels the remaining requests."""
        rids = self._add_all(prompts, params, stream=True)
        mine = set(rids)
        try:
            while not all(self.requests[r].done for r in rids):
                for d in self.step():
                    if d.request_id in mine:
                        yield d
        finally:
            live = [r for r in rids if not self.requests[r].done]
            for r in live:
                self.cancel(r)
            if live:
                self.step()
            for r in rids:
                self.requests.pop(r, None)

    def add_request(self, prompt, params: SamplingParams | None = None, stream: bool = False) -> int:
        """Queue one prompt; returns its request id (for ``cancel``/``output``). ``step()`` advances
        it and, with ``stream=True``, returns its deltas."""
        return self._queue([self._make_request(prompt, params, stream)])[0]

    def _queue(self, reqs: list[_Request]) -> list[int]:
        for req in reqs:
            self.requests[req.rid] = req
            self.waiting.append(req)
        return [r.rid for r in reqs]

    def _make_request(self, prompt, params: SamplingParams | None, stream: bool) -> _Request:
        """Validate one prompt + params into a request (nothing is queued if this raises)."""
        params = params or SamplingParams()
        if not isinstance(params, SamplingParams):
            raise SamplingError(f"params must be SamplingParams, got {type(params).__name__}")
        if params.stop and self.tokenizer is None:
            raise SamplingError(f"stop strings {list(params.stop)!r} need a tokenizer; this engine has none "
                                f"(Engine(model, None, ...)): use stop_token_ids")
        if params.max_reasoning_tokens is not None and self._tags is None:
            why = ("this engine has none (Engine(model, None, ...))" if self.tokenizer is None else
                   f"this tokenizer does not spell {THINK} and {END_THINK} as one token each")
            raise SamplingError(f"max_reasoning_tokens needs a tokenizer with {THINK}/{END_THINK} tokens; {why}")
        text, ids = self._prompt_ids(prompt)
        ctx = self.cfg.max_position_embeddings
        if len(ids) >= ctx:
            raise EngineError(f"prompt has {len(ids)} tokens; the model's context is {ctx}")
        if params.max_tokens > ctx:
            raise SamplingError(f"max_tokens must be <= the model's context ({ctx}), got {params.max_tokens}")
        max_new = min(params.max_tokens, ctx - len(ids))
        need = params.n * self.cache.blocks_for(len(ids) + max_new)
        if need > self.cache.num_blocks:
            raise CacheError(f"request needs {need} KV blocks (n={params.n} × {len(ids)} prompt + {max_new} new "
                             f"tokens) but the whole cache has {self.cache.num_blocks}; raise kv_cache_bytes "
                             f"(now {self.config.kv_cache_bytes}) or lower n/max_tokens")
        if params.n > self.config.max_num_seqs:
            raise EngineError(f"n={params.n} exceeds max_num_seqs={self.config.max_num_seqs}")
        return _Request(next(self._ids), text, ids, params, max_new, stream=stream,
                        opens_reasoning=self.opens_reasoning(ids))

    def opens_reasoning(self, prompt_ids: Sequence[int]) -> bool:
        """Whether completions of these prompt ids start in reasoning: the last ``<think>`` id comes
        after the last ``</think>`` id (False without the tag tokens). Reads no engine state, so a
        server may call it from any thread to start its ``ReasoningStreamParser`` the same way."""
        return ids_open_reasoning(self._tags[:2] if self._tags else None, prompt_ids)

    def cancel(self, request_id: int) -> None:
        """Stop a request; its completions finish with 'cancelled' and its blocks are freed at the next step."""
        if request_id in self.requests:
            self._cancel.add(request_id)

    def output(self, request_id: int, release: bool = False) -> RequestOutput:
        """The request's outputs so far; ``release=True`` forgets a finished request (servers
        driving ``add_request``/``step`` themselves must release, or finished requests pile up)."""
        req = self.requests[request_id]
        out = req.output()
        if release:
            if not req.done:
                raise EngineError(f"request {request_id} is not finished; cancel it first")
            del self.requests[request_id]
        return out

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.prefilling or self.running)

    # -------------------------------------------------------------- the loop
    def step(self) -> list[StreamDelta]:
        """One scheduler iteration (module docstring); returns the deltas it produced."""
        with torch.inference_mode(), _eval(self.model):
            deltas = self._drop_cancelled()
            self._admit()
            rows: list[tuple[torch.Tensor, _Seq]] = []   # (logits row, sequence to sample for)
            if self.running and self.spec:
                deltas += self._spec_decode(list(self.running))
            elif self.running:
                rows += self._decode(self.running)
            rows += self._prefill()
            if rows:
                deltas += self._sample_and_append(rows)
        return deltas

    def _admit(self) -> None:
        cfg = self.config
        while self.waiting:
            req = self.waiting[0]
            n = req.params.n
            active = len(self.running) + sum(r.params.n for r in self.prefilling)
            need = n * self.cache.blocks_for(len(req.prompt_ids) + req.max_new)
            if active + n > cfg.max_num_seqs or need > self.cache.free_blocks():
                return
            self.waiting.popleft()
            for i in range(n):
                sid = next(self._sids)
                self.cache.reserve(sid, len(req.prompt_ids) + req.max_new)
                gen = make_generator(req.params.seed, i)
                out = CompletionOutput(i, top_logprobs=[] if req.params.logprobs is not None else None)
                s = _Seq(sid, req, out, gen, reasoning=req.opens_reasoning)
                self._check_budget(s)   # a budget of 0 closes the thinking from the first token
                req.seqs.append(s)
            req.admitted = True
            self.prefilling.append(req)

    def _decode(self, seqs: list[_Seq]):
        cached = [len(s.req.prompt_ids) + len(s.out.token_ids) - 1 for s in seqs]
        view = self.cache.batch_view([s.sid for s in seqs], cached, [1] * len(seqs))
        ids = torch.tensor([[s.out.token_ids[-1]] for s in seqs], device=self.device)
        logits = self.model(ids, positions=view.positions, cache=view).logits[:, -1]
        return list(zip(logits, seqs))

    def _prefill(self):
        budget = self.config.max_batch_tokens - (2 if self.spec else 1) * len(self.running)
        chunks = []
        for req in self.prefilling:
            take = min(self.config.prefill_chunk, len(req.prompt_ids) - req.prefilled, budget)
            if take <= 0:
                break
            chunks.append((req, take))
            budget -= take
        if not chunks:
            return []
        T = max(t for _, t in chunks)
        ids = torch.zeros(len(chunks), T, dtype=torch.long)
        for i, (req, t) in enumerate(chunks):
            ids[i, :t] = torch.tensor(req.prompt_ids[req.prefilled: req.prefilled + t])
        view = self.cache.batch_view([r.seqs[0].sid for r, _ in chunks], [r.prefilled for r, _ in chunks],
                                     [t for _, t in chunks])
        out = self.model(ids.to(self.device), positions=view.positions, cache=view, return_hidden=self.spec)
        logits = out.logits
        if self.spec:
            self._mtp_prefill(chunks, out.hidden_states)
        rows = []
        for i, (req, t) in enumerate(chunks):
            req.prefilled += t
            if req.prompt_done:  # fork: the siblings get a copy of the prompt's cache
                self.prefilling.remove(req)
                if self.spec:   # the last prompt position's MTP entry needs each sample's first token
                    for s in req.seqs:
                        s.mtp_h, s.mtp_pos = out.hidden_states[i, t - 1: t], len(req.prompt_ids) - 1
                for s in req.seqs[1:]:
                    self.cache.copy_prefix(req.seqs[0].sid, s.sid, len(req.prompt_ids))
                rows += [(logits[i, t - 1], s) for s in req.seqs]
                self.running += req.seqs
        return rows

    def _sample_and_append(self, rows) -> list[StreamDelta]:
        seqs = [s for _, s in rows]
        k = max((s.req.params.logprobs or 0) for s in seqs)
        forced = [s.forced[0] if s.forced else None for s in seqs]   # forcing under way: nothing to draw
        res = sample(torch.stack([r for r, _ in rows]), [s.req.params for s in seqs], [s.generator for s in seqs],
                     top_logprobs=k, forced=forced if any(f is not None for f in forced) else None)
        tokens, lps, slps = res.token_ids.tolist(), res.logprobs.tolist(), res.sampling_logprobs.tolist()
        deltas = []
        for i, s in enumerate(seqs):
            tok, lp, slp = tokens[i], lps[i], slps[i]
            sub = self._budget_token(s, tok) if s.forced or s.at_limit else None
            if sub is not None:
                if forced[i] is None:   # forcing starts here: the model's log-prob of the forced token
                    lp = float(torch.log_softmax(rows[i][0].float(), dim=-1)[sub])
                tok, slp = sub, 0.0
            self._append(s, tok, lp, slp, res.top_ids, res.top_logprobs, i, sub is not None)
            if s.req.stream:
                deltas.append(self._delta(s))
        return deltas

    def _append(self, s: _Seq, token: int, lp: float, slp: float, top_ids, top_lps, row: int,
                forced: bool = False) -> None:
        out = s.out
        out.token_ids.append(token)
        out.logprobs.append(lp)
        out.sampling_logprobs.append(slp)
        if out.top_logprobs is not None:
            m = s.req.params.logprobs
            # logprobs=0: the sampled token's log-prob only, no alternatives (top_ids is None then)
            out.top_logprobs.append(dict(zip(top_ids[row, :m].tolist(), top_lps[row, :m].tolist())) if m else {})
        if self._tags is not None:
            think, end, _ = self._tags
            if s.reasoning:
                if token == end:
                    s.reasoning = s.at_limit = False
                elif not forced:
                    out.reasoning_tokens += 1
            elif token == think:
                s.reasoning = True
        self._check_finished(s)
        if not out.finished:
            self._check_budget(s)

    def _check_budget(self, s: _Seq) -> None:
        """Spent budget and still thinking: the next token is the model's </think> or forced."""
        budget = s.req.params.max_reasoning_tokens
        if budget is not None and s.reasoning and not s.forced and s.out.reasoning_tokens >= budget:
            s.at_limit = True

    def _budget_token(self, s: _Seq, sampled: int) -> int | None:
        """The token the thinking budget puts in place of ``sampled`` (None: keep it), consumed."""
        if not s.forced:
            if sampled == self._tags[1]:   # at the limit the model closed its thinking itself
                return None
            s.forced, s.at_limit = list(self._tags[2]), False
            s.out.reasoning_budget_hit = True
        return s.forced.pop(0)

    # -------------------------------------------------------------- MTP speculative decoding
    def _mtp_prefill(self, chunks, h: torch.Tensor) -> None:
        """Fill the MTP layer's cache for the prompt positions whose next token is known (all
        but the prompt's last position, which waits for each sample's first token)."""
        rows = []
        for i, (req, t) in enumerate(chunks):
            k = t if req.prefilled + t < len(req.prompt_ids) else t - 1
            if k > 0:
                rows.append((i, req, k))
        if not rows:
            return
        T = max(k for *_, k in rows)
        hh = h.new_zeros(len(rows), T, h.shape[-1])
        nxt = torch.zeros(len(rows), T, dtype=torch.long)
        for j, (i, req, k) in enumerate(rows):
            hh[j, :k] = h[i, :k]
            nxt[j, :k] = torch.tensor(req.prompt_ids[req.prefilled + 1: req.prefilled + 1 + k])
        view = self.cache.batch_view([r.seqs[0].sid for _, r, _ in rows], [r.prefilled for _, r, _ in rows],
                                     [k for *_, k in rows])
        self.model.mtp_forward(0, hh, nxt.to(self.device), view.positions, view, with_logits=False)

    def _spec_decode(self, seqs: list[_Seq]) -> list[StreamDelta]:
        """One speculative step for every running sequence (SPEC §2, MTP as the drafter).

        Sequence state: tokens t_0..t_m committed, the main cache holding positions < m, the
        MTP cache positions < ``mtp_pos`` with main hidden states h for ``mtp_pos``..m-1 pending.
        1. MTP over the pending positions (its input at position i is h_i and the embedding of
           t_{i+1}) fills its cache and, at position m-1, drafts d for t_{m+1} from q.
        2. The main model runs [t_m, d] at positions m, m+1: p_m verifies d, p_{m+1} is ready
           for a bonus token.
        3. ``speculative_accept``: accepted → t_{m+1} = d and t_{m+2} ~ p_{m+1}; rejected →
           t_{m+1} from the residual. Either way every committed token has the target
           distribution, and pending becomes h_m (and h_{m+1}) for the next step.
        A sequence without room for two more tokens runs a plain one-token step."""
        dev, B = self.device, len(seqs)
        params, gens = [s.req.params for s in seqs], [s.generator for s in seqs]
        full = [s.req.prompt_ids + s.out.token_ids for s in seqs]
        # 1. draft
        k = [s.mtp_h.shape[0] for s in seqs]
        hh = seqs[0].mtp_h.new_zeros(B, max(k), seqs[0].mtp_h.shape[-1])
        nxt = torch.zeros(B, max(k), dtype=torch.long)
        for i, s in enumerate(seqs):
            hh[i, :k[i]] = s.mtp_h
            nxt[i, :k[i]] = torch.tensor(full[i][s.mtp_pos + 1: s.mtp_pos + 1 + k[i]])
        view = self.cache.batch_view([s.sid for s in seqs], [s.mtp_pos for s in seqs], k)
        _, h_mtp = self.model.mtp_forward(0, hh, nxt.to(dev), view.positions, view, with_logits=False)
        last = h_mtp[torch.arange(B, device=dev), torch.tensor(k, device=dev) - 1]   # only position m-1 drafts
        q = processed_probs(self.model.mtp_head(0, last), params)
        drafts = draw(q, gens)
        room = [len(s.out.token_ids) + 2 <= s.req.max_new for s in seqs]
        forced = [bool(s.forced) for s in seqs]   # thinking budget: a forced token is its row's (certain) draft
        if any(forced):
            drafts = drafts.clone()
            for i, s in enumerate(seqs):
                if s.forced:
                    drafts[i] = s.forced[0]
        drafted = drafts.tolist()
        # 2. verify
        m = [len(f) - 1 for f in full]
        ids = torch.stack([torch.tensor([f[-1] for f in full]), drafts.cpu()], dim=1)[:, : 1 + any(room)]
        view = self.cache.batch_view([s.sid for s in seqs], m, [2 if r else 1 for r in room])
        out = self.model(ids.to(dev), positions=view.positions, cache=view, return_hidden=True)
        logits, h = out.logits.float(), out.hidden_states
        if logits.shape[1] == 1:   # nobody had room for a draft: column 1 is never used
            logits, h = logits.expand(B, 2, -1), h.expand(B, 2, -1)
        # 3. accept / reject, bonus tokens
        p0 = processed_probs(logits[:, 0], params)
        tok0, accepted = speculative_accept(p0, q, drafts, gens)
        plain = draw(p0, gens)          # rows without room: an ordinary draw from p_m
        r = torch.tensor(room, device=dev)
        tok0, accepted = torch.where(r, tok0, plain), accepted & r
        p1 = processed_probs(logits[:, 1], params)
        tok1 = draw(p1, gens)
        raw = torch.log_softmax(logits, dim=-1)
        kmax = max((p.logprobs or 0) for p in params)
        top_lps, top_ids = raw.topk(min(kmax, raw.shape[-1]), dim=-1) if kmax else (None, None)
        tok0, tok1, accepted = tok0.tolist(), tok1.tolist(), accepted.tolist()
        self.spec_drafted += sum(r and not f for r, f in zip(room, forced))
        self.spec_accepted += sum(a and not f for a, f in zip(accepted, forced))
        deltas = []
        for i, s in enumerate(seqs):
            # Column 1 (p_{m+1}, tok1) is conditioned on the draft, so a second token is committed
            # only when the first one is the draft: an accepted draft, or a forced token standing
            # in for it. The thinking budget may replace either token (``_budget_token``).
            committed = []
            for j, cand in enumerate((tok0[i], tok1[i])[: 1 + room[i]]):
                if s.out.finished or (j == 1 and not ((accepted[i] or forced[i]) and committed[0] == drafted[i])):
                    break
                p = p0 if j == 0 else p1
                sub = self._budget_token(s, cand) if s.forced or s.at_limit else None
                tok = cand if sub is None else sub
                self._append(s, tok, float(raw[i, j, tok]), 0.0 if sub is not None else float(p[i, tok].log()),
                             None if top_ids is None else top_ids[:, j], None if top_lps is None else top_lps[:, j], i,
                             sub is not None)
                committed.append(tok)
            s.mtp_h, s.mtp_pos = h[i, : len(committed)], m[i]
            if s.req.stream:
                deltas.append(self._delta(s))
        return deltas

    # -------------------------------------------------------------- finishing
    def _check_finished(self, s: _Seq) -> None:
        out, p = s.out, s.req.params
        tok = out.token_ids[-1]
        if tok == self.eos_token_id or tok in p.stop_token_ids:
            self._finish(s, STOP, tok)
            return
        if s.req.tracks_text:
            new = self._advance_text(s)
            if p.stop and new and (hit := self._find_stop(s, len(new))) is not None:
                self._finish(s, STOP, hit)
                return
        if len(out.token_ids) >= s.req.max_new:
            self._finish(s, LENGTH, None)

    def _advance_text(self, s: _Seq) -> str:
        """Append the text of the newest tokens to ``s.text`` (returned), decoding only a short
        window; text ending in a partial UTF-8 character waits for the next token."""
        if self.tokenizer is None:   # token ids only: a stream carries no text
            return ""
        ids = s.out.token_ids
        before = self.tokenizer.decode(ids[s.prefix_off: s.read_off])
        after = self.tokenizer.decode(ids[s.prefix_off:])
        if len(after) <= len(before) or after.endswith(REPLACEMENT_CHAR):
            return ""
        s.prefix_off, s.read_off = s.read_off, len(ids)
        new = after[len(before):]
        s.text += new
        return new

    def _find_stop(self, s: _Seq, new_chars: int) -> str | None:
        """The stop string occurring first among those that end in the newest ``new_chars`` characters."""
        longest = max(len(x) for x in s.req.params.stop)
        start = max(0, len(s.text) - new_chars - longest + 1)
        hits = [(at, x) for x in s.req.params.stop if (at := s.text.find(x, start)) >= 0]
        return min(hits)[1] if hits else None

    def _finish(self, s: _Seq, reason: str, stop_reason) -> None:
        out = s.out
        out.finish_reason, out.stop_reason = reason, stop_reason
        out.text = self._final_text(s)
        self.cache.free(s.sid)
        if s in self.running:
            self.running.remove(s)

    def _final_text(self, s: _Seq) -> str:
        out, p = s.out, s.req.params
        if self.tokenizer is None:
            return ""
        ids = out.token_ids
        if isinstance(out.stop_reason, int) and not p.include_stop:
            ids = ids[:-1]
        text = self.tokenizer.decode(ids)
        if isinstance(out.stop_reason, str):
            cut = text.find(out.stop_reason)
            text = text[: cut + (len(out.stop_reason) if p.include_stop else 0)]
        return text

    def _visible_text(self, s: _Seq) -> str:
        """Text safe to stream: complete characters, minus a tail a stop string may still claim."""
        if s.out.finished:
            return s.out.text
        hold = max((len(x) for x in s.req.params.stop), default=1) - 1
        return s.text[: len(s.text) - hold] if hold else s.text

    def _delta(self, s: _Seq) -> StreamDelta:
        out = s.out
        text = self._visible_text(s)
        d = StreamDelta(s.req.rid, out.index, out.token_ids[s.emitted_tokens:], out.logprobs[s.emitted_tokens:],
                        text[s.emitted_text:], out.finish_reason, out.reasoning_tokens, out.reasoning_budget_hit)
        s.emitted_tokens, s.emitted_text = len(out.token_ids), max(len(text), s.emitted_text)
        return d

    def _drop_cancelled(self) -> list[StreamDelta]:
        deltas = []
        for rid in self._cancel:
            req = self.requests.get(rid)
            if req is None:
                continue
            if req in self.waiting:
                self.waiting.remove(req)
                req.seqs = [_Seq(-1, req, CompletionOutput(i, finish_reason=CANCELLED), torch.Generator())
                            for i in range(req.params.n)]
                req.admitted = True
            if req in self.prefilling:
                self.prefilling.remove(req)
            for s in req.seqs:
                if not s.out.finished:
                    self._finish(s, CANCELLED, None)
                    if req.stream:
                        deltas.append(self._delta(s))
        self._cancel.clear()
        return deltas

    # -------------------------------------------------------------- prompts
    def _add_all(self, prompts, params, stream: bool = False) -> list[int]:
        if isinstance(prompts, (str, Mapping)) or (isinstance(prompts, Sequence) and prompts
                                                    and isinstance(prompts[0], (int, Mapping))):
            prompts = [prompts]
        plist = params if isinstance(params, Sequence) else [params] * len(prompts)
        if len(plist) != len(prompts):
            raise EngineError(f"got {len(prompts)} prompts but {len(plist)} SamplingParams")
        return self._queue([self._make_request(p, sp, stream) for p, sp in zip(prompts, plist)])

    def _prompt_ids(self, prompt) -> tuple[str | None, list[int]]:
        """Text starts with BOS like every training document (added unless the text already
        begins with it, as a rendered chat template does — the way vLLM/HF encode completion
        prompts); a list of ints is token ids, used as given; a list of {role, content} dicts
        is rendered with the chat template."""
        is_chat = isinstance(prompt, Sequence) and prompt and all(isinstance(m, Mapping) for m in prompt)
        if self.tokenizer is None and (isinstance(prompt, str) or is_chat):
            kind = "a text prompt" if isinstance(prompt, str) else "chat messages"
            raise EngineError(f"{kind} needs a tokenizer; this engine has none (Engine(model, None, ...)): "
                              f"pass token ids")
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
            bos = getattr(self.tokenizer, "bos_token_id", None)
            if bos is not None and (not ids or ids[0] != bos):
                ids = [bos] + ids
            text = prompt
        elif is_chat:
            text = self.tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
            ids = self.tokenizer.encode(text)
        elif isinstance(prompt, Sequence) and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            ids, text = [int(t) for t in prompt], None
        else:
            raise EngineError(f"a prompt must be text, token ids or chat messages, got {type(prompt).__name__}")
        if not ids:
            raise EngineError("empty prompt")
        V = self.cfg.vocab_size
        if any(not 0 <= t < V for t in ids):
            raise EngineError(f"prompt token ids must be in 0..{V - 1}")
        return text, ids


def _reasoning_tags(tokenizer) -> tuple[int, int, list[int]] | None:
    """(<think> id, </think> id, the ids of FORCED_CLOSE) when the tokenizer spells each tag as one
    token and FORCED_CLOSE holds the </think> token; else None (no reasoning tracking, no budget)."""
    tags = reasoning_tag_ids(tokenizer)
    if tags is None:
        return None
    close = tokenizer.encode(FORCED_CLOSE)
    return (*tags, close) if tags[1] in close else None


@contextlib.contextmanager
def _eval(model: torch.nn.Module):
    """model.eval() for the step, the caller's mode restored after (a trainer's live policy)."""
    was = model.training
    if was:  # train()/eval() walk every module: skip when there is nothing to switch
        model.eval()
    try:
        yield
    finally:
        if was:
            model.train()
