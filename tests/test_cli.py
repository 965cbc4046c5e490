"""The command line: verbs, help, one-line errors (no tracebacks), real outputs."""

import json
import subprocess
import sys

import pytest
import torch

from r1lab import load_model
from r1lab.cli import build_parser, main

VERBS = {"info", "init", "demo", "tokenizer", "tokenize", "template", "generate", "eval", "pretrain", "sft", "grpo", "chat", "serve", "rejection-sample", "distill"}  # frozen surface: change on purpose, update here


def run(*args, check=False):
    p = subprocess.run([sys.executable, "-m", "r1lab.cli", *args], capture_output=True, text=True, timeout=300)
    if check:
        assert p.returncode == 0, p.stderr
    return p


def test_verb_surface_is_frozen():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "verb")
    assert set(sub.choices) == VERBS
    help_text = run("--help", check=True).stdout
    for verb in VERBS:
        assert any(line.strip().startswith(verb + " ") for line in help_text.splitlines()), verb


def test_info_deepseek_v3_figures():
    out = run("info", "deepseek-v3", "--tokens", "14.8e12", "--json", check=True).stdout
    rep = json.loads(out)
    assert abs(rep["parameters"]["total"] - 671e9) / 671e9 < 0.01
    assert abs(rep["parameters"]["active"] - 37e9) < 1.5e9
    assert rep["kv_cache"]["absorbed_mla_bytes"] == 576 * 61 * 2
    hours = rep["cost"]["gpu_hours"]
    assert 2.788e6 / 3 < hours < 2.788e6 * 3
    text = run("info", "deepseek-v3", "--tokens", "14.8e12", check=True).stdout
    assert "671.0B" in text and "MFU" in text


def test_info_accepts_config_file_and_checkpoint(tmp_path):
    ck = tmp_path / "ck"
    assert main(["init", "--preset", "tiny", str(ck), "--seed", "3"]) == 0
    assert "MLA" in run("info", str(ck), check=True).stdout
    assert "MLA" in run("info", str(ck / "config.json"), check=True).stdout


@pytest.mark.parametrize(
    "content, needle",
    [
        ('{"model_type": "deepseek_v3", "n_group": 3}', "n_group"),
        ('{"model_type": "deepseek_v3", "topk_group": 9}', "topk_group"),
        ('{"model_type": "deepseek_v3", "hidden_sise": 12}', "hidden_sise"),
        ('{"model_type": "deepseek_v3", "rope_scaling": {"type": "ntk", "factor": 2}}', "rope_scaling"),
        ("[1, 2", "not valid JSON"),
    ],
)
def test_malformed_config_gives_one_line_error(tmp_path, content, needle):
    f = tmp_path / "config.json"
    f.write_text(content)
    p = run("info", str(f))
    assert p.returncode == 2
    assert "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("r1lab: error:") and needle in lines[0]


def test_missing_or_corrupt_checkpoint_errors(tmp_path):
    p = run("info", str(tmp_path / "missing"))
    assert p.returncode == 2 and "Traceback" not in p.stderr
    ck = tmp_path / "ck"
    assert main(["init", "--preset", "tiny", str(ck)]) == 0
    (ck / "model.safetensors").write_bytes(b"\x00" * 100)
    code = "from r1lab import load_model; load_model(%r)" % str(ck)
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert "corrupt or truncated" in p.stderr


def test_init_writes_loadable_reproducible_checkpoint(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    assert main(["init", "--preset", "tiny", str(a), "--seed", "5"]) == 0
    assert main(["init", "--preset", "tiny", str(b), "--seed", "5"]) == 0
    ma, mb = load_model(a), load_model(b)
    assert all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values()))
    out = ma(torch.tensor([[1, 2, 3]]))
    assert out.logits.shape == (1, 3, ma.config.vocab_size)


def test_init_refuses_non_empty_directory(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "keep.txt").write_text("mine")
    p = run("init", "--preset", "tiny", str(tmp_path / "x"))
    assert p.returncode == 2 and "not empty" in p.stderr and "Traceback" not in p.stderr
    assert (tmp_path / "x" / "keep.txt").read_text() == "mine"


