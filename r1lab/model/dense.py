"""Dense students for distillation: Qwen2 (GQA, q/k/v bias) and Llama (no bias).

Same interface as the DeepSeek model: ``forward(input_ids, positions, cache, targets)``
returns a ModelOutput; parameter names are the Hugging Face ``Qwen2ForCausalLM`` /
``LlamaForCausalLM`` names. Distilled students: SPEC §6.

Cache seam: ``cache.update(layer_idx, k, v) -> (k_all, v_all, mask)`` with k/v of shape
(B, S, kv_heads, head_dim) and ``mask`` a boolean (B, 1, T, S) mask or None.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig
from .common import (
    MLP, ModelOutput, RMSNorm, Rotary, apply_rope, causal_lm_loss, causal_mask, default_positions, init_weights,
)


class Attention(nn.Module):
    """Grouped-query attention with RoPE in the half-split layout."""

    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.n_heads, self.n_kv, self.head_dim = cfg.num_attention_heads, cfg.kv_heads, cfg.dense_head_dim
        D, d = cfg.hidden_size, self.head_dim
        qkv_bias = True if cfg.model_type == "qwen2" else cfg.attention_bias
        o_bias = False if cfg.model_type == "qwen2" else cfg.attention_bias
        self.q_proj = nn.Linear(D, self.n_heads * d, bias=qkv_bias)
        self.k_proj = nn.Linear(D, self.n_kv * d, bias=qkv_bias)
        self.v_proj = nn.Linear(D, self.n_kv * d, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * d, D, bias=o_bias)

    def forward(self, x, cos, sin, cache=None):
        B, T, _ = x.shape
        q = apply_rope(self.q_proj(x).view(B, T, self.n_heads, self.head_dim), cos, sin, False)
        k = apply_rope(self.k_proj(x).view(B, T, self.n_kv, self.head_dim), cos, sin, False)
        v = self.v_proj(x).view(B, T, self.n_kv, self.head_dim)
        mask, causal = None, True
        if cache is not None:
            k, v, mask = cache.update(self.layer_idx, k, v)
            causal = False
            if mask is None and T > 1:
                mask = causal_mask(T, k.shape[1], x.device)
        rep = self.n_heads // self.n_kv
        k, v = k.transpose(1, 2), v.transpose(1, 2)                               # (B, kv, S, d)
        if rep > 1:
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        o = F.scaled_dot_product_attention(q.transpose(1, 2), k, v, attn_mask=mask, is_causal=causal and T > 1)
        return self.o_proj(o.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer_idx: int):
        super().__init__()
        self.self_attn = Attention(cfg, layer_idx)
        self.mlp = MLP(cfg.hidden_size, cfg.intermediate_size, bias=cfg.mlp_bias)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x, cos, sin, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class DenseModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList([Block(cfg, i) for i in range(cfg.num_hidden_layers)])
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.rotary = Rotary(cfg, cfg.dense_head_dim, interleave=False)


class DenseForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.config = cfg
        self.model = DenseModel(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        if cfg.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight
        if not self.lm_head.weight.is_meta:  # meta models are for accounting only
            self.reset_parameters()

    def forward(self, input_ids, positions=None, cache=None, targets=None, *, absorbed=False, return_hidden=False):
        if positions is None:
            positions = default_positions(input_ids, cache)
        cos, sin = self.model.rotary(positions)
        x = self.model.embed_tokens(input_ids)
        for layer in self.model.layers:
            x = layer(x, cos, sin, cache)
        h = self.model.norm(x)
        out = ModelOutput(logits=self.lm_head(h))
        if return_hidden:
            out.hidden_states = h
        if targets is not None:
            out.loss = causal_lm_loss(out.logits, targets)
        return out

    def update_expert_bias(self, gamma: float = 0.001) -> None:
        """Dense models have no router; kept so trainers treat every model alike."""

    def expert_load(self):
        return None

    def reset_parameters(self) -> None:
        init_weights(self, self.config.initializer_range)
