"""Behaviour of the DeepSeek-V3 model beyond the oracle: absorbed MLA, routing,
balancing, MTP, expert grouping, cache seam."""

import pytest
import torch
import torch.nn.functional as F

from r1lab import build_model, preset
from r1lab.model.deepseek import MoE


class ContiguousCache:
    """Minimal cache for tests: every row has the same length (the engine owns the real one)."""

    def __init__(self):
        self.layers = {}

    def seq_len(self):
        return next(iter(self.layers.values()))[0].shape[1] if self.layers else 0

    def update(self, layer_idx, a, b):
        if layer_idx in self.layers:
            pa, pb = self.layers[layer_idx]
            a, b = torch.cat([pa, a], 1), torch.cat([pb, b], 1)
        self.layers[layer_idx] = (a, b)
        return a, b, None


def tiny(**kw):
    return preset("tiny").replace(vocab_size=256, **kw)


CONFIGS = {
    "tiny": tiny(),
    "yarn+groups": tiny(n_group=4, topk_group=2, rope_scaling={"type": "yarn", "factor": 4.0,
                                                              "original_max_position_embeddings": 64,
                                                              "mscale": 1.0, "mscale_all_dim": 1.0}),
    "q_lora_null+halves": tiny(q_lora_rank=None, rope_interleave=False),
}


@pytest.mark.parametrize("name", list(CONFIGS))
def test_absorbed_equals_training_form(name):
    cfg = CONFIGS[name]
    model = build_model(cfg, seed=0).eval()
    ids = torch.randint(0, cfg.vocab_size, (3, 40), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = model(ids).logits
        b = model(ids, absorbed=True).logits
    assert (a - b).abs().max().item() < 1e-5


@pytest.mark.parametrize("name", ["tiny", "q_lora_null+halves"])
def test_incremental_decoding_with_latent_cache_matches_full_forward(name):
    cfg = CONFIGS[name]
    model = build_model(cfg, seed=0).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 24), generator=torch.Generator().manual_seed(1))
    cache = ContiguousCache()
    with torch.no_grad():
        full = model(ids).logits
        parts = [model(ids[:, :10], cache=cache).logits]  # chunked prefill
        parts.append(model(ids[:, 10:17], cache=cache).logits)
        for t in range(17, 24):  # one token at a time
            parts.append(model(ids[:, t:t + 1], cache=cache).logits)
    inc = torch.cat(parts, dim=1)
    assert (inc - full).abs().max().item() < 1e-5
    # the cache holds only the latent: kv_lora_rank + qk_rope_head_dim numbers per token
    c_kv, k_rope = cache.layers[0]
    assert c_kv.shape == (2, 24, cfg.kv_lora_rank) and k_rope.shape == (2, 24, cfg.qk_rope_head_dim)


def test_dense_student_cache_matches_full_forward():
    cfg = preset("qwen2-1.5b").replace(vocab_size=200, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2)
    model = build_model(cfg, seed=0).eval()
    ids = torch.randint(0, 200, (2, 12))
    cache = ContiguousCache()
    with torch.no_grad():
        full = model(ids).logits
        inc = torch.cat([model(ids[:, :5], cache=cache).logits]
                        + [model(ids[:, t:t + 1], cache=cache).logits for t in range(5, 12)], dim=1)
    assert (inc - full).abs().max().item() < 1e-5


def _moe(**kw):
    cfg = tiny(**kw)
    torch.manual_seed(0)
    moe = MoE(cfg)
    for p in moe.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return cfg, moe


def test_expert_grouping_equals_naive_per_token_loop():
    cfg, moe = _moe(n_routed_experts=8, n_group=2, topk_group=1, num_experts_per_tok=3)
    x = torch.randn(2, 9, cfg.hidden_size)
    moe.eval()
    with torch.no_grad():
        y, _ = moe(x)
        flat = x.reshape(-1, cfg.hidden_size)
        w, idx, _ = moe.gate(flat)
        ref = moe.shared_experts(flat)
        for n in range(flat.shape[0]):  # reference only: the model never loops over tokens
            for k in range(idx.shape[1]):
                e = int(idx[n, k])
                g, u = (moe.experts.gate_up_proj[e] @ flat[n]).chunk(2)
                ref[n] += w[n, k] * (moe.experts.down_proj[e] @ (F.silu(g) * u))
    assert torch.allclose(y.reshape(-1, cfg.hidden_size), ref, atol=1e-6)


def test_group_limited_routing_and_bias_for_selection_only():
    cfg, moe = _moe(n_routed_experts=16, n_group=4, topk_group=2, num_experts_per_tok=4,
                    routed_scaling_factor=2.5, norm_topk_prob=True)
    x = torch.randn(64, cfg.hidden_size)
    w, idx, scores = moe.gate(x)
    groups = idx // (16 // 4)
    assert max(len(set(row.tolist())) for row in groups) <= 2
    assert torch.allclose(w.sum(-1), torch.full((64,), 2.5), atol=1e-5)  # normalised × scaling factor
    # a large bias on expert 5 makes everyone pick it, but its gate weight still comes from the raw score
    moe.gate.e_score_correction_bias[5] = 10.0
    w2, idx2, scores2 = moe.gate(x)
    assert (idx2 == 5).any(dim=1).all()
    picked = scores2.gather(1, idx2)
    assert torch.allclose(w2, picked / picked.sum(-1, keepdim=True) * 2.5, atol=1e-6)


