"""Accounting (r1lab/accounting.py) against SPEC §1-§2's published figures.

Large presets are built on the meta device only; nothing here allocates them.
"""

from __future__ import annotations

import json

import pytest

from r1lab.accounting import (
    CATEGORIES, count_parameters, flops_per_token, format_report, kv_cache_bytes_per_token, report, training_cost,
)
from r1lab.config import ConfigError, preset
from r1lab.model import build_model


@pytest.fixture(scope="module")
def v3():
    return preset("deepseek-v3")


@pytest.fixture(scope="module")
def v3_params(v3):
    return count_parameters(v3)


def test_deepseek_v3_total_and_active(v3_params):
    p = v3_params
    assert abs(p["total"] - 671e9) / 671e9 < 0.01            # SPEC §1: 671B
    assert abs(p["active"] - 37e9) <= 1.5e9                  # SPEC §1: 37B active
    assert 11.0e9 <= p["mtp"] <= 14.5e9                      # MTP module, unique params
    assert p["total_with_mtp"] == p["total"] + p["mtp"]
    assert p["breakdown"]["other"] == 0
    assert set(p["breakdown"]) == set(CATEGORIES)
    assert p["total"] == sum(v for k, v in p["breakdown"].items() if k != "mtp")
    assert p["active"] == sum(p["active_breakdown"].values())
    # Only routed experts are thinned, by K/E = 8/256.
    assert p["active_breakdown"]["routed_experts"] * 256 == p["breakdown"]["routed_experts"] * 8
    for cat in ("embeddings", "attention", "dense_ffn", "shared_experts", "router", "norms", "head"):
        assert p["active_breakdown"][cat] == p["breakdown"][cat]
    assert p["layers"] == {"dense": 3, "moe": 58, "mtp": 1}
    # One V3 expert: 3 × 7168 × 2048 (SwiGLU).
    assert p["per_expert"] == 3 * 7168 * 2048
    assert p["breakdown"]["router"] == 58 * 256 * 7168


def test_deepseek_v3_kv_cache(v3):
    kv = kv_cache_bytes_per_token(v3, dtype_bytes=2)
    assert kv["absorbed_mla_bytes"] == 576 * 61 * 2 == kv["bytes_per_token"]
    assert kv["mha_equivalent_bytes"] == 2 * 128 * 128 * 61 * 2
    assert kv["ratio"] == pytest.approx(32768 / 576)
    assert round(kv["ratio"]) == 57
    assert kv["expanded_bytes"] == 128 * (128 + 64 + 128) * 61 * 2
    assert kv_cache_bytes_per_token(v3, dtype_bytes=1)["absorbed_mla_bytes"] == 576 * 61


def test_dense_kv_cache():
    cfg = preset("llama3-8b")
    kv = kv_cache_bytes_per_token(cfg)
    assert kv["gqa_bytes"] == 2 * 8 * 128 * 32 * 2
    assert kv["mha_equivalent_bytes"] == 2 * 32 * 128 * 32 * 2
    assert kv["ratio"] == 4


def test_tiny_matches_real_model():
    cfg = preset("tiny")
    model = build_model(cfg, seed=0)
    p = count_parameters(cfg)
    assert p["total_with_mtp"] == sum(q.numel() for q in model.parameters())
    assert p["breakdown"]["mtp"] == sum(q.numel() for q in model.mtp_layers.parameters())
    assert 0 < p["active"] < p["total"] < p["total_with_mtp"]


@pytest.mark.parametrize("name, lo, hi", [("qwen2-1.5b", 1.5e9, 1.8e9), ("llama3-8b", 7.9e9, 8.1e9)])
def test_dense_models(name, lo, hi):
    p = count_parameters(preset(name))
    assert lo <= p["total"] <= hi
    assert p["breakdown"]["routed_experts"] == 0 and p["breakdown"]["router"] == 0
    assert p["breakdown"]["shared_experts"] == 0 and p["mtp"] == 0
    assert p["active"] == p["total"] == p["total_with_mtp"]


