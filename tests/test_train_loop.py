"""The shared training loop: recipes, schedule, accumulation, SFT masks, checkpoints and exact resume."""

from __future__ import annotations

import json
import math
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from r1lab.cli import main
from r1lab.model.common import IGNORE_INDEX
from r1lab.tokenizer import EOS, GENERATION_PROMPT, USER, load_tokenizer, render_chat
from r1lab.train.config import (PretrainConfig, ScheduleConfig, SFTConfig, TrainConfigError, TrainError, from_dict,
                                load_recipe, to_dict, to_yaml)
from r1lab.train.data import (ArithmeticDocuments, DataError, PackedConversations, PackedDocuments,
                              encode_conversation, load_conversations)
from r1lab.train.loop import (LATEST_FILE, WALL_CLOCK_KEYS, Trainer, latest_checkpoint, list_checkpoints,
                              load_start, lr_factor)
from r1lab.train.plots import read_metrics

REPO = Path(__file__).resolve().parents[1]
CHAT_DATA = REPO / "recipes" / "data" / "chat_tiny.jsonl"

# A 2-layer MoE (1 dense + 1 MoE layer, 4 experts, top-2) with one MTP depth: seconds on a CPU.
TINY_MOE = {
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
    "q_lora_rank": 32, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "first_k_dense_replace": 1,
}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Recipes here set ``threads: 1``; the rest of a pytest session keeps its own count."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def pretrain_recipe(out_dir: Path, **changes) -> dict:
    recipe = {
        "model": {"init": "tiny", "overrides": dict(TINY_MOE)},
        "data": {"source": "arithmetic", "options": {"ops": "+-", "digits": [1, 2]}, "style": "plain"},
        "steps": 12, "batch_size": 4, "seq_len": 32, "threads": 1, "out_dir": str(out_dir),
        "optim": {"lr": 3e-3}, "schedule": {"warmup_steps": 2},
        "checkpoint": {"every": 0, "keep_last": 0},
        "log": {"progress": False, "every": 1000, "plots": False},
        "eval": {"every": 0},
    }
    for key, value in changes.items():
        node = recipe
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = value
    return recipe


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "r1lab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=REPO)


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("r1lab: error:"), stderr
    return lines[0]


def comparable(path: Path) -> list[dict]:
    return [{k: v for k, v in rec.items() if k not in WALL_CLOCK_KEYS} for rec in read_metrics(path)]


# ---------------------------------------------------------------------- recipes
def test_recipe_maps_onto_nested_dataclasses_with_overrides(tmp_path):
    f = tmp_path / "r.yaml"
    f.write_text(yaml.safe_dump({
        "steps": 7, "optim": {"lr": 1, "betas": [0.8, 0.9]}, "data": {"options": {"digits": [1, 3]}},
        "eval": {"every": 5, "task": "arithmetic"},
    }))
    cfg = load_recipe(f, PretrainConfig, ["optim.grad_accum=4", "model.overrides.hidden_size=64",
                                          "schedule.kind=linear", "eval.temperature=0", "log.tensorboard=true"])
    assert cfg.steps == 7 and cfg.optim.lr == 1.0 and isinstance(cfg.optim.lr, float)   # YAML int -> float
    assert cfg.optim.betas == [0.8, 0.9] and cfg.optim.grad_accum == 4
    assert cfg.model.overrides == {"hidden_size": 64} and cfg.schedule.kind == "linear"
    assert cfg.data.options == {"digits": [1, 3]} and cfg.eval.task == "arithmetic" and cfg.log.tensorboard is True
    # what resolved_recipe.yaml holds loads back to the same config
    again = tmp_path / "resolved.yaml"
    again.write_text(to_yaml(cfg))
    assert to_dict(load_recipe(again, PretrainConfig)) == to_dict(cfg)