def test_balance_loss_formula_and_gradient():
    cfg, moe = _moe(n_routed_experts=8, num_experts_per_tok=2)
    moe.train()
    x = torch.randn(3, 10, cfg.hidden_size)
    _, loss = moe(x)
    # recompute by hand: L = Σ_i f_i P_i, f_i = E/(K·T)·count_i, P_i = mean_t s_i/Σ_j s_j
    flat = x.reshape(-1, cfg.hidden_size)
    _, idx, s = moe.gate(flat)
    idx, s = idx.view(3, 10, 2), s.view(3, 10, 8)
    ref = 0.0
    for b in range(3):
        counts = torch.bincount(idx[b].flatten(), minlength=8).float()
        f = counts * 8 / (2 * 10)
        p = (s[b] / s[b].sum(-1, keepdim=True)).mean(0)
        ref += float((f * p).sum().detach()) / 3
    assert abs(loss.item() - ref) < 1e-5
    loss.backward()
    assert moe.gate.weight.grad is not None and moe.gate.weight.grad.abs().sum() > 0
    assert moe.gate.e_score_correction_bias.grad is None  # the bias never receives gradients


def test_aux_loss_free_update_reduces_load_imbalance():
    cfg, moe = _moe(n_routed_experts=8, num_experts_per_tok=2)
    x = torch.randn(256, cfg.hidden_size)
    with torch.no_grad():  # skew: experts 0 and 1 score high for almost every token
        direction = x.mean(0) / x.mean(0).norm()
        moe.gate.weight[0] += 3.0 * direction
        moe.gate.weight[1] += 2.5 * direction
    moe.train()

    def ratio():
        moe.expert_load.zero_()
        with torch.no_grad():
            moe(x.view(4, 64, -1))
        load = moe.expert_load.float()
        return float(load.max() / load.mean())

    before = ratio()
    for _ in range(100):
        with torch.no_grad():
            moe(x.view(4, 64, -1))
        moe.update_bias(gamma=0.02)
    after = ratio()
    assert before > 2.5
    assert after < 1.5 and after < before / 2


def test_mtp_loss_falls_on_learnable_sequence():
    cfg = tiny(num_nextn_predict_layers=1)
    model = build_model(cfg, seed=0).train()
    g = torch.Generator().manual_seed(0)
    # a deterministic recurrence: x_{t+1} = (3·x_t + 7) mod 50, so x_{t+2} is predictable from x_t
    starts = torch.randint(0, 50, (16,), generator=g)
    seq = [starts]
    for _ in range(31):
        seq.append((3 * seq[-1] + 7) % 50)
    data = torch.stack(seq, 1)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        out = model(data[:, :-1], targets=data[:, 1:])
        opt.zero_grad()
        out.mtp_loss.backward()
        opt.step()
        losses.append(out.mtp_loss.item())
    assert losses[-1] < 0.3 * losses[0]


def test_forward_returns_losses_and_shapes():
    cfg = tiny(num_nextn_predict_layers=2)
    model = build_model(cfg, seed=0).train()
    ids = torch.randint(0, cfg.vocab_size, (2, 16))
    out = model(ids[:, :-1], targets=ids[:, 1:])
    assert out.logits.shape == (2, 15, cfg.vocab_size)
    assert out.loss.ndim == 0 and out.mtp_loss.ndim == 0 and out.balance_loss.ndim == 0
    (out.loss + 0.3 * out.mtp_loss + 1e-4 * out.balance_loss).backward()
    assert all(p.grad is not None for n, p in model.named_parameters() if "mtp" not in n)
    model.eval()
    out = model(ids)
    assert out.balance_loss is None and out.loss is None


def test_bfloat16_model_keeps_router_bias_and_loads_exact():
    cfg = tiny()
    model = build_model(cfg, seed=0, dtype=torch.bfloat16).train()
    moe = model.model.layers[1].mlp
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16
    assert moe.gate.e_score_correction_bias.dtype == torch.float32
    ids = torch.randint(0, cfg.vocab_size, (2, 300))
    for _ in range(2):
        model(ids)
    assert int(moe.expert_load.sum()) == 2 * 2 * 300 * cfg.num_experts_per_tok  # exact counts past bf16's 256
    model.update_expert_bias(0.001)
    bias = moe.gate.e_score_correction_bias
    assert bias.dtype == torch.float32
    assert torch.allclose(bias.abs(), torch.full_like(bias, 0.001)) or (bias == 0).any()
    assert bias.abs().max().item() == pytest.approx(0.001)
