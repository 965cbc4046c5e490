"""DeepSeek-V3: Multi-head Latent Attention + DeepSeekMoE + Multi-Token Prediction.

Read top to bottom: attention, router, experts, MoE, block, MTP, model. Every formula
is SPEC §2. Module and parameter names are the Hugging Face ``DeepseekV3ForCausalLM``
names, so a state dict maps 1:1 onto a checkpoint (see checkpoint.py for the few
renames: per-expert tensors and the shared MTP head).

Shape legend: B batch, T new tokens, S cached+new tokens, H heads, D hidden,
r kv_lora_rank, dn qk_nope_head_dim, dr qk_rope_head_dim, dv v_head_dim,
N tokens (B·T), E routed experts, K experts per token, G expert groups.

The cache seam (DESIGN.md): ``forward(..., cache=c)`` calls
``c.update(layer_idx, c_kv, k_rope) -> (c_kv_all, k_rope_all, mask)`` where the
returned tensors are (B, S, r) and (B, S, dr) and ``mask`` is a boolean
(B, 1, T, S) "may attend" mask or None when every cached token is visible.
The engine owns the cache; with a cache, attention always runs in absorbed form.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .common import (
    MLP, ModelOutput, RMSNorm, Rotary, apply_rope, causal_lm_loss, causal_mask, default_positions, init_weights,
    softmax_scale,
)


# ------------------------------------------------------------------------ attention
class MLA(nn.Module):
    """Multi-head Latent Attention. Training form expands per-head keys/values from the
    latent; absorbed form folds W_UK into the query and W_UV after the weighted sum, so
    only c_kv (r) and k_rope (dr) per token are ever needed (SPEC §2)."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads = cfg.num_attention_heads
        self.dn, self.dr, self.dv = cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        self.kv_lora_rank = cfg.kv_lora_rank
        self.interleave = cfg.rope_interleave
        H, D, bias = self.n_heads, cfg.hidden_size, cfg.attention_bias
        if cfg.q_lora_rank is None:
            self.q_proj = nn.Linear(D, H * (self.dn + self.dr), bias=False)
        else:
            self.q_a_proj = nn.Linear(D, cfg.q_lora_rank, bias=bias)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_b_proj = nn.Linear(cfg.q_lora_rank, H * (self.dn + self.dr), bias=False)
        self.kv_a_proj_with_mqa = nn.Linear(D, self.kv_lora_rank + self.dr, bias=bias)
        self.kv_a_layernorm = RMSNorm(self.kv_lora_rank, cfg.rms_norm_eps)
        self.kv_b_proj = nn.Linear(self.kv_lora_rank, H * (self.dn + self.dv), bias=False)
        self.o_proj = nn.Linear(H * self.dv, D, bias=bias)
        self.scale = softmax_scale(cfg, self.dn + self.dr)

    def forward(self, x, cos, sin, cache=None, absorbed: bool = False):
        B, T, _ = x.shape
        H = self.n_heads
        q, kv = self.project_inputs(x)
        if hasattr(self, "q_a_proj"):
            q = self.q_b_proj(self.q_a_layernorm(q))
        q_nope, q_rope = q.view(B, T, H, self.dn + self.dr).split([self.dn, self.dr], dim=-1)
        q_rope = apply_rope(q_rope, cos, sin, self.interleave)                   # (B, T, H, dr)
        c_kv, k_rope = kv.split([self.kv_lora_rank, self.dr], dim=-1)
        c_kv = self.kv_a_layernorm(c_kv)                                         # (B, T, r)
        k_rope = apply_rope(k_rope.unsqueeze(2), cos, sin, self.interleave).squeeze(2)  # (B, T, dr)
        if cache is not None:
            c_kv, k_rope, mask = cache.update(self.layer_idx, c_kv, k_rope)
            out = self.attend_absorbed(q_nope, q_rope, c_kv, k_rope, mask, causal=False)
        elif absorbed:
            out = self.attend_absorbed(q_nope, q_rope, c_kv, k_rope, None, causal=True)
        else:
            out = self.attend_expanded(q_nope, q_rope, c_kv, k_rope)
        return self.o_proj(out.reshape(B, T, H * self.dv))

    @property
    def q_input(self) -> nn.Linear:
        """The query projection that reads x: q_proj, or q_a_proj (the q latent) under q-LoRA."""
        return self.q_proj if hasattr(self, "q_proj") else self.q_a_proj

    def project_inputs(self, x):
        """The two projections that read x: q (or the q latent under q-LoRA) and [c_kv ; k_rope]."""
        return self.q_input(x), self.kv_a_proj_with_mqa(x)

    def attend_expanded(self, q_nope, q_rope, c_kv, k_rope):
        """Training form: per-head k = [W_UK c_kv ; k_rope], v = W_UV c_kv."""
        B, T, H, _ = q_nope.shape
        k_nope, v = self.kv_b_proj(c_kv).view(B, T, H, self.dn + self.dv).split([self.dn, self.dv], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1).transpose(1, 2)                  # (B, H, T, dn+dr)
        k = torch.cat([k_nope, k_rope.unsqueeze(2).expand(B, T, H, self.dr)], dim=-1).transpose(1, 2)
        o = sdpa_padded_v(q, k, v.transpose(1, 2), None, True, self.scale)
        return o.transpose(1, 2)                                                 # (B, T, H, dv)

    def attend_absorbed(self, q_nope, q_rope, c_kv, k_rope, mask, causal: bool):
        """Absorbed form: scores = (q_nope W_UK)·c_kv + q_rope·k_rope; out = W_UV (p·c_kv).
        Written as multi-query attention over one shared latent head."""
        B, T, H, _ = q_nope.shape
        w = self.kv_b_proj.weight.view(H, self.dn + self.dv, self.kv_lora_rank)
        w_uk, w_uv = w[:, : self.dn], w[:, self.dn:]                              # (H, dn, r), (H, dv, r)
        q_lat = torch.einsum("bthd,hdr->bhtr", q_nope, w_uk)                      # (B, H, T, r)
        q = torch.cat([q_lat, q_rope.transpose(1, 2)], dim=-1)                   # (B, H, T, r+dr)
        kv = torch.cat([c_kv, k_rope], dim=-1).unsqueeze(1)                      # (B, 1, S, r+dr)
        S, D = kv.shape[2], kv.shape[-1]
        if mask is None and T > 1:
            mask = causal_mask(T, S, q.device)  # new tokens come last: bottom-right aligned
        # V is [c_kv ; k_rope] itself: the first r output columns are exactly p·c_kv, so the
        # fused kernel runs without building a zero-padded V (MLA has dv < dn + dr).
        k = kv.expand(B, H, S, D)
        o = F.scaled_dot_product_attention(q, k, k, attn_mask=mask, scale=self.scale)
        o_lat = o[..., : self.kv_lora_rank]                                       # (B, H, T, r)
        return torch.einsum("bhtr,hdr->bthd", o_lat, w_uv)                       # (B, T, H, dv)