def test_tied_embeddings_count_once():
    cfg = preset("qwen2-1.5b").replace(tie_word_embeddings=True)
    p = count_parameters(cfg)
    untied = count_parameters(preset("qwen2-1.5b"))
    assert p["breakdown"]["head"] == 0
    assert untied["total"] - p["total"] == cfg.vocab_size * cfg.hidden_size
    # The output projection still costs FLOPs when tied.
    assert p["matmul_active"] == untied["matmul_active"]


def test_flops(v3):
    f = flops_per_token(v3, 4096)
    p = count_parameters(v3)
    assert f["matmul"] == 2 * p["matmul_active"]
    assert f["attention"] == 61 * 2 * 128 * 4096 * (192 + 128)
    assert f["forward"] == f["matmul"] + f["attention"]
    assert f["training"] == 3 * f["forward"]
    # Matmul weights: active params minus the embedding lookup and norms.
    assert p["matmul_active"] == pytest.approx(p["active"] - p["breakdown"]["embeddings"], rel=1e-4)
    assert f["mtp_forward"] > 0
    dense = flops_per_token(preset("llama3-8b"), 1024)
    assert dense["attention"] == 32 * 2 * 32 * 1024 * 2 * 128
    assert flops_per_token(preset("llama3-8b"), 2048)["attention"] == 2 * dense["attention"]


def test_deepseek_v3_cost_matches_report(v3):
    c = training_cost(v3, 14.8e12, gpu="h800")
    assert 2.788e6 / 2 <= c["gpu_hours"] <= 2.788e6 * 2
    assert c["usd"] == pytest.approx(c["gpu_hours"] * 2.0)
    assert c["peak_flops"] == 989e12 and 0 < c["mfu"] <= 1
    assert "MFU" in c["assumptions"]
    ref = c["reference"]
    assert ref["gpu_hours"] == 2.788e6 and ref["usd"] == 5.576e6
    assert 0.3 < ref["implied_mfu_bf16"] < 0.6
    assert ref["estimate_vs_report"] == pytest.approx(c["gpu_hours"] / 2.788e6)
    # Same hours from fp8 peak at its default MFU; a given MFU scales hours inversely.
    fp8 = training_cost(v3, 14.8e12, gpu="h800", precision="fp8")
    assert fp8["gpu_hours"] == pytest.approx(c["gpu_hours"], rel=0.01)
    half = training_cost(v3, 14.8e12, gpu="h800", mfu=c["mfu"] / 2)
    assert half["gpu_hours"] == pytest.approx(2 * c["gpu_hours"])
    assert training_cost(preset("tiny"), 1e9)["reference"] is None


def test_cost_errors(v3):
    with pytest.raises(ConfigError, match="gpu"):
        training_cost(v3, 1e12, gpu="tpu")
    with pytest.raises(ConfigError, match="fp8"):
        training_cost(v3, 1e12, gpu="a100", precision="fp8")
    with pytest.raises(ConfigError, match="mfu"):
        training_cost(v3, 1e12, mfu=1.5)


def test_report_json_and_format(v3):
    rep = report(v3, tokens=14.8e12)
    json.dumps(rep)  # JSON-serialisable
    text = format_report(rep, "deepseek-v3")
    assert "671" in text
    assert "37.6B" in text or "37.5B" in text
    assert "57" in text  # MHA / MLA ratio
    assert "GPU-hours" in text and "$" in text and "2.788M" in text
    small = format_report(report(preset("tiny")), "tiny")
    assert "tiny" in small and "GPU-hours" not in small
    dense = format_report(report(preset("qwen2-1.5b").replace(tie_word_embeddings=True), tokens=1e9, gpu="h100"),
                          "qwen")
    assert "tied" in dense and "GQA" in dense