@pytest.mark.parametrize("override, needle", [
    ("optim.lrr=1", "recipe field 'optim.lrr': unknown key; valid keys here: lr, betas, eps"),
    ("stepz=3", "recipe field 'stepz': unknown key"),
    ("data.options=3", "recipe field 'data.options': expected a mapping"),
    ("optim.lr=-1", "recipe field 'optim.lr': must be > 0, got -1"),
    ("optim.lr=fast", "recipe field 'optim.lr': expected a number"),
    ("steps=1.5", "recipe field 'steps': expected an integer"),
    ("log.progress=1", "recipe field 'log.progress': expected true or false"),
    ("schedule.kind=exp", "recipe field 'schedule.kind': must be one of cosine, constant, linear"),
    ("optim.betas=[0.9]", "recipe field 'optim.betas'"),
    ("eval.k=true", "recipe field 'eval.k': expected an integer"),
    ("data.paths=[a.txt]", "recipe field 'data.paths': only used with source 'files'"),
])
def test_recipe_errors_name_the_dotted_field(override, needle):
    with pytest.raises(TrainConfigError) as e:
        load_recipe(None, PretrainConfig, [override])
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_bad_recipe_files_and_overrides_are_one_line_errors(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("steps: [1,\n")
    with pytest.raises(TrainError, match="not valid YAML"):
        load_recipe(f, PretrainConfig)
    with pytest.raises(TrainError, match="does not exist"):
        load_recipe(tmp_path / "missing.yaml", PretrainConfig)
    with pytest.raises(TrainError, match="key.subkey=value"):
        load_recipe(None, PretrainConfig, ["steps"])


# ---------------------------------------------------------------------- schedule
def test_schedule_values_at_known_steps():
    cos = ScheduleConfig(warmup_steps=10, kind="cosine", min_lr_ratio=0.1)
    assert lr_factor(0, cos, 110) == pytest.approx(0.1)          # (0 + 1) / 10
    assert lr_factor(4, cos, 110) == pytest.approx(0.5)
    assert lr_factor(9, cos, 110) == pytest.approx(1.0)
    assert lr_factor(10, cos, 110) == pytest.approx(1.0)         # decay starts after warm-up
    assert lr_factor(60, cos, 110) == pytest.approx(0.55)        # half way: 0.1 + 0.9 * 0.5
    assert lr_factor(35, cos, 110) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_factor(110, cos, 110) == pytest.approx(0.1)
    assert lr_factor(500, cos, 110) == pytest.approx(0.1)        # stays at the floor
    lin = ScheduleConfig(warmup_steps=0, kind="linear", min_lr_ratio=0.0)
    assert [lr_factor(s, lin, 4) for s in range(5)] == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])
    const = ScheduleConfig(warmup_steps=4, kind="constant")
    assert [lr_factor(s, const, 100) for s in (0, 3, 4, 99)] == pytest.approx([0.25, 1.0, 1.0, 1.0])
    fixed = ScheduleConfig(kind="linear", min_lr_ratio=0.0, total_steps=10)   # its own length
    assert lr_factor(5, fixed, 1000) == pytest.approx(0.5)


# ---------------------------------------------------------------------- accumulation
def _trainer(tmp_path: Path, name: str, accum: int, batch: int) -> Trainer:
    from r1lab.train.pretrain import build_algorithm

    cfg = from_dict(PretrainConfig, pretrain_recipe(tmp_path / name, batch_size=batch, **{"optim.grad_accum": accum,
                                                                                            "optim.lr": 1e-3}))
    model, tok = load_start(cfg.model, cfg.seed)
    return Trainer(cfg, model, tok, build_algorithm(cfg, model, tok))


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    runs = {}
    for name, accum, batch in (("accum", 2, 3), ("big", 1, 6)):
        t = _trainer(tmp_path, name, accum, batch)
        grads = {}
        step = t.optimizer.step

        def capture(*a, _step=step, _t=t, _grads=grads, **k):
            _grads.update({n: p.grad.clone() for n, p in _t.model.named_parameters() if p.grad is not None})
            return _step(*a, **k)

        t.optimizer.step = capture
        metrics = t.algorithm.train_step(t)
        runs[name] = (metrics, grads, {k: v.clone() for k, v in t.model.state_dict().items()})
    (m1, g1, s1), (m2, g2, s2) = runs["accum"], runs["big"]
    assert g1.keys() == g2.keys() and len(g1) > 10
    for n in g1:
        torch.testing.assert_close(g1[n], g2[n], rtol=0, atol=1e-6, msg=n)
    for n in s1:   # parameters after the AdamW step and the router biases after the bias update
        torch.testing.assert_close(s1[n], s2[n], rtol=0, atol=1e-6, msg=n)
    assert any("e_score_correction_bias" in n and s1[n].abs().sum() > 0 for n in s1)
    for k in ("loss", "mtp_loss", "balance_loss", "grad_norm", "expert_load_max_over_mean"):
        assert m1[k] == pytest.approx(m2[k], abs=1e-6), k


