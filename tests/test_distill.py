"""`r1lab distill` (issue 15 item 2; SPEC §6): traces -> SFT of a dense student saved in Hugging
Face format, which transformers loads as Qwen2ForCausalLM / LlamaForCausalLM with equal logits."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from r1lab.train.distill import DistillConfig, DistillError, distill

TRACES = [
    {"messages": [{"role": "user", "content": f"digit sum of {a}{b}{c} mod 4"},
                  {"role": "assistant", "content": f"<think>\n{a}{(a + b) % 4}{(a + b + c) % 4} so the answer is "
                                                   f"{(a + b + c) % 4}\n</think>\n\n<answer> {(a + b + c) % 4} </answer>"}]}
    for a in range(3) for b in range(3) for c in range(3)
]


def _write_traces(path: Path) -> Path:
    path.write_text("".join(json.dumps(t) + "\n" for t in TRACES))
    return path


def _cli(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "r1lab.cli", "distill", *args, "--quiet"], capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("student, hf_class", [("qwen2-tiny", "Qwen2ForCausalLM"), ("llama-tiny", "LlamaForCausalLM")])
def test_distilled_student_loads_in_transformers_with_equal_logits(tmp_path, student, hf_class):
    transformers = pytest.importorskip("transformers")
    traces = _write_traces(tmp_path / "traces.jsonl")
    out = tmp_path / "run"
    summary = distill(DistillConfig(student=student, out_dir=str(out), traces=[str(traces)],
                                    sft_overrides=["steps=6", "batch_size=4", "seq_len=64", "log.every=100",
                                                   "checkpoint.every=3", "eval.every=0", "log.sample_every=0"]),
                      progress=False)
    final = Path(summary["final"])
    assert final == out / "final" and (final / "config.json").is_file() and (final / "tokenizer.json").is_file()
    hf = transformers.AutoModelForCausalLM.from_pretrained(final, torch_dtype=torch.float32).eval()
    assert type(hf).__name__ == hf_class
    from r1lab.checkpoint import load_model
    ours = load_model(str(final), device="cpu", dtype=torch.float32).eval()
    ids = torch.tensor([[1, 17, 93, 402, 5, 77, 1023, 8, 256, 11]])
    with torch.no_grad():
        a, b = ours(ids).logits, hf(ids).logits
    assert a.shape == b.shape and torch.allclose(a, b, atol=1e-4, rtol=1e-4), (a - b).abs().max()
    # the student learned from the traces: trained weights differ from a fresh init of the preset
    assert summary["sft"]["step"] == 6


def test_teacher_to_student_end_to_end_and_a_rerun_redoes_nothing(tmp_path):
    out = tmp_path / "d"
    args = ["--teacher", "r1zero-base", "--task", "chain_add", "--k", "16", "--limit", "24", "--temperature", "1.0",
            "--max-tokens", "64", "--student", "qwen2-tiny", "--out", str(out),
            "--set", "steps=8", "--set", "batch_size=4", "--set", "seq_len=96"]
    r = _cli(*args)
    assert r.returncode == 0, r.stderr[-2000:]
    stats = json.loads((out / "traces.stats.json").read_text())
    kept = [json.loads(x) for x in (out / "traces.jsonl").read_text().splitlines()]
    assert len(kept) == stats["kept"] >= 1 and stats["candidates"] == 16 * 24
    assert all("so the answer is" in k["messages"][-1]["content"] for k in kept)    # worked solutions only
    assert (out / "final" / "model.safetensors").is_file()
    before = (out / "final" / "model.safetensors").stat().st_mtime_ns
    r2 = _cli(*args)
    assert r2.returncode == 0 and "(reused)" in r2.stdout, r2.stdout + r2.stderr[-1500:]
    assert (out / "final" / "model.safetensors").stat().st_mtime_ns == before      # not trained again


@pytest.mark.parametrize("args, needle", [
    (["--teacher", "r1zero-base", "--task", "chain_add", "--student", "tiny"], "dense student"),
    (["--teacher", "r1zero-base", "--task", "chain_add", "--student", "qwen2-tiny",
      "--set", "model.overrides.vocab_size=100"], "vocabulary"),
    (["--teacher", "r1zero-base", "--student", "qwen2-tiny"], "--task"),
    (["--teacher", "no/such/dir", "--task", "chain_add", "--student", "qwen2-tiny"], "does not exist"),
    (["--traces", "missing.jsonl", "--student", "qwen2-tiny"], "missing.jsonl"),
    (["--teacher", "r1zero-base", "--task", "chain_add", "--student", "no-such-preset"], "no-such-preset"),
])
def test_bad_setups_fail_before_any_sampling_or_training(tmp_path, args, needle):
    out = tmp_path / "d"
    r = _cli(*args, "--out", str(out), timeout=300)
    assert r.returncode == 2, r.stdout + r.stderr[-1500:]
    assert needle in r.stderr and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (out / "traces.jsonl").exists() and not (out / "sft").exists()


def test_teacher_xor_traces():
    with pytest.raises(DistillError, match="exactly one"):
        distill(DistillConfig(student="qwen2-tiny"), progress=False)
