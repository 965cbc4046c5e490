"""Sampling: parameters, per-sequence seeds, batched token selection and logprobs.

``SamplingParams`` is the sampling config of one request (issue 5 "Deliver 1").
``sample`` picks one token per row of a (N, V) logits batch, each row with its own
parameters and its own ``torch.Generator``, so a seeded request draws the same tokens
whatever else is in the batch.

Logprob convention (the engine <-> trainer seam, docs/architecture.md): ``logprobs`` is
the log-probability of the sampled token under the *unmodified* model distribution,
``log_softmax(raw logits)`` at temperature 1, with no top-k/top-p/min-p truncation.
That is exactly what the GRPO trainer's forward pass recomputes (SPEC §3 ratio
pi_theta / pi_theta_old), so the two agree to float rounding. The log-probability under
the distribution actually sampled from (temperature and truncation applied) is returned
too, as ``sampling_logprobs`` (it is what an importance-sampling correction would need).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import torch

TOP_K_OFF = 0          # top_k of 0 (or -1, vLLM's spelling) disables top-k
MASK_64 = (1 << 64) - 1
SEED_BITS = 63         # torch.Generator.manual_seed takes a non-negative int below 2**64


class SamplingError(ValueError):
    """A sampling parameter is out of range (the message names it)."""


GREEDY_EPS = 1e-5   # a temperature below this samples greedily (vLLM's _SAMPLING_EPS)


@dataclass
class SamplingParams:
    """How to sample the completions of one prompt.

    n: completions per prompt (they share the prompt's prefill).
    temperature: 0 (or below GREEDY_EPS) = greedy (argmax of the logits); else scales logits before sampling.
    top_p: nucleus mass in (0, 1]; top_k: keep the k most likely (0 or -1 = off);
    min_p: drop tokens with p < min_p · p_max (0 = off).
    max_tokens: most new tokens per completion (also capped by the model's context).
    stop: strings that end a completion; stop_token_ids: ids that end it (the tokenizer's
    EOS always does). include_stop: keep the matched stop string in ``text``.
    seed: makes the request reproducible; completion i uses a generator seeded from (seed, i).
    logprobs: also return the top-``logprobs`` alternatives per token (None = off).
    max_reasoning_tokens: the thinking budget (None = unlimited): once a completion has written
    this many tokens inside ``<think>`` … ``</think>`` the engine forces the end of the thinking
    (engine.py, "Thinking budget"); 0 closes the thinking at once.
    """

    n: int = 1
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = TOP_K_OFF
    min_p: float = 0.0
    max_tokens: int = 16
    stop: Sequence[str] = field(default_factory=tuple)
    stop_token_ids: Sequence[int] = field(default_factory=tuple)
    seed: int | None = None
    logprobs: int | None = None
    include_stop: bool = False
    max_reasoning_tokens: int | None = None

    def __post_init__(self):
        if isinstance(self.stop, str):
            self.stop = (self.stop,)
        self.stop = tuple(self.stop)
        self.stop_token_ids = tuple(int(t) for t in self.stop_token_ids)
        lp, seed, budget = self.logprobs, self.seed, self.max_reasoning_tokens
        checks = [
            (_is_int(self.n) and self.n >= 1, f"n must be an integer >= 1, got {self.n!r}"),
            (_is_num(self.temperature) and self.temperature >= 0,
             f"temperature must be >= 0, got {self.temperature!r}"),
            (_is_num(self.top_p) and 0 < self.top_p <= 1, f"top_p must be in (0, 1], got {self.top_p!r}"),
            (_is_int(self.top_k) and self.top_k >= -1, f"top_k must be -1 or 0 (off) or >= 1, got {self.top_k!r}"),
            (_is_num(self.min_p) and 0 <= self.min_p <= 1, f"min_p must be in [0, 1], got {self.min_p!r}"),
            (_is_int(self.max_tokens) and self.max_tokens >= 1,
             f"max_tokens must be an integer >= 1, got {self.max_tokens!r}"),
            (seed is None or (_is_int(seed) and seed >= 0),
             f"seed must be a non-negative integer or None, got {seed!r}"),
            (lp is None or (_is_int(lp) and lp >= 0), f"logprobs must be a non-negative integer or None, got {lp!r}"),
            (all(isinstance(x, str) and x for x in self.stop), f"stop must be non-empty strings, got {self.stop!r}"),
            (all(t >= 0 for t in self.stop_token_ids),
             f"stop_token_ids must be non-negative, got {self.stop_token_ids!r}"),
            (budget is None or (_is_int(budget) and budget >= 0),
             f"max_reasoning_tokens must be a non-negative integer or None, got {budget!r}"),
        ]
        for ok, msg in checks:
            if not ok:
                raise SamplingError(msg)

    @property
    def greedy(self) -> bool:
        # below GREEDY_EPS, logits / T overflows to inf/nan (1e-300 sampled garbage): argmax, as vLLM does
        return self.temperature < GREEDY_EPS

    @property
    def truncates(self) -> bool:
        """Whether top-k/top-p/min-p remove any token (else sampling needs no sort)."""
        return self.top_p < 1 or self.top_k > 0 or self.min_p > 0


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and x == x  # rejects NaN


# ----------------------------------------------------------------------------- seeds
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & MASK_64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & MASK_64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & MASK_64
    return x ^ (x >> 31)


def sequence_seed(seed: int, index: int) -> int:
    """A well-mixed 63-bit seed for completion ``index`` of a request seeded with ``seed``."""
    return _splitmix64(_splitmix64(seed) ^ index) >> (64 - SEED_BITS)


def make_generator(seed: int | None, index: int, device="cpu") -> torch.Generator:
    """One generator per sequence. seed None: a fresh base seed from torch's global RNG
    (so ``torch.manual_seed`` still makes a whole run reproducible)."""
    if seed is None:
        seed = int(torch.randint(0, 2**62, (1,)).item())
    return torch.Generator(device=device).manual_seed(sequence_seed(seed, index))


# -------------------------------------------------------------------------- sampling
@dataclass
class SampleResult:
    token_ids: torch.Tensor               # (N,) int64
    logprobs: torch.Tensor                # (N,) log_softmax(raw logits)[token]
    sampling_logprobs: torch.Tensor       # (N,) log p of the token under the processed distribution (0 for greedy)
    top_ids: torch.Tensor | None = None   # (N, K) the K most likely ids under the raw distribution
    top_logprobs: torch.Tensor | None = None


def sample(logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator],
           top_logprobs: int = 0, forced: Sequence[int | None] | None = None) -> SampleResult:
    """Pick one token per row of ``logits`` (N, V), row i with ``params[i]`` and ``generators[i]``.

    Greedy rows take the argmax and draw nothing. Sampled rows draw one uniform number from
    their own generator and invert the CDF of the processed distribution, so a row's choice
    depends only on its logits and its generator, never on the rest of the batch.
    ``forced[i]`` not None: row i takes that token and draws nothing (the thinking budget's
    closing text); its ``logprobs`` entry is still the model's own log-probability of it and
    its ``sampling_logprobs`` entry 0 (a forced token is certain).
    """
    logits = logits.float()
    N, V = logits.shape
    raw = torch.log_softmax(logits, dim=-1)
    tokens = logits.argmax(dim=-1)
    sampling_lp = torch.zeros(N, device=logits.device)
    fixed = [i for i, f in enumerate(forced or ()) if f is not None]
    rows = [i for i, p in enumerate(params) if not p.greedy and not (fixed and forced[i] is not None)]
    if rows:
        idx = torch.tensor(rows, device=logits.device)
        chosen, lp = _sample_rows(logits[idx], [params[i] for i in rows], [generators[i] for i in rows])
        tokens[idx], sampling_lp[idx] = chosen, lp
    if fixed:
        tokens[torch.tensor(fixed, device=logits.device)] = torch.tensor([forced[i] for i in fixed],
                                                                         device=logits.device)
    out = SampleResult(tokens, raw.gather(1, tokens[:, None]).squeeze(1), sampling_lp)
    if top_logprobs:
        out.top_logprobs, out.top_ids = raw.topk(min(top_logprobs, V), dim=-1)
    return out


def _sample_rows(logits, params, generators):
    """Temperature, then top-k, top-p and min-p on the sorted distribution; inverse-CDF draw.
    Rows that truncate nothing (top_p 1, no top-k, min_p 0) skip the sort over the vocabulary."""
    plain = [i for i, p in enumerate(params) if not p.truncates]
    if len(plain) == len(params):   # per row, so a row's draw never depends on its batch
        temp = torch.tensor([p.temperature for p in params], device=logits.device)
        probs = torch.softmax(logits / temp[:, None], dim=-1)
        tokens = draw(probs, generators)
        return tokens, probs.gather(1, tokens[:, None]).squeeze(1).log()
    if plain:
        rest = [i for i in range(len(params)) if i not in set(plain)]
        tokens = torch.empty(len(params), dtype=torch.long, device=logits.device)
        lps = torch.empty(len(params), device=logits.device)
        for rows in (plain, rest):
            idx = torch.tensor(rows, device=logits.device)
            tokens[idx], lps[idx] = _sample_rows(logits[idx], [params[i] for i in rows], [generators[i] for i in rows])
        return tokens, lps
    V = logits.shape[1]
    probs, order = _processed_sorted(logits, params)
    cdf = probs.cumsum(-1)
    u = _uniforms(generators, logits.device)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1).clamp(max=V - 1)
    pick = torch.where(probs.gather(1, pick[:, None]).squeeze(1) > 0, pick, torch.zeros_like(pick))
    return order.gather(1, pick[:, None]).squeeze(1), probs.gather(1, pick[:, None]).squeeze(1).log()


def _processed_sorted(logits, params):
    """(probs sorted descending after temperature/top-k/top-p/min-p, the vocabulary order)."""
    dev = logits.device
    V = logits.shape[1]
    temp = torch.tensor([p.temperature for p in params], device=dev)
    top_k = torch.tensor([p.top_k if p.top_k > 0 else V for p in params], device=dev)
    top_p = torch.tensor([p.top_p for p in params], device=dev)
    min_p = torch.tensor([p.min_p for p in params], device=dev)
    sorted_logits, order = (logits / temp[:, None]).sort(dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    rank = torch.arange(V, device=dev)[None, :]
    drop = rank >= top_k[:, None]
    drop |= (probs.cumsum(-1) - probs) >= top_p[:, None]          # mass before this token already >= top_p
    drop |= probs < min_p[:, None] * probs[:, :1]
    drop[:, 0] = False                                           # the most likely token always survives
    probs = probs.masked_fill(drop, 0.0)
    return probs / probs.sum(-1, keepdim=True), order


def _uniforms(generators, device) -> torch.Tensor:
    return torch.stack([torch.rand((), generator=g, device=g.device) for g in generators]).to(device)


# ------------------------------------------------------------- speculative decoding
def processed_probs(logits: torch.Tensor, params: Sequence[SamplingParams]) -> torch.Tensor:
    """(N, V) the distribution ``sample`` draws row i from, in vocabulary order; a greedy
    row is one-hot on its argmax (the same argmax ``sample`` takes)."""
    logits = logits.float()
    N, V = logits.shape
    out = torch.zeros(N, V, device=logits.device)
    greedy = [i for i, p in enumerate(params) if p.greedy]
    if greedy:
        g = torch.tensor(greedy, device=logits.device)
        out[g, logits[g].argmax(dim=-1)] = 1.0
    plain = [i for i, p in enumerate(params) if not p.greedy and not p.truncates]
    if plain:   # nothing truncated: softmax(logits / T), no sort
        idx = torch.tensor(plain, device=logits.device)
        temp = torch.tensor([params[i].temperature for i in plain], device=logits.device)
        out[idx] = torch.softmax(logits[idx] / temp[:, None], dim=-1)
    rows = [i for i, p in enumerate(params) if not p.greedy and i not in set(plain)]
    if rows:
        idx = torch.tensor(rows, device=logits.device)
        probs, order = _processed_sorted(logits[idx], [params[i] for i in rows])
        out[idx] = torch.zeros_like(probs).scatter_(1, order, probs)
    return out


def draw(probs: torch.Tensor, generators: Sequence[torch.Generator]) -> torch.Tensor:
    """One token per row of ``probs`` (N, V) by inverse CDF with one uniform from the row's
    generator; a one-hot row gives its token whatever the draw."""
    V = probs.shape[1]
    cdf = probs.cumsum(-1)
    u = _uniforms(generators, probs.device)
    pick = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True).squeeze(1).clamp(max=V - 1)
    ok = probs.gather(1, pick[:, None]).squeeze(1) > 0
    return torch.where(ok, pick, probs.argmax(dim=-1))


def speculative_accept(p: torch.Tensor, q: torch.Tensor, drafts: torch.Tensor,
                       generators: Sequence[torch.Generator]) -> tuple[torch.Tensor, torch.Tensor]:
    """The standard speculative-sampling rule (Leviathan et al. 2023; Chen et al. 2023).

    Row i proposed ``drafts[i]`` ~ ``q[i]``; the target distribution is ``p[i]``. Accept with
    probability min(1, p(d)/q(d)); on rejection draw from norm(max(0, p − q)). The token
    that comes out is distributed exactly as ``p`` — so speculative decoding never changes
    what is sampled, and with one-hot (greedy) p and q it returns argmax p.
    Returns (token per row, accepted per row)."""
    d = drafts[:, None]
    pd, qd = p.gather(1, d).squeeze(1), q.gather(1, d).squeeze(1)
    u = _uniforms(generators, p.device)
    accepted = u * qd < pd
    residual = (p - q).clamp(min=0)
    empty = residual.sum(-1, keepdim=True) <= 0          # p == q: a rejection cannot happen
    residual = torch.where(empty, p, residual)
    fallback = draw(residual / residual.sum(-1, keepdim=True), generators)
    return torch.where(accepted, drafts, fallback), accepted
