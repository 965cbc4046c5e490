"""Pieces shared by the DeepSeek-V3 model and the dense students.

RMSNorm, the SwiGLU feed-forward, rotary embeddings (default, linear, YaRN, Llama-3
scaling; interleaved and half-split layouts) and the output record of a forward pass.
Formulas: SPEC §2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig, yarn_mscale

IGNORE_INDEX = -100  # label value that contributes no loss


@dataclass
class ModelOutput:
    """What a forward pass returns. ``logits`` is always set.

    balance_loss: sequence-wise balance loss Σ_i f_i P_i summed over MoE layers and
        averaged over sequences, *not* multiplied by α (the trainer does that).
    loss / mtp_loss: cross entropies, only when ``labels`` are given.
    """

    logits: torch.Tensor
    loss: torch.Tensor | None = None
    mtp_loss: torch.Tensor | None = None
    balance_loss: torch.Tensor | None = None
    hidden_states: torch.Tensor | None = None

    # Let ``model(ids)[0]`` and tuple-unpacking code written for transformers work too.
    def __getitem__(self, i):
        return self.logits if i == 0 else (self.loss, self.mtp_loss, self.balance_loss)[i - 1]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x.to(dtype)


class MLP(nn.Module):
    """SwiGLU feed-forward: down(silu(gate(x)) * up(x))."""

    def __init__(self, dim: int, inter: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(dim, inter, bias=bias)
        self.up_proj = nn.Linear(dim, inter, bias=bias)
        self.down_proj = nn.Linear(inter, dim, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


# ------------------------------------------------------------------ rotary embeddings
def rope_frequencies(cfg: ModelConfig, dim: int) -> tuple[torch.Tensor, float]:
    """Inverse frequencies (dim/2,) and the cos/sin scale for the configured RoPE type.

    YaRN follows the published DeepSeek code and transformers (ramp between the
    beta_fast/beta_slow correction dims, interpolation by `factor` outside it).
    """
    base = float(cfg.rope_theta)
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim))
    rs = cfg.rope_scaling or {}
    rtype = cfg.rope_type
    if rtype == "default":
        return inv_freq.float(), 1.0
    factor = float(rs["factor"])
    if rtype == "linear":
        return (inv_freq / factor).float(), 1.0
    if rtype == "llama3":
        low, high = float(rs["low_freq_factor"]), float(rs["high_freq_factor"])
        old_ctx = float(rs["original_max_position_embeddings"])
        low_wavelen, high_wavelen = old_ctx / low, old_ctx / high
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_ctx / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
        return torch.where(medium, smoothed, scaled).float(), 1.0
    # yarn
    old_ctx = rs.get("original_max_position_embeddings", cfg.max_position_embeddings)
    beta_fast, beta_slow = rs.get("beta_fast") or 32, rs.get("beta_slow") or 1
    mscale, mscale_all_dim = rs.get("mscale"), rs.get("mscale_all_dim")
    if rs.get("attention_factor") is not None:
        attn_factor = float(rs["attention_factor"])
    elif mscale and mscale_all_dim:
        attn_factor = yarn_mscale(factor, mscale) / yarn_mscale(factor, mscale_all_dim)
    else:
        attn_factor = yarn_mscale(factor)

    def correction_dim(rotations: float) -> float:
        return dim * math.log(old_ctx / (rotations * 2 * math.pi)) / (2 * math.log(base))

    lo, hi = correction_dim(beta_fast), correction_dim(beta_slow)
    if rs.get("truncate", True):
        lo, hi = math.floor(lo), math.ceil(hi)
    lo, hi = max(lo, 0), min(hi, dim - 1)
    if lo == hi:
        hi += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float32) - lo) / (hi - lo)).clamp(0, 1)
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    keep = 1 - ramp  # 1: keep the original frequency (high-frequency dims)
    return interpolation * (1 - keep) + extrapolation * keep, attn_factor


def softmax_scale(cfg: ModelConfig, head_dim: int) -> float:
    """1/sqrt(d), times mscale² under YaRN with mscale_all_dim (SPEC §2)."""
    scale = head_dim ** -0.5
    rs = cfg.rope_scaling or {}
    if cfg.rope_type == "yarn" and rs.get("mscale_all_dim"):
        m = yarn_mscale(float(rs["factor"]), float(rs["mscale_all_dim"]))
        scale = scale * m * m
    return scale


class Rotary(nn.Module):
    """cos/sin for given positions. Buffers are not saved in checkpoints."""

    def __init__(self, cfg: ModelConfig, dim: int, interleave: bool):
        super().__init__()
        inv_freq, self.attn_factor = rope_frequencies(cfg, dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)
        self.interleave = interleave

    def forward(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # positions (B, T) -> cos, sin (B, T, dim/2)
        freqs = positions[..., None].float() * self.inv_freq.to(positions.device)
        return freqs.cos() * self.attn_factor, freqs.sin() * self.attn_factor


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleave: bool) -> torch.Tensor:
    """Rotate ``x`` (B, T, H, d) by cos/sin (B, T, d/2).

    interleave=True: pairs (x0,x1),(x2,x3)… as the official DeepSeek code (complex multiply);
    False: halves (x[:d/2], x[d/2:]) as Llama/Qwen and transformers' `rope_interleave=False`.
    The output keeps the input layout, so cached keys stay in checkpoint order.
    """
    cos, sin = cos.unsqueeze(-2).to(x.dtype), sin.unsqueeze(-2).to(x.dtype)
    if interleave:
        x1, x2 = x[..., 0::2], x[..., 1::2]
        return torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def causal_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross entropy; ``labels`` are aligned with ``logits`` (already shifted)."""
    return F.cross_entropy(logits.flatten(0, -2).float(), labels.flatten(), ignore_index=IGNORE_INDEX)


def default_positions(input_ids: torch.Tensor, cache) -> torch.Tensor:
    start = 0 if cache is None else cache.seq_len()
    t = input_ids.shape[1]
    return torch.arange(start, start + t, device=input_ids.device).expand(input_ids.shape[0], t)


def causal_mask(t: int, s: int, device=None) -> torch.Tensor:
    """(t, s) boolean "may attend" mask for t new tokens at the end of s positions."""
    i = torch.arange(t, device=device).unsqueeze(1) + (s - t)
    return torch.arange(s, device=device).unsqueeze(0) <= i


@torch.no_grad()
def init_weights(module: nn.Module, std: float) -> None:
    """Normal(0, std) for matrices and embeddings, zeros for biases, ones for norms.
    Modules with their own parameters (router, fused experts) define ``init_weights``."""
    for m in module.modules():
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=std)
            if getattr(m, "bias", None) is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, RMSNorm):
            nn.init.ones_(m.weight)
        elif hasattr(m, "init_weights"):
            m.init_weights(std)