def test_packed_documents_are_a_function_of_position():
    tok = load_tokenizer(None)
    docs = ArithmeticDocuments({"ops": "+", "digits": [1, 2]}, 0.5, "plain", seed=3)
    a = PackedDocuments(docs, tok, 16)
    rows = a.next_rows(5)
    assert rows.shape == (5, 17) and rows[0, 0] == tok.bos_token_id
    b = PackedDocuments(ArithmeticDocuments({"ops": "+", "digits": [1, 2]}, 0.5, "plain", seed=3), tok, 16)
    first = b.next_rows(2)
    state = json.loads(json.dumps(b.state_dict()))
    c = PackedDocuments(ArithmeticDocuments({"ops": "+", "digits": [1, 2]}, 0.5, "plain", seed=3), tok, 16)
    c.load_state_dict(state)
    assert torch.equal(torch.cat([first, c.next_rows(3)]), rows)
    # documents are BOS + text + EOS back to back
    flat = rows.flatten().tolist()
    assert flat.count(tok.eos_token_id) >= 2 and tok.decode(flat[1:flat.index(tok.eos_token_id)]) == docs[0]


# ---------------------------------------------------------------------- SFT
def _spans(ids: list[int], labels: list[int]) -> list[list[int]]:
    spans, cur = [], []
    for i, lab in zip(ids, labels):
        if lab == IGNORE_INDEX:
            if cur:
                spans.append(cur)
            cur = []
        else:
            assert lab == i
            cur.append(i)
    return spans + ([cur] if cur else [])


def test_sft_labels_are_exactly_the_assistant_tokens():
    tok = load_tokenizer(None)
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+3?"},
            {"role": "assistant", "content": "<think>\n2+3: 2+3+0=05 =5\n</think>\n\n5"}]
    conv = encode_conversation(msgs, tok)
    prompt = tok.encode(render_chat(msgs[:-1], add_generation_prompt=True))   # what the engine sends
    completion = tok.encode("2+3: 2+3+0=05 =5\n</think>\n\n5") + [tok.eos_token_id]
    assert conv.ids == prompt + completion
    assert conv.labels == [IGNORE_INDEX] * len(prompt) + completion        # token by token
    # a reply without reasoning gets an empty think block, as format_completion writes it
    direct = encode_conversation([{"role": "user", "content": "2+3?"}, {"role": "assistant", "content": "5"}], tok)
    assert tok.decode(_spans(direct.ids, direct.labels)[0]) == "\n</think>\n\n5" + EOS


def test_sft_multi_turn_trains_every_assistant_turn_or_only_the_last():
    tok = load_tokenizer(None)
    msgs = [{"role": "user", "content": "What is 7*8?"}, {"role": "assistant", "content": "7*8=56\n</think>\n\n56"},
            {"role": "user", "content": "And 56+4?"}, {"role": "assistant", "content": "56+4=60\n</think>\n\n60"}]
    conv = encode_conversation(msgs, tok, "all")
    # the text is the official template for earlier turns, then the generation prompt and the completion
    text = render_chat(msgs[:2]) + USER + "And 56+4?" + GENERATION_PROMPT + "56+4=60\n</think>\n\n60" + EOS
    assert tok.decode(conv.ids) == text
    spans = [tok.decode(s) for s in _spans(conv.ids, conv.labels)]
    assert spans == ["\n\n56" + EOS, "56+4=60\n</think>\n\n60" + EOS]   # earlier turn: only what follows </think>
    last = encode_conversation(msgs, tok, "last")
    assert last.ids == conv.ids
    assert [tok.decode(s) for s in _spans(last.ids, last.labels)] == spans[1:]