def sdpa_padded_v(q, k, v, mask, causal: bool, scale: float):
    """Scaled dot-product attention. PyTorch's fused CPU/GPU kernels need V as wide as
    Q/K (MLA has dv < dn+dr); zero-padding V and slicing the output is exact and lets
    them run instead of the slow reference path (~2x faster attention on CPU)."""
    dv, dqk = v.shape[-1], q.shape[-1]
    if dv < dqk:
        v = F.pad(v, (0, dqk - dv))
    o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, scale=scale)
    return o[..., :dv] if dv < dqk else o


# --------------------------------------------------------------------------- router
class Gate(nn.Module):
    """Sigmoid router with group-limited top-k. The bias steers *selection* only; gate
    weights come from the unbiased scores (SPEC §2, auxiliary-loss-free balancing)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_routed_experts, cfg.num_experts_per_tok
        self.n_group, self.topk_group = cfg.n_group or 1, cfg.topk_group or 1
        self.norm_topk_prob, self.scaling = cfg.norm_topk_prob, cfg.routed_scaling_factor
        self.weight = nn.Parameter(torch.empty(self.n_experts, cfg.hidden_size))
        # Updated by update_bias(), never by gradients. Saved with the checkpoint; kept fp32.
        self.register_buffer("e_score_correction_bias", torch.zeros(self.n_experts, dtype=torch.float32))

    @torch.no_grad()
    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.weight, std=std)
        self.e_score_correction_bias.zero_()

    def _apply(self, fn, recurse=True):
        # model.to(bfloat16) must not round the bias: its steps are γ = 0.001 (SPEC §2).
        super()._apply(fn, recurse)
        if self.e_score_correction_bias.dtype != torch.float32:
            self.e_score_correction_bias = self.e_score_correction_bias.float()
        return self

    def forward(self, x: torch.Tensor):
        """x (N, D) -> weights (N, K), indices (N, K), scores (N, E)."""
        scores = F.linear(x.float(), self.weight.float()).sigmoid()
        biased = scores + self.e_score_correction_bias
        if self.n_group > 1:
            N, G = x.shape[0], self.n_group
            group_scores = biased.view(N, G, -1).topk(2, dim=-1).values.sum(-1)   # (N, G)
            keep = group_scores.topk(self.topk_group, dim=-1).indices
            group_mask = torch.zeros_like(group_scores, dtype=torch.bool).scatter_(1, keep, True)
            biased = biased.masked_fill(~group_mask.repeat_interleave(self.n_experts // G, dim=1), float("-inf"))
        indices = biased.topk(self.top_k, dim=-1).indices
        weights = scores.gather(1, indices)
        if self.norm_topk_prob:
            weights = weights / (weights.sum(dim=-1, keepdim=True) + 1e-20)
        return weights * self.scaling, indices, scores


# -------------------------------------------------------------------------- experts
class Experts(nn.Module):
    """E SwiGLU experts stored fused: gate_up_proj (E, 2I, D), down_proj (E, D, I).

    Tokens are grouped by expert (one sort), each expert runs one matmul on its rows,
    results are scattered back weighted by the gate. No capacity, no dropping."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        E, D, I = cfg.n_routed_experts, cfg.hidden_size, cfg.moe_intermediate_size
        self.gate_up_proj = nn.Parameter(torch.empty(E, 2 * I, D))
        self.down_proj = nn.Parameter(torch.empty(E, D, I))

    @torch.no_grad()
    def init_weights(self, std: float) -> None:
        nn.init.normal_(self.gate_up_proj, std=std)
        nn.init.normal_(self.down_proj, std=std)

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        N, K = indices.shape
        flat = indices.flatten()                                                 # (N·K,)
        order = flat.argsort(stable=True)
        counts = torch.bincount(flat, minlength=self.gate_up_proj.shape[0]).tolist()
        token = order // K
        xs = x[token]                                                            # (N·K, D) grouped by expert
        outs = []
        for e, rows in enumerate(xs.split(counts)):
            if rows.shape[0] == 0:
                continue
            gate, up = (rows @ self.gate_up_proj[e].t()).chunk(2, dim=-1)
            outs.append((F.silu(gate) * up) @ self.down_proj[e].t())
        # back to (token, k) order with the inverse permutation, then the gate-weighted sum
        # over k: a gather and a reduction (index_add_/scatter_add_ are slow on CPU)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(order.numel(), device=order.device)
        ys = torch.cat(outs)[inverse].view(N, K, -1)
        return (ys * weights.unsqueeze(-1).to(x.dtype)).sum(dim=1)


