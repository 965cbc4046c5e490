"""GRPO on the shared loop (training issue): exact old-policy log-probs from the engine,
dynamic sampling, resume, recipe errors."""

import json
import subprocess
import sys

import pytest
import torch

from r1lab.train.config import TrainError, from_dict, load_recipe
from r1lab.train.grpo import GRPOConfig, Rollout, _keep_groups, grpo

WALL = {"time", "step_time", "tokens_per_s", "gen_seconds", "train_seconds", "gen_tokens_per_s"}


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """The runs here set ``threads: 1``; the rest of a pytest session keeps its own count."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def small(tmp_path, **kw):
    base = {"model": {"init": "tiny", "overrides": {"num_hidden_layers": 2}}, "steps": 2, "group_size": 4, "threads": 1,
            "prompts_per_step": 2, "max_new_tokens": 12, "out_dir": str(tmp_path / "run"),
            "rewards": {"correct": 1.0, "format": 0.1}, "data": {"task": "arithmetic", "options": {"digits": [1, 1]}},
            "log": {"progress": False, "plots": False}, "optim": {"lr": 1e-3}, "seed": 3}
    for k, v in kw.items():
        if isinstance(v, dict) and isinstance(base.get(k), dict):
            base[k] = {**base[k], **v}
        else:
            base[k] = v
    return from_dict(GRPOConfig, base)


def metrics(path):
    return [{k: v for k, v in json.loads(line).items() if k not in WALL} for line in open(path)]


def test_first_update_sees_ratio_one_because_generation_logprobs_are_exact(tmp_path):
    # one mini-batch, one epoch: the policy that scores the rollout is the one that sampled it
    grpo(small(tmp_path, steps=1, beta=0.0, temperature=0.7, micro_batch_size=3))
    (m,) = metrics(tmp_path / "run" / "metrics.jsonl")
    assert abs(m["ratio_mean"] - 1.0) < 1e-5 and m["approx_kl_old"] < 1e-8
    assert m["clip_frac"] == 0.0 and m["groups"] == 2 and 0 < m["response_len"] <= 12
    for key in ("reward", "accuracy", "response_len_max", "truncation_rate", "zero_variance_share", "entropy",
                "grad_norm", "lr", "reward_correct", "reward_format", "expert_load_max_over_mean"):
        assert key in m, key


def test_grpo_resume_reproduces_the_uninterrupted_run(tmp_path):
    # a constant schedule, so a run told to stop at step 2 has the same lr as the 3-step run
    kw = dict(beta=0.01, mini_batches=2, checkpoint={"every": 1}, schedule={"kind": "constant"}, ref_reset_every=2)
    grpo(small(tmp_path / "a", steps=3, **kw))
    grpo(small(tmp_path / "b", steps=2, **kw))
    rest = small(tmp_path / "b", steps=3, resume=True, **kw)
    grpo(rest)
    a, b = metrics(tmp_path / "a" / "run" / "metrics.jsonl"), metrics(tmp_path / "b" / "run" / "metrics.jsonl")
    assert len(a) == len(b) == 3 and a == b


def test_dynamic_sampling_keeps_only_informative_groups():
    G = 3
    ro = Rollout(examples=list("aaabbbccc"), prompt_ids=[[1]] * 9, completion_ids=[[i] for i in range(9)],
                 old_logprobs=[[0.0]] * 9, texts=[str(i) for i in range(9)], finish_reasons=["stop"] * 9,
                 rewards=torch.tensor([1.0, 0, 1, 1, 1, 1, 0, 0, 1]), per_reward={"correct": [0.0] * 9},
                 correct=[0.0] * 9)
    from r1lab.train.grpo_loss import zero_variance_groups
    keep = ~zero_variance_groups(ro.rewards, G)
    assert keep.tolist() == [True, False, True]
    kept = _keep_groups(ro, keep, G)
    assert kept.texts == ["0", "1", "2", "6", "7", "8"] and kept.rewards.tolist() == [1, 0, 1, 0, 0, 1]


def test_dynamic_sampling_with_no_informative_group_keeps_the_first_batch(tmp_path):
    """A random model neither answers right nor writes the tags: every group is flat in every
    round, so all max_sampling_rounds rounds run (2 × 2 flat groups), the first batch is kept
    (2 of them left out) and its advantages, hence the policy loss, are exactly 0. The
    refill with informative groups: tests/test_grpo_run.py."""
    grpo(small(tmp_path, steps=1, dynamic_sampling=True, max_sampling_rounds=2))
    (m,) = metrics(tmp_path / "run" / "metrics.jsonl")
    assert m["reward"] == m["reward_std"] == 0.0 and m["zero_variance_share"] == 1.0
    assert (m["sampling_rounds"], m["dropped_groups"], m["groups"]) == (2, 2, 2)
    assert m["policy_loss"] == 0.0


@pytest.mark.parametrize("kw, needle", [
    ({"group_size": 1}, "group_size"), ({"temperature": 0.0}, "temperature"), ({"advantage": "zscore"}, "advantage"),
    ({"loss_agg": "sum"}, "loss_agg"), ({"rewards": {"acuracy": 1.0}}, "acuracy"), ({"eps_low": -1}, "eps_low"),
])
def test_bad_grpo_settings_are_clear_errors(tmp_path, kw, needle):
    with pytest.raises(TrainError, match=needle):
        small(tmp_path, **kw)


def test_recipe_unknown_key_and_cli_errors(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("group_size: 4\nprompts_per_step: 2\nbetta: 0.1\n")
    with pytest.raises(TrainError, match="betta"):
        load_recipe(recipe, GRPOConfig)
    p = subprocess.run([sys.executable, "-m", "r1lab.cli", "grpo", str(recipe)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "betta" in p.stderr and "Traceback" not in p.stderr
    recipe.write_text("group_size: 4\nprompts_per_step: 2\ndata:\n  task: nosuch\n")
    p = subprocess.run([sys.executable, "-m", "r1lab.cli", "grpo", str(recipe), "--set", f"out_dir={tmp_path / 'o'}"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "unknown task 'nosuch'" in p.stderr and "Traceback" not in p.stderr
    assert not (tmp_path / "o" / "checkpoints").exists()     # nothing trained