def test_sft_packing_masks_across_conversation_boundaries():
    tok = load_tokenizer(None)
    convs = [encode_conversation([{"role": "user", "content": f"q{i}"}, {"role": "assistant", "content": f"a{i}"}],
                                 tok) for i in range(3)]
    n = len(convs[0].ids)
    packer = PackedConversations(convs, seq_len=2 * n + 2, pad_id=tok.pad_token_id, seed=0, shuffle=False)
    ids, labels = packer.next_rows(2)
    assert ids[0, :2 * n].tolist() == convs[0].ids + convs[1].ids      # two whole conversations, then padding
    assert labels[0, :2 * n].tolist() == convs[0].labels + convs[1].labels
    assert (labels[0, 2 * n:] == IGNORE_INDEX).all() and (ids[0, 2 * n:] == tok.pad_token_id).all()
    assert labels[0, n] == IGNORE_INDEX          # the next conversation's BOS is never a target
    assert ids[1, :n].tolist() == convs[2].ids   # the third did not fit: next row
    assert packer.state_dict() == {"next_conv": 4}


def test_sft_data_errors_name_file_and_line(tmp_path):
    tok = load_tokenizer(None)
    f = tmp_path / "chat.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n{"messages": [{"role": "robot", "content": "x"}]}\n')
    with pytest.raises(DataError, match=r"chat.jsonl line 2: message 0: unsupported role"):
        load_conversations([str(f)], tok)
    f.write_text('{"prompt": "a", "completion": "b"}\n\n{"messages": [\n')
    with pytest.raises(DataError, match=r"chat.jsonl line 3: not valid JSON"):
        load_conversations([str(f)], tok)
    f.write_text('{"messages": [{"role": "user", "content": "only a question"}]}\n')
    with pytest.raises(DataError, match="line 1: no assistant message"):
        load_conversations([str(f)], tok)


def test_sft_short_run_with_accumulation(tmp_path):
    from r1lab.train.sft import sft

    cfg = from_dict(SFTConfig, {
        "model": {"init": "tiny", "overrides": dict(TINY_MOE)}, "data": {"paths": [str(CHAT_DATA)]},
        "steps": 3, "batch_size": 2, "seq_len": 96, "threads": 1, "out_dir": str(tmp_path / "sft"),
        "optim": {"grad_accum": 2}, "log": {"progress": False, "plots": False}, "eval": {"every": 3, "heldout_rows": 2},
    })
    summary = sft(cfg)
    recs = read_metrics(tmp_path / "sft" / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 1, 2, 3]
    assert all(math.isfinite(r["loss"]) and r["target_tokens"] > 0 for r in recs[1:])
    assert "heldout_loss" in recs[0] and "heldout_loss" in recs[-1]
    assert Path(summary["final"], "tokenizer.json").is_file()