# ------------------------------------------------------------------------------ MoE
class MoE(nn.Module):
    """Output = shared_experts(x) + Σ_k gate_k · expert_k(x) (SPEC §2)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_experts, self.top_k = cfg.n_routed_experts, cfg.num_experts_per_tok
        self.gate = Gate(cfg)
        self.experts = Experts(cfg)
        self.shared_experts = (
            MLP(cfg.hidden_size, cfg.moe_intermediate_size * cfg.n_shared_experts) if cfg.n_shared_experts else None
        )
        # Tokens routed to each expert since the last update_bias() (training only).
        self.register_buffer("expert_load", torch.zeros(self.n_experts, dtype=torch.long), persistent=False)

    def forward(self, x: torch.Tensor):
        B, T, D = x.shape
        flat = x.reshape(-1, D)
        weights, indices, scores = self.gate(flat)
        y = self.experts(flat, weights, indices).view(B, T, D)
        if self.shared_experts is not None:
            y = y + self.shared_experts(x)
        balance = None
        if self.training:
            with torch.no_grad():
                flat = indices.flatten()  # a scatter-add count: bincount's output shape depends on the data
                self.expert_load.scatter_add_(0, flat, torch.ones_like(flat, dtype=self.expert_load.dtype))
            balance = self.sequence_balance_loss(scores.view(B, T, -1), indices.view(B, T, -1))
        return y, balance

    def sequence_balance_loss(self, scores: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        """L = Σ_i f_i P_i per sequence, averaged over the batch (SPEC §2, without α).
        f_i = E/(K·T) · #tokens routed to i;  P_i = mean_t s_i / Σ_j s_j."""
        B, T, E = scores.shape
        counts = torch.zeros(B, E, device=scores.device).scatter_add_(
            1, indices.reshape(B, -1), torch.ones(B, T * self.top_k, device=scores.device)
        )
        f = counts * (E / (self.top_k * T))
        p = (scores / scores.sum(-1, keepdim=True)).mean(1)
        return (f * p).sum(-1).mean()

    @torch.no_grad()
    def update_bias(self, gamma: float) -> None:
        """Auxiliary-loss-free balancing: b_i += γ·sign(mean_load − load_i) (SPEC §2)."""
        load = self.expert_load.float()
        if load.sum() > 0:
            self.gate.e_score_correction_bias += gamma * torch.sign(load.mean() - load)
        self.expert_load.zero_()