def test_bad_flag_values():
    p = run("info", "tiny", "--mfu", "3")
    assert p.returncode == 2 and "--mfu" in p.stderr and "Traceback" not in p.stderr
    p = run("info", "tiny", "--tokens", "1e9", "--gpu", "tpu9")
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_generate_streams_one_prompt_and_writes_jsonl(tmp_path):
    ck = tmp_path / "ck"
    assert main(["init", "--preset", "tiny", str(ck), "--seed", "1"]) == 0
    p = run("generate", "--model", str(ck), "--prompt", "12+34=", "--max-tokens", "6", "--temperature", "0")
    assert p.returncode == 0, p.stderr
    assert p.stdout.endswith("\n") and len(p.stdout) > 1
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text('"1+1="\n{"prompt": "2+2="}\n{"messages": [{"role": "user", "content": "3+3?"}]}\n')
    out = tmp_path / "out.jsonl"
    p = run("generate", "--model", str(ck), "--prompts", str(prompts), "--n", "2", "--max-tokens", "5",
            "--seed", "0", "--output", str(out))
    assert p.returncode == 0, p.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 3 and all(len(r["completions"]) == 2 for r in rows)
    assert all(len(c["token_ids"]) <= 5 and c["finish_reason"] in ("stop", "length")
               for r in rows for c in r["completions"])
    assert "reasoning" in rows[2]["completions"][0]  # chat prompts are split into reasoning/answer
    p2 = run("generate", "--model", str(ck), "--prompts", str(prompts), "--n", "2", "--max-tokens", "5",
             "--seed", "0", "--output", str(tmp_path / "again.jsonl"))
    assert p2.returncode == 0 and (tmp_path / "again.jsonl").read_text() == out.read_text()  # seeded


@pytest.mark.parametrize(
    "extra, needle",
    [
        (["--top-p", "2"], "top_p"),
        (["--temperature", "-1"], "temperature"),
        (["--n", "0"], "n"),
        (["--max-tokens", "999999"], "max_tokens"),
    ],
)
def test_generate_bad_sampling_parameters(tmp_path, extra, needle):
    ck = tmp_path / "ck"
    assert main(["init", "--preset", "tiny", str(ck)]) == 0
    p = run("generate", "--model", str(ck), "--prompt", "hi", *extra)
    assert p.returncode == 2 and "Traceback" not in p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and needle in lines[0]


def test_generate_bad_prompt_file(tmp_path):
    ck = tmp_path / "ck"
    assert main(["init", "--preset", "tiny", str(ck)]) == 0
    bad = tmp_path / "bad.jsonl"
    bad.write_text('"ok"\n{not json\n')
    p = run("generate", "--model", str(ck), "--prompts", str(bad))
    assert p.returncode == 2 and "line 2" in p.stderr and "Traceback" not in p.stderr
    p = run("generate", "--model", str(tmp_path / "nope"), "--prompt", "x")
    assert p.returncode == 2 and "Traceback" not in p.stderr


def test_generate_spec_mtp_same_greedy_output_and_reports_acceptance(tmp_path):
    ck = tmp_path / "ck"
    assert main(["init", "--preset", "tiny", str(ck), "--seed", "1"]) == 0
    args = ["generate", "--model", str(ck), "--prompt", "12+34=", "--max-tokens", "12", "--temperature", "0"]
    plain, spec = run(*args), run(*args, "--spec-mtp")
    assert plain.returncode == 0 and spec.returncode == 0, spec.stderr
    assert spec.stdout == plain.stdout and "drafts accepted" in spec.stderr


@pytest.mark.parametrize("extra, needle", [(["--device", "cuda"], "no CUDA"), (["--device", "tpu"], "--device")])
def test_generate_bad_device(tmp_path, extra, needle):
    if "cuda" in extra and __import__("torch").cuda.is_available():
        pytest.skip("a GPU is present")
    ck = tmp_path / "ck"
    assert main(["init", "--preset", "tiny", str(ck)]) == 0
    p = run("generate", "--model", str(ck), "--prompt", "hi", *extra)
    assert p.returncode == 2 and "Traceback" not in p.stderr and needle in p.stderr, p.stderr


def test_generate_spec_mtp_on_a_dense_model_is_a_clear_error(tmp_path):
    from r1lab import preset
    cfg = preset("qwen2-1.5b").replace(vocab_size=2048, hidden_size=64, intermediate_size=64, num_hidden_layers=1,
                                       num_attention_heads=4, num_key_value_heads=2)
    (tmp_path / "dense.json").write_text(json.dumps(cfg.to_dict()))
    ck = tmp_path / "ck"
    assert main(["init", "--preset", str(tmp_path / "dense.json"), str(ck)]) == 0
    from r1lab.tokenizer import load_tokenizer
    load_tokenizer().save(tmp_path / "tok")
    p = run("generate", "--model", str(ck), "--prompt", "hi", "--spec-mtp", "--tokenizer", str(tmp_path / "tok"))
    assert p.returncode == 2 and "MTP" in p.stderr and "Traceback" not in p.stderr
