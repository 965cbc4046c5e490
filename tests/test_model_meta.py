"""A model carries the prompt style (and task) it was trained with — ``r1lab.json`` beside
``config.json`` — and evaluation/GRPO use it; recipes and GSM8K's training split ship in the
package; input errors of eval/generate come first and name their line."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch

from r1lab.checkpoint import SHIPPED_DIR
from r1lab.eval import EvalError, evaluate
from r1lab.generate import GenerateError, read_prompts
from r1lab.model_meta import META_FILE, MetaError, read_meta, write_meta
from r1lab.train.config import PretrainConfig, SHIPPED_RECIPES_DIR, SFTConfig, TrainError, from_dict, resolve_recipe

REPO = Path(__file__).resolve().parents[1]
TINY_MOE = {
    "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2, "num_attention_heads": 2,
    "q_lora_rank": 32, "kv_lora_rank": 32, "qk_nope_head_dim": 16, "qk_rope_head_dim": 8, "v_head_dim": 16,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "moe_intermediate_size": 32, "first_k_dense_replace": 1,
}
QUIET = {"progress": False, "every": 1000, "plots": False}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def cli(*args, cwd=REPO, timeout=120):
    return subprocess.run([sys.executable, "-m", "r1lab.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd)


# ---------------------------------------------------------------------- the shipped model's style
def test_shipped_base_is_evaluated_in_its_own_prompt_style():
    """r1zero-base was pre-trained on bare `digit sum of … mod 4` questions: evaluated by name
    it gets them (plain prompts, its task options), so its answers are well-formed — not 0 %."""
    s = evaluate("chain_add", model="r1zero-base", k=1, limit=12, temperature=0.0, progress=False)
    assert s["prompt_style"] == "plain" and s["prompt_style_from_model"]
    assert s["task_options_from_model"]["wording"] == "digit_sum"
    assert s["format_rate"] == 1.0 and s["truncation_rate"] == 0.0
    # the caller's style wins: R1-Zero's long template, which this model never saw
    other = evaluate("chain_add", model="r1zero-base", k=1, limit=4, temperature=0.0, progress=False,
                     prompt_style="r1_zero", max_tokens=24)
    assert other["prompt_style"] == "r1_zero" and "prompt_style_from_model" not in other
    # and the caller's task options win over the model's
    third = evaluate("chain_add", model="r1zero-base", k=1, limit=2, temperature=0.0, progress=False,
                     task_options={"terms": 3}, max_tokens=8)
    assert "task_options_from_model" not in third


def test_meta_file_round_trip_and_errors(tmp_path):
    assert read_meta(tmp_path) == {}
    write_meta(tmp_path, {"prompt_style": "chat", "task": {"name": "gsm8k", "options": {}}, "x": None})
    assert read_meta(tmp_path) == {"prompt_style": "chat", "task": {"name": "gsm8k", "options": {}}}
    (tmp_path / META_FILE).write_text("{not json")
    with pytest.raises(MetaError, match="not readable JSON"):
        read_meta(tmp_path)
    (tmp_path / META_FILE).write_text('{"prompt_style": "fancy"}')
    with pytest.raises(MetaError, match="unknown prompt_style 'fancy'"):
        read_meta(tmp_path)
    with pytest.raises(EvalError, match="unknown prompt_style"):
        evaluate("chain_add", model=str(tmp_path), k=1, limit=1, progress=False)


# ---------------------------------------------------------------------- the trainer writes it
def test_pretrain_and_sft_checkpoints_carry_their_prompt_style(tmp_path):
    from r1lab.train.pretrain import pretrain
    from r1lab.train.sft import sft

    pre = tmp_path / "pre"
    summary = pretrain(from_dict(PretrainConfig, {
        "model": {"init": "tiny", "overrides": dict(TINY_MOE)},
        "data": {"source": "arithmetic", "options": {"ops": "+", "digits": [1, 1]}, "style": "plain"},
        "steps": 2, "batch_size": 2, "seq_len": 32, "threads": 1, "out_dir": str(pre),
        "checkpoint": {"every": 1, "keep_last": 0}, "log": QUIET, "eval": {"every": 0}}))
    final = read_meta(summary["final"])
    assert final == {"prompt_style": "plain", "task": {"name": "arithmetic", "options": {"ops": "+", "digits": [1, 1]}},
                     "trained_by": "pretrain"}
    assert read_meta(pre / "checkpoints" / "step_000001") == final

    # SFT renders conversations through the chat template: its model is a chat model
    out = sft(from_dict(SFTConfig, {
        "model": {"init": summary["final"]}, "data": {"paths": [str(SHIPPED_RECIPES_DIR / "data" / "chat_tiny.jsonl")]},
        "steps": 1, "batch_size": 1, "seq_len": 64, "threads": 1, "out_dir": str(tmp_path / "sft"),
        "log": QUIET, "eval": {"every": 0}}))
    assert read_meta(out["final"]) == {"prompt_style": "chat", "trained_by": "sft"}

    # pre-training on files has no prompt style of its own: it keeps the start model's
    text = tmp_path / "doc.txt"
    text.write_text("some plain text to read\n" * 40)
    again = pretrain(from_dict(PretrainConfig, {
        "model": {"init": summary["final"]}, "data": {"source": "files", "paths": [str(text)]},
        "steps": 1, "batch_size": 1, "seq_len": 32, "threads": 1, "out_dir": str(tmp_path / "files"),
        "log": QUIET, "eval": {"every": 0}}))
    assert read_meta(again["final"])["prompt_style"] == "plain"


def test_grpo_prompts_in_the_start_models_style_unless_the_recipe_says():
    from r1lab.train.grpo import GRPOConfig, build_algorithm
    from r1lab.train.loop import load_start

    def style(**data):
        cfg = from_dict(GRPOConfig, {"model": {"init": "r1zero-base"}, "group_size": 2, "prompts_per_step": 2,
                                     "data": {"task": "chain_add", "options": {"wording": "digit_sum", "terms": 10,
                                                                               "digits": 1, "mod": 4,
                                                                               "solution": "prefix"}, **data}})
        model, tok = load_start(cfg.model, 0)
        algo = build_algorithm(cfg, model, tok)
        return algo.style, algo.meta["prompt_style"]

    assert style() == ("plain", "plain")                      # from r1zero-base's r1lab.json
    assert style(prompt_style="r1_zero") == ("r1_zero", "r1_zero")


def test_bad_meta_of_the_start_model_is_a_recipe_error(tmp_path):
    from r1lab.train.loop import start_meta
    from r1lab.train.config import ModelSpec

    (tmp_path / META_FILE).write_text("[1, 2]")
    with pytest.raises(TrainError, match=r"model.init.*must hold a JSON object"):
        start_meta(ModelSpec(init=str(tmp_path)))
    assert start_meta(ModelSpec(init="tiny")) == {}


# ---------------------------------------------------------------------- errors come first, with lines
def test_eval_bad_temperature_errors_before_any_progress_bar():
    r = cli("eval", "--task", "chain_add", "--model", "r1zero-base", "--temperature", "-1")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr == "r1lab: error: temperature must be >= 0, got -1.0\n"
    r = cli("eval", "--task", "chain_add", "--model", "r1zero-base", "--top-p", "0")
    assert r.returncode == 2 and r.stderr == "r1lab: error: top_p must be in (0, 1], got 0.0\n"


def test_prompts_file_bad_role_names_its_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "hi"}\n\n{"messages": [{"role": "user", "content": "a"}]}\n'
                 '{"messages": [{"role": "robot", "content": "a"}]}\n')
    with pytest.raises(GenerateError, match=r"p.jsonl line 4: message 0: unsupported role 'robot'"):
        read_prompts(f, chat=False)
    f.write_text('{"messages": [{"role": "user"}]}\n')
    with pytest.raises(GenerateError, match=r"line 1: message 0: missing 'content'"):
        read_prompts(f, chat=False)
    f.write_text('{"messages": []}\n')
    with pytest.raises(GenerateError, match=r"line 1: 'messages' is empty"):
        read_prompts(f, chat=False)
    r = cli("generate", "--model", "r1zero-base", "--prompts", str(f))      # before the model loads
    assert r.returncode == 2 and r.stderr.strip().endswith("line 1: 'messages' is empty; give at least one user "
                                                            "message") and "Traceback" not in r.stderr


# ---------------------------------------------------------------------- what a plain pip install holds
def test_shipped_recipes_resolve_from_any_directory(tmp_path):
    assert resolve_recipe("r1_zero_tiny") == SHIPPED_RECIPES_DIR / "r1_zero_tiny.yaml"
    assert resolve_recipe("recipes/r1_zero_tiny.yaml").resolve() == (SHIPPED_RECIPES_DIR / "r1_zero_tiny.yaml").resolve()
    local = tmp_path / "r1_zero_tiny.yaml"
    local.write_text("steps: 3\n")
    assert resolve_recipe(local) == local                         # a real file always wins
    assert resolve_recipe(tmp_path / "nope.yaml") == tmp_path / "nope.yaml"
    r = cli("grpo", "no_such_recipe", cwd=tmp_path)
    assert r.returncode == 2 and "recipe file no_such_recipe does not exist (shipped recipes: " in r.stderr
    r = cli("grpo", "r1_zero_tiny", "--set", "steps=0", cwd=tmp_path)   # found by name, then validated
    assert r.returncode == 2 and "steps" in r.stderr and "does not exist" not in r.stderr


def test_wheel_ships_recipes_models_and_training_data(tmp_path):
    """What `r1lab demo` and the GRPO recipes read must be inside a plain (non-editable) install."""
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(REPO)], capture_output=True, text=True, timeout=300)
    if r.returncode != 0 and "No module named" in r.stderr:
        pytest.skip(f"cannot build a wheel here: {r.stderr.strip().splitlines()[-1]}")
    assert r.returncode == 0, r.stderr
    names = set(zipfile.ZipFile(next(tmp_path.glob("r1lab-*.whl"))).namelist())
    for rel in ("recipes/r1_zero_tiny.yaml", "recipes/base_tiny.yaml", "recipes/data/chat_tiny.jsonl",
                "assets/models/r1zero-base/model.safetensors", f"assets/models/r1zero-base/{META_FILE}",
                "assets/benchmarks/gsm8k_train.jsonl", "assets/benchmarks/gsm8k_test.jsonl"):
        assert f"r1lab/{rel}" in names, rel
    assert json.loads((SHIPPED_DIR / "r1zero-base" / META_FILE).read_text())["prompt_style"] == "plain"