# ---------------------------------------------------------------------------- block
class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = MLA(cfg, layer_idx)
        self.mlp = MoE(cfg) if cfg.is_moe_layer(layer_idx) else MLP(cfg.hidden_size, cfg.intermediate_size)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache=None, absorbed: bool = False):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache, absorbed)
        h = self.post_attention_layernorm(x)
        if isinstance(self.mlp, MoE):
            y, balance = self.mlp(h)
            return x + y, balance
        return x + self.mlp(h), None


# ------------------------------------------------------------------------------ MTP
class SharedHead(nn.Module):
    """The MTP module's final norm. Its ``head`` is the main model's lm_head (shared)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MTPLayer(Block):
    """One MTP depth: h' = eh_proj[RMSNorm(Emb(x_{t+k})) ; RMSNorm(h_t)], then a normal
    block. Concatenation order as the published checkpoints and vLLM/SGLang use it
    (embedding first); the V3 paper writes the hidden state first, which only permutes
    the columns of eh_proj."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__(cfg, layer_idx)
        self.enorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.hidden_size, cfg.hidden_size, bias=False)
        self.shared_head = SharedHead(cfg)

    def forward(self, h, emb, cos, sin, cache=None, absorbed: bool = False):
        x = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))
        return super().forward(x, cos, sin, cache, absorbed)


# ---------------------------------------------------------------------------- model
class DeepseekV3Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        L = cfg.num_hidden_layers
        # MTP depths live after the main layers, as layer index L, L+1, … in checkpoints.
        self.layers = nn.ModuleList(
            [Block(cfg, i) for i in range(L)] + [MTPLayer(cfg, L + k) for k in range(cfg.num_nextn_predict_layers)]
        )
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg, cfg.qk_rope_head_dim, cfg.rope_interleave)


