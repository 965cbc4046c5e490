"""ModelConfig: published files load as is; bad values get one-line errors naming the field."""

import json
from pathlib import Path

import pytest

from r1lab import build_model
from r1lab.config import PRESETS, ConfigError, ModelConfig, preset

DATA = Path(__file__).parent / "data"


def test_published_deepseek_v3_config_loads_as_is():
    cfg = ModelConfig.from_json(DATA / "deepseek_v3_config.json")
    assert cfg == preset("deepseek-v3").replace(quantization_config=cfg.quantization_config)
    assert cfg.rope_type == "yarn" and cfg.n_group == 8 and cfg.num_nextn_predict_layers == 1


def test_transformers_style_rope_parameters_are_understood():
    d = preset("tiny").to_dict()
    d.pop("rope_theta")
    d.pop("rope_scaling")
    d["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 5000.0, "factor": 4.0,
                            "original_max_position_embeddings": 256}
    d["qk_head_dim"] = 48
    d["head_dim"] = 16
    cfg = ModelConfig.from_dict(d)
    assert cfg.rope_theta == 5000.0 and cfg.rope_type == "yarn" and cfg.rope_scaling["factor"] == 4.0


def test_round_trip_through_dict():
    for name in PRESETS:
        cfg = preset(name)
        assert ModelConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "changes, field",
    [
        (dict(topk_group=3, n_group=2), "topk_group"),
        (dict(n_routed_experts=10, n_group=4), "n_group"),
        (dict(hidden_size=0), "hidden_size"),
        (dict(num_hidden_layers=-1), "num_hidden_layers"),
        (dict(vocab_size=2.5), "vocab_size"),
        (dict(kv_lora_rank=0), "kv_lora_rank"),
        (dict(num_experts_per_tok=9), "num_experts_per_tok"),
        (dict(rope_scaling={"type": "dynamic", "factor": 2.0}), "rope_scaling"),
        (dict(rope_scaling={"type": "yarn", "factor": -1}), "rope_scaling.factor"),
        (dict(q_lora_rank=-5), "q_lora_rank"),
        (dict(first_k_dense_replace=9), "first_k_dense_replace"),
        (dict(scoring_func="softmax"), "scoring_func"),
        (dict(qk_rope_head_dim=7), "qk_rope_head_dim"),
        (dict(model_type="gpt2"), "model_type"),
        (dict(hidden_size="256"), "hidden_size"),
        (dict(n_routed_experts=True), "n_routed_experts"),
        (dict(norm_topk_prob="yes"), "norm_topk_prob"),
        (dict(first_k_dense_replace=None), "first_k_dense_replace"),
        (dict(eos_token_id=[1, "a"]), "eos_token_id"),
        (dict(rope_scaling=[1, 2]), "rope_scaling"),
    ],
)
def test_invalid_values_name_the_field(changes, field):
    d = preset("tiny").to_dict()
    d.update(changes)
    with pytest.raises(ConfigError) as e:
        ModelConfig.from_dict(d)
    msg = str(e.value)
    assert f"'{field}'" in msg and "\n" not in msg


def test_unknown_key_is_an_error():
    d = preset("tiny").to_dict()
    d["n_routed_expert"] = 8  # typo
    with pytest.raises(ConfigError, match="unknown config key 'n_routed_expert'"):
        ModelConfig.from_dict(d)


def test_dense_validation():
    q = preset("qwen2-1.5b")
    with pytest.raises(ConfigError, match="num_key_value_heads"):
        q.replace(num_key_value_heads=5)
    with pytest.raises(ConfigError, match="use_sliding_window"):
        q.replace(use_sliding_window=True)


def test_bad_json_file(tmp_path):
    p = tmp_path / "config.json"
    p.write_text("{ not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_json(p)
    with pytest.raises(ConfigError, match="cannot read"):
        ModelConfig.from_json(tmp_path / "missing.json")


def test_big_presets_build_on_meta_without_memory():
    model = build_model(preset("deepseek-v3"), device="meta")
    n = sum(p.numel() for p in model.parameters())
    assert 670e9 < n < 700e9
    assert all(p.is_meta for p in model.parameters())


def test_preset_sizes():
    def count(name):
        return sum(p.numel() for p in build_model(preset(name), device="meta").parameters())

    assert 2e6 <= count("tiny") <= 5e6
    assert 50e6 <= count("small") <= 150e6
    assert abs(count("bench") - 3.83e6) < 0.01e6
    assert preset("deepseek-r1") == preset("deepseek-v3")
