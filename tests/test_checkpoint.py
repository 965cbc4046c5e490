"""Checkpoint directories: sharding, layouts, errors, atomic writes."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from r1lab import build_model, load_model, preset, save_model
from r1lab.checkpoint import CheckpointError


def _tiny():
    return preset("tiny").replace(vocab_size=256)


def _same(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return all(torch.equal(sa[k], sb[k]) for k in sa)


def test_round_trip_is_exact_including_mtp_and_router_bias(tmp_path):
    model = build_model(_tiny(), seed=0)
    for name, buf in model.named_buffers():
        if name.endswith("e_score_correction_bias"):
            buf.normal_()
    save_model(model, tmp_path / "ck")
    files = sorted(p.name for p in (tmp_path / "ck").iterdir())
    assert files == ["config.json", "model.safetensors"]
    names = load_file(tmp_path / "ck" / "model.safetensors").keys()
    assert "model.layers.1.mlp.experts.7.down_proj.weight" in names  # published per-expert layout
    assert "model.layers.4.eh_proj.weight" in names  # MTP stored as layer num_hidden_layers
    assert "model.layers.4.shared_head.head.weight" in names
    back = load_model(tmp_path / "ck")
    assert _same(model, back)
    ids = torch.randint(0, 256, (1, 9))
    out = back(ids)
    assert out.logits.shape == (1, 9, 256)


def test_sharded_checkpoint_with_index(tmp_path):
    model = build_model(_tiny(), seed=1)
    save_model(model, tmp_path / "ck", max_shard_bytes=2_000_000)
    index = json.loads((tmp_path / "ck" / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 3 and all((tmp_path / "ck" / s).is_file() for s in shards)
    assert not (tmp_path / "ck" / "model.safetensors").exists()
    assert _same(model, load_model(tmp_path / "ck"))


def test_bfloat16_save_and_load_dtype(tmp_path):
    model = build_model(_tiny(), seed=0)
    save_model(model, tmp_path / "ck", dtype=torch.bfloat16)
    t = load_file(tmp_path / "ck" / "model.safetensors")
    assert t["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert t["model.layers.1.mlp.gate.e_score_correction_bias"].dtype == torch.float32
    m = load_model(tmp_path / "ck", dtype=torch.bfloat16)
    assert m.model.embed_tokens.weight.dtype == torch.bfloat16
    assert m.model.layers[1].mlp.gate.e_score_correction_bias.dtype == torch.float32
    assert load_model(tmp_path / "ck").model.embed_tokens.weight.dtype == torch.float32


def test_fp8_block_quantised_weights_are_dequantised(tmp_path):
    model = build_model(_tiny(), seed=0)
    save_model(model, tmp_path / "ck")
    f = tmp_path / "ck" / "model.safetensors"
    t = load_file(f)
    name = "model.layers.0.mlp.down_proj.weight"  # (256, 384)
    w = t[name]
    # 128×128 blocks, each scaled so its largest value maps to e4m3's max (448), as DeepSeek does
    blocks = torch.nn.functional.pad(w, (0, 384 - w.shape[1], 0, 256 - w.shape[0])).abs()
    scale = blocks.view(2, 128, 3, 128).amax(dim=(1, 3)) / 448.0
    full = scale.repeat_interleave(128, 0)[: w.shape[0]].repeat_interleave(128, 1)[:, : w.shape[1]]
    t[name] = (w / full).to(torch.float8_e4m3fn)
    t[name + "_scale_inv"] = scale
    save_file(t, f)
    m = load_model(tmp_path / "ck")
    got = m.model.layers[0].mlp.down_proj.weight
    assert torch.allclose(got, w, rtol=0.07, atol=1e-4)
    assert not torch.equal(got, w)  # it really went through fp8


def test_missing_directory_and_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_model(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match="no config.json"):
        load_model(tmp_path / "empty")
    save_model(build_model(_tiny(), seed=0), tmp_path / "ck")
    (tmp_path / "ck" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="no model.safetensors"):
        load_model(tmp_path / "ck")


def test_corrupt_and_truncated_weights(tmp_path):
    save_model(build_model(_tiny(), seed=0), tmp_path / "ck")
    f = tmp_path / "ck" / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "ck")
    f.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_model(tmp_path / "ck")


def test_wrong_shapes_and_missing_tensors(tmp_path):
    save_model(build_model(_tiny(), seed=0), tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    cfg["hidden_size"] = 128
    (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="shape"):
        load_model(tmp_path / "ck")
    save_model(build_model(_tiny(), seed=0), tmp_path / "ck2")
    f = tmp_path / "ck2" / "model.safetensors"
    t = load_file(f)
    del t["model.layers.2.self_attn.kv_b_proj.weight"]
    save_file(t, f)
    with pytest.raises(CheckpointError, match="missing"):
        load_model(tmp_path / "ck2")


def test_overwrite_is_atomic_and_keeps_foreign_files(tmp_path):
    ck = tmp_path / "ck"
    save_model(build_model(_tiny(), seed=0), ck, max_shard_bytes=2_000_000)
    (ck / "NOTES.txt").write_text("keep me")
    m2 = build_model(_tiny(), seed=5)
    save_model(m2, ck)  # now a single file: stale shards and index must be gone
    assert (ck / "NOTES.txt").read_text() == "keep me"
    assert not (ck / "model.safetensors.index.json").exists()
    assert not list(ck.glob("model-*.safetensors"))
    assert _same(m2, load_model(ck))
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]  # no temp dirs left behind


def test_failed_save_leaves_existing_checkpoint_intact(tmp_path, monkeypatch):
    ck = tmp_path / "ck"
    m1 = build_model(_tiny(), seed=0)
    save_model(m1, ck)

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr("r1lab.checkpoint.save_file", boom)
    with pytest.raises(OSError):
        save_model(build_model(_tiny(), seed=9), ck)
    monkeypatch.undo()
    assert _same(m1, load_model(ck))
    assert [p.name for p in tmp_path.iterdir()] == ["ck"]


def test_dense_tied_checkpoint_has_no_lm_head(tmp_path):
    cfg = preset("qwen2-1.5b").replace(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    m = build_model(cfg, seed=0)
    save_model(m, tmp_path / "ck")
    assert "lm_head.weight" not in load_file(tmp_path / "ck" / "model.safetensors")
    back = load_model(tmp_path / "ck")
    assert back.lm_head.weight is back.model.embed_tokens.weight
    assert _same(m, back)


def test_hostile_index_and_dtypes(tmp_path):
    ck = tmp_path / "ck"
    save_model(build_model(_tiny(), seed=0), ck, max_shard_bytes=2_000_000)
    index = json.loads((ck / "model.safetensors.index.json").read_text())
    name = next(iter(index["weight_map"]))
    index["weight_map"][name] = "../../etc/passwd"
    (ck / "model.safetensors.index.json").write_text(json.dumps(index))
    with pytest.raises(CheckpointError, match="not a plain file name"):
        load_model(ck)
    ck2 = tmp_path / "ck2"
    save_model(build_model(_tiny(), seed=0), ck2)
    t = load_file(ck2 / "model.safetensors")
    t["model.norm.weight"] = torch.ones(t["model.norm.weight"].shape, dtype=torch.int32)
    save_file(t, ck2 / "model.safetensors")
    with pytest.raises(CheckpointError, match="floating-point"):
        load_model(ck2)


# ---------------------------------------------------------------- FP8 block scales (SPEC §9)
def _quantise_blockwise(w, br, bc, seed=0):
    """DeepSeek-style FP8 quantisation written as plain loops over blocks: each block gets
    its own random scale (so a block read with a neighbour's scale is visibly wrong)."""
    g = torch.Generator().manual_seed(seed)
    rows, cols = w.shape
    nr, nc = -(-rows // br), -(-cols // bc)
    scale = torch.empty(nr, nc)
    q = torch.empty(rows, cols, dtype=torch.float8_e4m3fn)
    for i in range(nr):
        for j in range(nc):
            block = w[i * br:(i + 1) * br, j * bc:(j + 1) * bc]
            s = block.abs().max().item() / 448.0 * (1.0 + torch.rand((), generator=g).item())
            scale[i, j] = s
            q[i * br:(i + 1) * br, j * bc:(j + 1) * bc] = (block / s).to(torch.float8_e4m3fn)
    return q, scale


def _dequantise_reference(q, scale, br, bc):
    """Blockwise reference, independent of the implementation: block (i, j) covers rows
    i*br .. min((i+1)*br, rows) and columns j*bc .. min((j+1)*bc, cols)."""
    rows, cols = q.shape
    out = torch.empty(rows, cols)
    for i in range(0, rows, br):
        for j in range(0, cols, bc):
            out[i:i + br, j:j + bc] = q[i:i + br, j:j + bc].float() * scale[i // br, j // bc].item()
    return out


@pytest.mark.parametrize("shape, block", [
    ((576, 1024), (128, 128)),   # V3's kv_a_proj_with_mqa rows: 4 full row blocks + one of 64 rows
    ((160, 256), (128, 128)),
    ((100, 300), (128, 128)),
    ((100, 300), (64, 32)),      # a non-default weight_block_size
])
def test_fp8_ragged_blocks_match_blockwise_reference(shape, block):
    from r1lab.checkpoint import from_hf_state_dict

    w = torch.randn(*shape, generator=torch.Generator().manual_seed(1))
    q, scale = _quantise_blockwise(w, *block)
    assert scale.shape == (-(-shape[0] // block[0]), -(-shape[1] // block[1]))
    cfg = preset("tiny").replace(quantization_config={"quant_method": "fp8", "fmt": "e4m3",
                                                      "weight_block_size": list(block)})
    name = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"
    got = from_hf_state_dict({name: q, name + "_scale_inv": scale}, cfg)
    assert set(got) == {name}
    assert torch.equal(got[name], _dequantise_reference(q, scale, *block))
    assert torch.allclose(got[name], w, rtol=0.07, atol=1e-3)


def test_fp8_scale_of_the_wrong_shape_is_a_one_line_error():
    from r1lab.checkpoint import from_hf_state_dict

    name = "model.layers.0.self_attn.kv_a_proj_with_mqa.weight"
    q = torch.zeros(576, 1024, dtype=torch.float8_e4m3fn)
    scale = torch.ones(4, 8)  # 576 rows in 128-row blocks need 5
    with pytest.raises(CheckpointError) as e:
        from_hf_state_dict({name: q, name + "_scale_inv": scale}, preset("tiny"))
    msg = str(e.value)
    assert "\n" not in msg
    for part in (name, "(576, 1024)", "(4, 8)", "128×128", "(5, 8)"):
        assert part in msg
    cfg = preset("tiny").replace(quantization_config={"weight_block_size": [128]})
    with pytest.raises(CheckpointError, match="weight_block_size must be two positive integers"):
        from_hf_state_dict({name: q, name + "_scale_inv": torch.ones(5, 8)}, cfg)


@pytest.mark.parametrize("block", [None, [32, 48]])
def test_fp8_checkpoint_directory_with_ragged_weights_loads(tmp_path, block):
    """End to end: a checkpoint whose ragged weights (kv_a_proj_with_mqa 80×256, experts'
    down_proj 256×96, q_b_proj 192×128) are FP8 with the block size of its config.json
    (DeepSeek's 128×128 when quantization_config does not give one)."""
    model = build_model(_tiny(), seed=0)
    save_model(model, tmp_path / "ck")
    cfg = json.loads((tmp_path / "ck" / "config.json").read_text())
    if block is not None:
        cfg["quantization_config"] = {"activation_scheme": "dynamic", "fmt": "e4m3", "quant_method": "fp8",
                                      "weight_block_size": block}
        (tmp_path / "ck" / "config.json").write_text(json.dumps(cfg))
    br, bc = block or (128, 128)
    f = tmp_path / "ck" / "model.safetensors"
    t = load_file(f)
    names = ["model.layers.0.self_attn.kv_a_proj_with_mqa.weight", "model.layers.2.self_attn.q_b_proj.weight",
             "model.layers.1.mlp.experts.3.down_proj.weight"]
    want = {}
    for i, name in enumerate(names):
        q, scale = _quantise_blockwise(t[name], br, bc, seed=i)
        t[name], t[name + "_scale_inv"] = q, scale
        want[name] = _dequantise_reference(q, scale, br, bc)
    save_file(t, f)
    sd = load_model(tmp_path / "ck").state_dict()
    assert torch.equal(sd[names[0]], want[names[0]])
    assert torch.equal(sd[names[1]], want[names[1]])
    assert torch.equal(sd["model.layers.1.mlp.experts.down_proj"][3], want[names[2]])
    assert torch.allclose(sd[names[0]], model.state_dict()[names[0]], rtol=0.07, atol=1e-4)
    plain = "model.layers.0.mlp.down_proj.weight"  # not quantised: loaded as stored
    assert torch.equal(sd[plain], model.state_dict()[plain])


# ---------------------------------------------------------------- model paths that do not exist
@pytest.mark.parametrize("argv", [
    ["generate", "--model", "{missing}", "--prompt", "hi"],
    ["eval", "--task", "gsm8k", "--model", "{missing}", "--limit", "1"],
    ["info", "{missing}"],
    ["demo", "--base", "{missing}"],
])
def test_cli_says_a_missing_model_path_does_not_exist(tmp_path, capsys, argv):
    from r1lab.cli import main

    missing = str(tmp_path / "nonexistent")
    code = main([a.replace("{missing}", missing) for a in argv])
    captured = capsys.readouterr()
    err = captured.err.strip().splitlines()
    assert code == 2
    assert len(err) == 1, err
    assert err[0].startswith(f"r1lab: error: model path {missing} does not exist (")
    assert "r1zero-base" in err[0] and "tokenizer" not in err[0]
    assert "Traceback" not in captured.err + captured.out


def test_cli_missing_model_path_in_a_fresh_process(tmp_path):
    """The installed entry point: exit status 2, one line, no traceback."""
    import subprocess
    import sys

    missing = str(tmp_path / "nonexistent")
    p = subprocess.run([sys.executable, "-m", "r1lab.cli", "generate", "--model", missing, "--prompt", "hi"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"r1lab: error: model path {missing} does not exist (give a checkpoint directory or a shipped model "
        f"name: r1zero-base)"]


def test_library_entry_points_say_a_missing_model_path_does_not_exist(tmp_path):
    from r1lab.generate import GenerateError, load_model_and_tokenizer

    missing = tmp_path / "nonexistent"
    with pytest.raises(CheckpointError, match=r"^model path .* does not exist \(give a checkpoint directory"):
        load_model(missing)
    with pytest.raises(GenerateError, match=r"^model path .* does not exist"):
        load_model_and_tokenizer(str(missing))
    (tmp_path / "file.txt").write_text("not a checkpoint")  # exists, but is no checkpoint directory
    with pytest.raises(GenerateError, match="is not a directory"):
        load_model_and_tokenizer(str(tmp_path / "file.txt"))