# ---------------------------------------------------------------------- checkpoints and resume
def test_resume_after_kill_9_is_identical(tmp_path):
    """SIGKILL at a random moment after a few checkpoints; --resume reproduces the rest exactly."""
    recipe = pretrain_recipe(tmp_path / "unused", steps=24, **{
        "checkpoint.every": 2, "checkpoint.keep_last": 2, "eval.every": 4, "eval.heldout_rows": 2,
        "log.sample_every": 6, "log.samples": 1, "log.sample_tokens": 4})
    f = tmp_path / "recipe.yaml"
    f.write_text(yaml.safe_dump(recipe))
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    cmd = [sys.executable, "-m", "r1lab.cli", "pretrain", str(f)]
    with open(tmp_path / "full.log", "w") as flog, open(tmp_path / "cut.log", "w") as clog:
        full = subprocess.Popen(cmd + ["--set", f"out_dir={full_dir}"], stdout=flog, stderr=subprocess.STDOUT,
                                cwd=REPO)
        cut = subprocess.Popen(cmd + ["--set", f"out_dir={cut_dir}"], stdout=clog, stderr=subprocess.STDOUT,
                               cwd=REPO)
        try:
            deadline = time.time() + 120
            while not (cut_dir / "checkpoints" / "step_000006").exists():
                assert cut.poll() is None, (tmp_path / "cut.log").read_text()
                assert time.time() < deadline, "no checkpoint after 120 s"
                time.sleep(0.01)
            delay = random.uniform(0.0, 0.3)
            time.sleep(delay)
            assert cut.poll() is None, f"the run finished within {delay:.3f}s; nothing was interrupted"
            cut.send_signal(signal.SIGKILL)
            cut.wait()
        finally:
            for p in (full, cut):
                if p.poll() is None and p is cut:
                    p.kill()
        assert full.wait(timeout=180) == 0, (tmp_path / "full.log").read_text()
    killed_at = max(r["step"] for r in read_metrics(cut_dir / "metrics.jsonl"))
    assert not (cut_dir / "final").exists() and killed_at < 24
    resumed = run_cli("pretrain", str(f), "--set", f"out_dir={cut_dir}", "--resume", timeout=180)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    expected, got = comparable(full_dir / "metrics.jsonl"), comparable(cut_dir / "metrics.jsonl")
    assert [r["step"] for r in got] == list(range(25))
    assert got == expected, f"killed {delay:.3f}s after step_000006 (last logged step {killed_at})"
    assert (cut_dir / "samples.jsonl").read_text() == (full_dir / "samples.jsonl").read_text()
    from safetensors.torch import load_file

    a, b = load_file(full_dir / "final" / "model.safetensors"), load_file(cut_dir / "final" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_keep_last_n_final_model_plots_and_loss_decreases(tmp_path):
    from r1lab import load_model
    from r1lab.train.pretrain import pretrain

    out = tmp_path / "run"
    cfg = from_dict(PretrainConfig, pretrain_recipe(out, steps=30, batch_size=8, **{
        "checkpoint.every": 5, "checkpoint.keep_last": 2, "log.plots": True}))
    summary = pretrain(cfg)
    losses = [r["loss"] for r in read_metrics(out / "metrics.jsonl")]
    assert len(losses) == 30 and sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 1.0, losses
    assert [s for s, _ in list_checkpoints(out)] == [25, 30]
    assert (out / "checkpoints" / LATEST_FILE).read_text().strip() == "step_000030"
    assert {"loss.png", "lr.png", "balance.png", "throughput.png"} <= {p.name for p in (out / "plots").iterdir()}
    assert load_model(summary["final"]).config.hidden_size == 64
    assert (Path(summary["final"]) / "tokenizer.json").is_file()
    assert yaml.safe_load((out / "resolved_recipe.yaml").read_text())["steps"] == 30

    # a checkpoint killed mid-write is a hidden temporary directory: ignored, then cleaned up
    partial = out / "checkpoints" / ".step_000035.partial-12345"
    partial.mkdir()
    (partial / "trainer_state.pt").write_bytes(b"\x00" * 10)
    assert latest_checkpoint(out).name == "step_000030"
    with pytest.raises(TrainError, match="already holds checkpoints.*--resume"):
        pretrain(from_dict(PretrainConfig, pretrain_recipe(out, steps=32)))
    more = pretrain(from_dict(PretrainConfig, pretrain_recipe(out, steps=32, resume=True, batch_size=8, **{
        "checkpoint.every": 5, "checkpoint.keep_last": 2})))
    assert more["resumed_from"] == 30 and more["step"] == 32 and not partial.exists()
    assert [s for s, _ in list_checkpoints(out)] == [30, 32]
    assert [r["step"] for r in read_metrics(out / "metrics.jsonl")] == list(range(1, 33))


# ---------------------------------------------------------------------- CLI errors before training
def test_cli_errors_are_one_line_and_come_before_training(tmp_path, capsys):
    f = tmp_path / "recipe.yaml"
    out = tmp_path / "out"
    f.write_text(yaml.safe_dump(pretrain_recipe(out)))
    p = run_cli("pretrain", str(f), "--set", "model.overrides.vocab_size=1000")
    assert p.returncode == 2
    assert "vocabulary mismatch" in one_line_error(p.stderr) and "1000" in p.stderr
    cases = [
        (["--set", "data.source=files", "--set", "data.paths=[nowhere/corpus.jsonl]"],
         "data file nowhere/corpus.jsonl does not exist"),
        (["--set", "optim.lrr=1"], "recipe field 'optim.lrr': unknown key"),
        (["--set", "model.overrides.hidden_sise=8"], "hidden_sise"),
        (["--set", "seq_len=5000"], "max_position_embeddings"),
    ]
    for extra, needle in cases:
        assert main(["pretrain", str(f), *extra]) == 2
        assert needle in one_line_error(capsys.readouterr().err)
    bad = tmp_path / "chat.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": 1, "completion": "b"}\n')
    g = tmp_path / "sft.yaml"
    g.write_text(yaml.safe_dump({"model": {"init": "tiny", "overrides": dict(TINY_MOE)}, "data": {"paths": [str(bad)]},
                                 "out_dir": str(out), "log": {"progress": False}}))
    assert main(["sft", str(g)]) == 2
    assert "chat.jsonl line 2" in one_line_error(capsys.readouterr().err)
    assert not (out / "metrics.jsonl").exists()   # nothing trained


