"""Our models against transformers (the numerical oracle), in both directions:
transformers loads what we saved, and we load what transformers saved (SPEC §2)."""

import logging

import pytest
import torch

transformers = pytest.importorskip("transformers", reason="transformers is a test dependency: pip install -e .[test]")
from transformers import AutoModelForCausalLM  # noqa: E402

from r1lab import build_model, load_model, preset, save_model  # noqa: E402

TOL = 1e-4


def deepseek_configs():
    base = preset("tiny").replace(vocab_size=300, max_position_embeddings=512)
    yarn = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128,
            "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 0.8}
    return {
        "groups+yarn": base.replace(n_routed_experts=8, n_group=4, topk_group=2, num_experts_per_tok=3,
                                    rope_scaling=yarn, routed_scaling_factor=2.5),
        "q_lora_null": base.replace(q_lora_rank=None, hidden_size=96, num_attention_heads=3,
                                    kv_lora_rank=48, qk_nope_head_dim=24, qk_rope_head_dim=8, v_head_dim=16),
        "dense_first_2+mtp": base.replace(first_k_dense_replace=2, num_hidden_layers=3, num_nextn_predict_layers=1,
                                          n_shared_experts=2, norm_topk_prob=False),
        "halves_rope+tied": base.replace(rope_interleave=False, tie_word_embeddings=True, num_nextn_predict_layers=0,
                                         rope_scaling={"type": "yarn", "factor": 8.0,
                                                       "original_max_position_embeddings": 64}),
    }


def dense_configs():
    q = preset("qwen2-1.5b").replace(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512)
    ll = preset("llama3-8b").replace(vocab_size=300, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                                     num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=512)
    return {
        "qwen2": q,
        "qwen2-tied": q.replace(tie_word_embeddings=True),
        "llama3-scaled-rope": ll,
        "llama-bias": ll.replace(rope_scaling=None, attention_bias=True, mlp_bias=True, head_dim=16),
    }


ALL = {**deepseek_configs(), **dense_configs()}


def _randomise(model):
    """Non-trivial values for everything initialised to constants (norms, biases, router bias)."""
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "norm" in name:
                p.copy_(p + 0.1 * torch.randn(p.shape, generator=g))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.05 * torch.randn(b.shape, generator=g))


@pytest.fixture(autouse=True)
def _quiet():
    logging.getLogger("transformers").setLevel(logging.ERROR)
    transformers.logging.set_verbosity_error()


@pytest.mark.parametrize("name", list(ALL))
def test_transformers_loads_what_we_save(name, tmp_path):
    cfg = ALL[name]
    ours = build_model(cfg, seed=0).eval()
    _randomise(ours)
    save_model(ours, tmp_path / "ck")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "ck", dtype=torch.float32).eval()
    ids = torch.randint(0, cfg.vocab_size, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    assert a.shape == b.shape == (2, 48, cfg.vocab_size)
    assert (a - b).abs().max().item() < TOL


@pytest.mark.parametrize("name", list(ALL))
def test_we_load_what_transformers_saves(name, tmp_path):
    cfg = ALL[name]
    ours0 = build_model(cfg, seed=3).eval()
    _randomise(ours0)
    save_model(ours0, tmp_path / "seed")  # only used to give transformers a config.json
    torch.manual_seed(11)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "seed", dtype=torch.float32).eval()
    with torch.no_grad():  # fresh random weights on their side, so nothing of ours is reused
        for p in theirs.parameters():
            p.add_(0.02 * torch.randn_like(p))
    theirs.save_pretrained(tmp_path / "hf")
    ours = load_model(tmp_path / "hf").eval()
    ids = torch.randint(0, cfg.vocab_size, (3, 33), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = ours(ids).logits, theirs(ids).logits
    assert (a - b).abs().max().item() < TOL
    # and the reload is not just our own weights echoed back
    with torch.no_grad():
        assert (ours0(ids).logits - b).abs().max().item() > 1e-3


def test_fused_expert_layout_loads(tmp_path):
    cfg = deepseek_configs()["groups+yarn"]
    ours = build_model(cfg, seed=0).eval()
    _randomise(ours)
    save_model(ours, tmp_path / "fused", expert_layout="fused")
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path / "fused", dtype=torch.float32).eval()
    back = load_model(tmp_path / "fused").eval()
    ids = torch.randint(0, cfg.vocab_size, (1, 20))
    with torch.no_grad():
        assert (back(ids).logits - ours(ids).logits).abs().max().item() == 0
        assert (theirs(ids).logits - ours(ids).logits).abs().max().item() < TOL