class DeepseekV3ForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = DeepseekV3Model(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if not self.lm_head.weight.is_meta:  # meta models are for accounting only
            self.reset_parameters()

    @property
    def main_layers(self):
        return self.model.layers[: self.config.num_hidden_layers]

    @property
    def mtp_layers(self):
        return self.model.layers[self.config.num_hidden_layers:]

    def forward(self, input_ids, positions=None, cache=None, targets=None, *, absorbed=False, return_hidden=False):
        """input_ids (B, T) -> ModelOutput(logits (B, T, vocab), …).

        targets (B, T): the token each position should predict (labels already shifted,
        -100 = ignore); when given, ``loss`` and (with MTP) ``mtp_loss`` are computed.
        absorbed: run attention in absorbed form without a cache (for testing/inference).
        """
        if positions is None:
            positions = default_positions(input_ids, cache)
        cos, sin = self.model.rotary(positions)
        x = self.model.embed_tokens(input_ids)
        balance = []
        for layer in self.main_layers:
            x, b = layer(x, cos, sin, cache, absorbed)
            if b is not None:
                balance.append(b)
        h = self.model.norm(x)
        out = ModelOutput(logits=self.lm_head(h))
        if balance:
            out.balance_loss = torch.stack(balance).sum()
        if return_hidden:
            out.hidden_states = h
        if targets is not None:
            out.loss = causal_lm_loss(out.logits, targets)
            if len(self.mtp_layers):
                out.mtp_loss = self.mtp_loss(h, input_ids, targets, cos, sin)
        return out

    def mtp_loss(self, h, input_ids, targets, cos, sin):
        """Mean over depths k of CE(x_{t+k+1}): depth k at position t sees the depth k-1
        state at t and the embedding of x_{t+k} (SPEC §2). Sequences shrink by one per depth."""
        losses = []
        T = input_ids.shape[1]
        for k, layer in enumerate(self.mtp_layers, start=1):
            n = T - k
            if n <= 0:
                break
            emb = self.model.embed_tokens(input_ids[:, k:])
            h, _ = layer(h[:, :n], emb, cos[:, :n], sin[:, :n])
            logits = self.lm_head(layer.shared_head.norm(h))
            losses.append(causal_lm_loss(logits, targets[:, k:]))
        return torch.stack(losses).mean() if losses else None

    def mtp_forward(self, depth: int, h, next_ids, positions, cache=None, with_logits: bool = True):
        """One MTP depth for drafting: (hidden (B,T,D), tokens after them) -> (logits, new hidden).
        ``with_logits=False`` only fills the cache (logits None): the engine's prompt prefill."""
        layer = self.mtp_layers[depth]
        cos, sin = self.model.rotary(positions)
        h, _ = layer(h, self.model.embed_tokens(next_ids), cos, sin, cache)
        return (self.mtp_head(depth, h) if with_logits else None), h

    def mtp_head(self, depth: int, h):
        """Logits of MTP depth ``depth`` from its hidden states (its own norm, the shared head)."""
        return self.lm_head(self.mtp_layers[depth].shared_head.norm(h))

    # ------------------------------------------------------------------ training aids
    def update_expert_bias(self, gamma: float = 0.001) -> None:
        """Call after each optimizer step: applies the aux-loss-free bias rule using the
        expert loads seen since the last call, then resets them."""
        for m in self.modules():
            if isinstance(m, MoE):
                m.update_bias(gamma)

    def expert_load(self) -> torch.Tensor | None:
        """(MoE layers, E) token counts accumulated since the last bias update."""
        loads = [m.expert_load.float() for m in self.modules() if isinstance(m, MoE)]
        return torch.stack(loads) if loads else None

    def reset_parameters(self) -> None:
        init_weights(self, self.config.initializer_range)