def test_sigterm_stops_at_a_step_boundary_with_checkpoint_and_plots(tmp_path):
    f = tmp_path / "recipe.yaml"
    out = tmp_path / "out"
    f.write_text(yaml.safe_dump(pretrain_recipe(out, steps=10_000, **{"log.plots": True})))
    p = subprocess.Popen([sys.executable, "-m", "r1lab.cli", "pretrain", str(f)], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, cwd=REPO)
    try:
        deadline = time.time() + 60
        while not (out / "metrics.jsonl").is_file() or not (out / "metrics.jsonl").read_text().count("\n") >= 3:
            assert p.poll() is None and time.time() < deadline, p.communicate()
            time.sleep(0.02)
        p.send_signal(signal.SIGTERM)
        stdout, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            p.kill()
    assert p.returncode == 143, stderr
    assert "stopped by SIGTERM" in stdout and "--resume" in stdout
    last = read_metrics(out / "metrics.jsonl")[-1]["step"]
    assert latest_checkpoint(out).name == f"step_{last:06d}"      # the state after the last logged step
    assert (out / "plots" / "loss.png").is_file() and not (out / "final").exists()


def test_pretrain_on_jsonl_and_text_files(tmp_path):
    from r1lab.train.pretrain import pretrain

    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(json.dumps({"text": f"document {i}: " + "abc " * (i % 7)}) + "\n" for i in range(60)))
    notes = tmp_path / "notes.txt"
    notes.write_text("plain text line\n" * 50)
    out = tmp_path / "files"
    cfg = from_dict(PretrainConfig, pretrain_recipe(out, steps=2, **{
        "data": {"source": "files", "paths": [str(corpus), str(notes)], "heldout_fraction": 0.2},
        "eval.every": 2, "eval.heldout_rows": 2, "log.sample_every": 2, "log.samples": 1}))
    pretrain(cfg)
    recs = read_metrics(out / "metrics.jsonl")
    assert [r["step"] for r in recs] == [0, 1, 2] and "heldout_loss" in recs[-1]
    assert json.loads((out / "samples.jsonl").read_text().splitlines()[0])["prompt"]
    corpus.write_text('{"text": "ok"}\n{"txt": "typo"}\n')
    with pytest.raises(DataError, match=r"corpus.jsonl line 2: expected an object with a string field 'text'"):
        pretrain(from_dict(PretrainConfig, pretrain_recipe(tmp_path / "again", **{
            "data": {"source": "files", "paths": [str(corpus)]}})))
