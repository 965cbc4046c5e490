"""GRPO objective as pure tensor functions (SPEC §3): advantages, clipped surrogate, k3 KL.

No model and no engine here: the trainer computes per-token log-probabilities (with
:func:`token_logprobs`) and hands them to :func:`grpo_loss` together with the
old-policy / reference log-probabilities, the per-completion advantages (from
:func:`group_advantages`) and the completion mask.

Conventions, stated once
------------------------
* **Layout.** Rewards are ordered group by group: ``rewards[g*G:(g+1)*G]`` are the G
  samples of prompt ``g`` (``N = groups × G``). Per-token tensors are ``(B, T)`` over the
  *completion* tokens only, ``mask`` is 1 on real completion tokens and 0 on padding.
* **Advantages** (:func:`group_advantages`), all computed in at least float32:

  - ``"group_std"`` — DeepSeek-R1 / GRPO (SPEC §3): ``(r − mean_g) / (std_g + eps)``.
    ``std_g`` is the **sample** (unbiased, ``N−1``) standard deviation within the group,
    as ``torch.std`` computes it and as TRL's GRPOTrainer does. (With G = 1 the sample std
    is undefined; the advantage is then 0, which it is anyway since ``r = mean_g``.)
  - ``"group_mean"`` — Dr. GRPO: ``r − mean_g``, no std division.
  - ``"batch_std"`` — REINFORCE++-baseline style "batch-level" normalisation:
    ``c = r − mean_g`` (group baseline), then ``c / (std(c over the whole batch) + eps)``
    with the same sample-std convention. Its mean is already 0, so it is not re-centred.

  A zero-variance group (all rewards equal) gets advantages of **exactly** 0 in every
  mode: this is enforced explicitly (a float mean of equal values need not reproduce
  them bit-exactly), so such groups contribute exactly zero policy gradient.
  There is deliberately no raw-reward mode: it would violate that property.
* **Per-token objective** (maximised): ``ρ = exp(logπ − logπ_old)``;
  ``surrogate = min(ρ·A, clip(ρ, 1−ε_low, 1+ε_high)·A)``; k3 KL to the reference
  ``KL = exp(ref − logπ) − (ref − logπ) − 1`` (SPEC §3, ≥ 0, unbiased for KL(π‖π_ref));
  ``objective = surrogate − β·KL`` and ``loss = −aggregate(objective)``.
  ``old_logprobs`` and ``ref_logprobs`` are constants (detached here).
* **Clip bounds.** ``ε_high`` defaults to ``ε_low`` (symmetric PPO clip); DAPO's
  "clip-higher" uses e.g. ε_low 0.2 / ε_high 0.28. With R1's very large first-stage
  clip (ε = 10) the lower bound ``1 − ε`` is negative; since ``ρ > 0`` it can never be
  active, so the clip is then one-sided (upper bound 11). No special case is needed; the
  lower bound is used as ``max(1 − ε_low, 0)``, which is the same thing.
* **Aggregation** (``loss_agg``):

  - ``"seq_mean"`` — R1 / GRPO paper: ``1/B Σ_i 1/|o_i| Σ_t`` (mean over sequences of
    per-sequence token means). A row with no completion token contributes 0 but still
    counts in ``B``.
  - ``"token_mean"`` — DAPO token-level normalisation: ``Σ_i Σ_t / Σ_i |o_i|``.
  - ``"constant"`` — Dr. GRPO: ``Σ_i Σ_t / (B · max_tokens)`` where ``max_tokens`` is the
    generation budget (a constant, independent of the sampled lengths); required.

  For gradient accumulation pass ``denominator`` = the normaliser of the *whole* batch
  (total sequences for ``seq_mean``, total completion tokens for ``token_mean``,
  total sequences × max_tokens for ``constant``): the micro-batch losses then sum to the
  full-batch loss exactly.
* **Clip fraction.** A token is *clipped* when the clipped term is the strict minimum,
  ``ρ·A > clip(ρ)·A`` — exactly the tokens whose surrogate gradient is cut to 0. For
  ``A ≠ 0`` that is ``ρ < 1−ε_low and A < 0`` (low clip) or ``ρ > 1+ε_high and A > 0``
  (high clip); ``A = 0`` tokens are never clipped. Fractions are over masked tokens.
* **Numerics.** Everything is computed in float32 (float64 stays float64) even if the
  inputs are bf16. Log-ratios (``logπ − logπ_old`` and ``ref − logπ``) are clamped to
  ``[−20, 20]`` before ``exp`` (``e^20 ≈ 4.9e8``) so nothing overflows to inf; a token
  beyond that range receives no gradient through the clamped term (such a token is
  clipped anyway, or its unclipped gradient ``ρ·A ≤ 2e-9·A`` is negligible). Padding
  positions are selected away with ``torch.where`` *before* any ``exp``, so garbage
  (even ±inf / NaN) at masked positions yields exactly zero gradient and no NaN.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = [
    "ADVANTAGE_MODES",
    "LOSS_AGGREGATIONS",
    "LOG_RATIO_CLAMP",
    "group_advantages",
    "zero_variance_groups",
    "grpo_loss",
    "loss_normaliser",
    "masked_entropy",
    "token_logprobs",
]

ADVANTAGE_MODES = ("group_std", "group_mean", "batch_std")
LOSS_AGGREGATIONS = ("seq_mean", "token_mean", "constant")
LOG_RATIO_CLAMP = 20.0

# Target number of float32 elements materialised per chunk in the chunked helpers
# (2**24 floats = 64 MiB).
_CHUNK_ELEMENTS = 1 << 24


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32, or float64 when the input already is float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _grouped(rewards: Tensor, group_size: int) -> Tensor:
    if rewards.dim() != 1:
        raise ValueError(f"rewards must be 1-D (N,), got shape {tuple(rewards.shape)}")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    if rewards.numel() % group_size:
        raise ValueError(f"{rewards.numel()} rewards are not a whole number of groups of {group_size}")
    return rewards.reshape(-1, group_size)


def zero_variance_groups(rewards: Tensor, group_size: int) -> Tensor:
    """``(groups,)`` bool: True where every reward of the group is equal.

    These groups carry no GRPO signal; DAPO's dynamic sampling drops them, and their share
    is the "zero-variance groups" metric (SPEC §4b).
    """
    g = _grouped(rewards, group_size)
    return g.amax(dim=1) == g.amin(dim=1)


def group_advantages(rewards: Tensor, group_size: int, mode: str = "group_std", eps: float = 1e-4) -> Tensor:
    """Per-completion advantages ``(N,)`` from rewards ``(N,)`` ordered group by group.

    Modes (see the module docstring): ``"group_std"`` (R1: ``(r − mean_g)/(std_g + eps)``,
    sample std), ``"group_mean"`` (Dr. GRPO: ``r − mean_g``), ``"batch_std"``
    (``(r − mean_g)/(std_batch(r − mean_g) + eps)``). All-equal groups get exactly 0.
    """
    if mode not in ADVANTAGE_MODES:
        raise ValueError(f"unknown advantage mode {mode!r}; expected one of {ADVANTAGE_MODES}")
    g = _grouped(rewards, group_size).to(_compute_dtype(rewards.dtype))
    flat_zero = zero_variance_groups(rewards, group_size)[:, None]  # (groups, 1)
    centred = g - g.mean(dim=1, keepdim=True)
    centred = torch.where(flat_zero, torch.zeros_like(centred), centred)
    if mode == "group_mean":
        adv = centred
    elif mode == "group_std":
        if group_size > 1:
            std = g.std(dim=1, keepdim=True)  # unbiased (sample) std, like torch.std / TRL
        else:
            std = torch.zeros_like(g)
        adv = centred / (std + eps)
    else:  # batch_std
        std = centred.std() if centred.numel() > 1 else centred.new_zeros(())
        adv = centred / (std + eps)
    adv = torch.where(flat_zero, torch.zeros_like(adv), adv)  # exactly 0, whatever eps / std
    return adv.reshape(-1)


def loss_normaliser(loss_agg: str, lengths, max_tokens: int | None = None) -> float:
    """The aggregation normaliser of a batch of completions with these ``lengths`` (the
    default of ``grpo_loss``; pass it as ``denominator`` to every micro-batch of a
    mini-batch so their losses sum to the whole mini-batch's): sequences for ``seq_mean``,
    tokens for ``token_mean``, sequences × ``max_tokens`` for ``constant``."""
    lengths = [float(x) for x in lengths]
    if loss_agg == "seq_mean":
        return float(len(lengths))
    if loss_agg == "token_mean":
        return max(1.0, sum(lengths))
    if loss_agg == "constant":
        return float(len(lengths) * max_tokens)
    raise ValueError(f"unknown loss_agg {loss_agg!r}; choose one of {', '.join(LOSS_AGGREGATIONS)}")


def grpo_loss(
    logprobs: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    mask: Tensor,
    *,
    ref_logprobs: Tensor | None = None,
    beta: float = 0.0,
    eps_low: float = 0.2,
    eps_high: float | None = None,
    loss_agg: str = "seq_mean",
    max_tokens: int | None = None,
    denominator: float | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """Clipped GRPO loss (to minimise) and detached logging stats.

    Args:
        logprobs: ``(B, T)`` log π_θ of the sampled completion tokens (with grad).
        old_logprobs: ``(B, T)`` log π_old of the same tokens (rollout policy; constant).
        advantages: ``(B,)`` one advantage per completion, shared by all its tokens.
        mask: ``(B, T)`` 1 / True on completion tokens, 0 on padding.
        ref_logprobs: ``(B, T)`` log π_ref, required when ``beta > 0``.
        beta: weight of the k3 KL penalty (R1: 0.001; 0 disables it).
        eps_low, eps_high: clip range ``[1 − eps_low, 1 + eps_high]``; eps_high
            defaults to eps_low.
        loss_agg: ``"seq_mean"`` (R1), ``"token_mean"`` (DAPO) or ``"constant"``
            (Dr. GRPO, needs ``max_tokens``).
        max_tokens: generation budget (max completion tokens) for ``"constant"``.
        denominator: optional override of the aggregation normaliser, for gradient
            accumulation (see module docstring).

    Returns:
        ``(loss, stats)``: a float32 scalar and a dict of Python floats:
        ``loss``, ``policy_loss`` (−aggregate(surrogate)), ``kl_loss``
        (aggregate(KL), only with a reference), ``kl`` (masked token-mean k3 KL to the
        reference, only with a reference), ``clip_frac`` / ``clip_low_frac`` /
        ``clip_high_frac``, ``ratio_mean`` / ``ratio_min`` / ``ratio_max`` (masked),
        ``approx_kl_old`` (masked token-mean k3 KL(π_θ‖π_old), a PPO step-size
        diagnostic), ``adv_mean`` / ``adv_std`` / ``adv_min`` / ``adv_max`` (over
        completions), ``tokens`` (number of completion tokens), ``seq_len_mean``.
    """
    if loss_agg not in LOSS_AGGREGATIONS:
        raise ValueError(f"unknown loss_agg {loss_agg!r}; expected one of {LOSS_AGGREGATIONS}")
    if logprobs.dim() != 2:
        raise ValueError(f"logprobs must be (B, T), got shape {tuple(logprobs.shape)}")
    B, T = logprobs.shape
    for name, t in (("old_logprobs", old_logprobs), ("mask", mask), ("ref_logprobs", ref_logprobs)):
        if t is not None and tuple(t.shape) != (B, T):
            raise ValueError(f"{name} must have shape {(B, T)}, got {tuple(t.shape)}")
    if tuple(advantages.shape) != (B,):
        raise ValueError(f"advantages must have shape {(B,)}, got {tuple(advantages.shape)}")
    if beta < 0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    if beta > 0 and ref_logprobs is None:
        raise ValueError("beta > 0 needs ref_logprobs")
    if eps_high is None:
        eps_high = eps_low
    if eps_low < 0 or eps_high < 0:
        raise ValueError(f"clip epsilons must be >= 0, got eps_low={eps_low}, eps_high={eps_high}")
    if loss_agg == "constant" and (max_tokens is None or max_tokens <= 0):
        raise ValueError("loss_agg='constant' (Dr. GRPO) needs max_tokens = the generation budget (> 0)")

    dtype = _compute_dtype(logprobs.dtype)
    m = mask.bool()
    mf = m.to(dtype)
    lp = logprobs.to(dtype)
    old = old_logprobs.detach().to(dtype)
    adv = advantages.detach().to(dtype)[:, None]  # (B, 1)
    zero = torch.zeros((), dtype=dtype, device=lp.device)

    # Policy ratio; masked positions are replaced by log-ratio 0 before exp (no NaN/inf).
    log_ratio = torch.where(m, lp - old, zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    ratio = torch.exp(log_ratio)
    lower = max(1.0 - eps_low, 0.0)  # 1 − ε < 0 (R1's ε = 10) can never bind since ρ > 0
    upper = 1.0 + eps_high
    clipped_ratio = ratio.clamp(lower, upper)
    unclipped_obj = ratio * adv
    clipped_obj = clipped_ratio * adv
    surrogate = torch.minimum(unclipped_obj, clipped_obj)

    objective = surrogate
    kl = None
    if ref_logprobs is not None:
        ref = ref_logprobs.detach().to(dtype)
        d = torch.where(m, ref - lp, zero).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
        kl = torch.exp(d) - d - 1.0  # k3 estimator, >= 0
        if beta > 0:
            objective = surrogate - beta * kl

    lengths = mf.sum(dim=1)  # (B,)
    n_tokens = mf.sum()
    if denominator is None:
        denominator = loss_normaliser(loss_agg, lengths.tolist(), max_tokens)

    def aggregate(x: Tensor) -> Tensor:
        x = torch.where(m, x, zero)
        if loss_agg == "seq_mean":
            x = x / lengths.clamp(min=1.0)[:, None]
        return x.sum() / denominator

    loss = -aggregate(objective)

    # ---- detached statistics (one device sync) ----
    with torch.no_grad():
        ntok = n_tokens.clamp(min=1.0)
        low = m & (ratio < lower) & (adv < 0)
        high = m & (ratio > upper) & (adv > 0)
        clipped = m & (unclipped_obj > clipped_obj)
        big = torch.finfo(dtype).max
        a = adv[:, 0]
        names = [
            "loss", "policy_loss", "clip_frac", "clip_low_frac", "clip_high_frac",
            "ratio_mean", "ratio_min", "ratio_max", "approx_kl_old",
            "adv_mean", "adv_std", "adv_min", "adv_max", "tokens", "seq_len_mean",
        ]
        values = [
            loss.detach(),
            -aggregate(surrogate.detach()),
            clipped.to(dtype).sum() / ntok,
            low.to(dtype).sum() / ntok,
            high.to(dtype).sum() / ntok,
            (ratio * mf).sum() / ntok,
            torch.where(m, ratio, torch.full_like(ratio, big)).amin() if m.any() else zero + 1.0,
            torch.where(m, ratio, torch.full_like(ratio, -big)).amax() if m.any() else zero + 1.0,
            ((torch.exp(-log_ratio) + log_ratio - 1.0) * mf).sum() / ntok,
            a.mean() if B else zero,
            a.std() if B > 1 else zero,
            a.min() if B else zero,
            a.max() if B else zero,
            n_tokens,
            lengths.mean() if B else zero,
        ]
        if kl is not None:
            names += ["kl", "kl_loss"]
            values += [(kl * mf).sum() / ntok, aggregate(kl.detach())]
        stats = dict(zip(names, torch.stack([v.to(dtype).reshape(()) for v in values]).tolist()))
    return loss, stats


def masked_entropy(logits: Tensor, mask: Tensor, chunk_size: int | None = None) -> float:
    """Mean policy entropy (nats) over the masked positions of ``logits (B, T, V)``.

    Computed without grad, in float32, over the selected positions in chunks of
    ``chunk_size`` rows (default: about 16M floats per chunk) so the full float32
    softmax is never materialised. Returns 0.0 when the mask is empty.
    """
    if logits.dim() != 3 or tuple(mask.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"need logits (B, T, V) and mask (B, T), got {tuple(logits.shape)}, {tuple(mask.shape)}")
    V = logits.shape[-1]
    with torch.no_grad():
        flat = logits.reshape(-1, V)
        idx = mask.reshape(-1).bool().nonzero(as_tuple=True)[0]
        n = idx.numel()
        if n == 0:
            return 0.0
        step = chunk_size or max(1, _CHUNK_ELEMENTS // V)
        total = torch.zeros((), dtype=torch.float64, device=logits.device)
        for s in range(0, n, step):
            x = flat.index_select(0, idx[s : s + step]).to(_compute_dtype(logits.dtype))
            logp = torch.log_softmax(x, dim=-1)
            h = -(logp.exp() * logp).sum(dim=-1)
            total += h.sum().double()
        return float(total / n)


class _TokenLogprobs(torch.autograd.Function):
    """log_softmax(logits.float()).gather(tokens), chunked over T, with a recomputing backward.

    The forward is bit-identical to the plain expression (same op on the same rows). Only
    ``logits`` (in its own dtype) is saved; the backward recomputes the softmax per chunk,
    so no (B, T, V) float32 tensor is kept alive between forward and backward.
    """

    @staticmethod
    def forward(ctx, logits: Tensor, tokens: Tensor, step: int) -> Tensor:  # type: ignore[override]
        B, T, _ = logits.shape
        out = torch.empty((B, T), dtype=_compute_dtype(logits.dtype), device=logits.device)
        for s in range(0, T, step):
            lp = torch.log_softmax(logits[:, s : s + step].to(out.dtype), dim=-1)
            out[:, s : s + step] = lp.gather(-1, tokens[:, s : s + step, None]).squeeze(-1)
        ctx.save_for_backward(logits, tokens)
        ctx.step = step
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: Tensor):  # type: ignore[override]
        logits, tokens = ctx.saved_tensors
        step = ctx.step
        grad = torch.empty_like(logits)
        T = logits.shape[1]
        for s in range(0, T, step):
            g = grad_out[:, s : s + step, None].to(_compute_dtype(logits.dtype))
            p = torch.softmax(logits[:, s : s + step].to(g.dtype), dim=-1)
            gl = -p * g
            gl.scatter_add_(-1, tokens[:, s : s + step, None], g)
            grad[:, s : s + step] = gl.to(logits.dtype)
        return grad, None, None


def token_logprobs(logits: Tensor, tokens: Tensor, chunk_size: int | None = None) -> Tensor:
    """Log-probability ``(B, T)`` (float32) of ``tokens (B, T)`` under ``logits (B, T, V)``.

    Equals ``torch.log_softmax(logits.float(), -1).gather(-1, tokens[..., None]).squeeze(-1)``
    exactly (float64 logits stay float64). Chunked over T (``chunk_size`` positions at a
    time; default about 16M floats per chunk); differentiable w.r.t. ``logits`` with a
    memory-friendly backward (gradient ``onehot(token) − softmax``, recomputed per chunk).
    ``tokens`` must be valid ids everywhere (put any id, e.g. 0, at padding positions).
    """
    if logits.dim() != 3 or tuple(tokens.shape) != tuple(logits.shape[:2]):
        raise ValueError(f"need logits (B, T, V) and tokens (B, T), got {tuple(logits.shape)}, {tuple(tokens.shape)}")
    B, T, V = logits.shape
    step = chunk_size or max(1, _CHUNK_ELEMENTS // max(1, B * V))
    step = max(1, min(step, T)) if T else 1
    tokens = tokens.long()
    if logits.requires_grad and torch.is_grad_enabled():
        return _TokenLogprobs.apply(logits, tokens, step)
    with torch.no_grad():
        return _TokenLogprobs.forward(_NoCtx(), logits, tokens, step)


class _NoCtx:
    """Stand-in autograd context for the no-grad path."""

    def save_for_backward(self, *args) -> None:  # noqa: D401 - trivial
        pass

