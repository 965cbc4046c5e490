"""GRPO runs, end to end (issue 13): kill -9 then --resume, dynamic sampling's refill,
``ref_reset_every``, ``inner_epochs > 1`` and no reference model at β = 0.

The in-process runs score with rules that fix which groups carry signal, whatever a tiny
random model writes: ``by_question`` gives every sample of a "solved" question 1, of a
"hopeless" one 0, and lets the samples of a "mixed" question alternate 0, 1, 0, … — so the
expected batch of every step can be worked out from the question order alone;
``alternating`` makes every group mixed (a nonzero advantage on every sample)."""

from __future__ import annotations

import gc
import random
import signal
import subprocess
import sys
import threading
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml

from r1lab.rewards import REWARDS
from r1lab.train import grpo as grpo_mod
from r1lab.train.config import from_dict
from r1lab.train.grpo import GRPOConfig, PromptStream, build_algorithm, grpo
from r1lab.train.loop import TRAINER_STATE_FILE, WALL_CLOCK_KEYS, Trainer, latest_checkpoint, load_start
from r1lab.train.plots import read_metrics

REPO = Path(__file__).resolve().parents[1]
WALL = WALL_CLOCK_KEYS | {"gen_seconds", "train_seconds", "gen_tokens_per_s"}
RULE, ALTERNATING = "_test_by_question", "_test_alternating"


@pytest.fixture(autouse=True)
def _restore_torch_threads():
    """Recipes here set ``threads: 1``; the rest of a pytest session keeps its own count."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def question_class(question: str) -> str:
    return ("solved", "hopeless", "mixed")[zlib.crc32(question.encode()) % 3]


def by_question(completions, examples, kind=question_class) -> list[float]:
    """See the module docstring: a mixed question's k-th sample in one call scores k % 2."""
    seen: dict[int, int] = {}
    out = []
    for ex in examples:
        k = seen[id(ex)] = seen.get(id(ex), -1) + 1
        c = kind(ex.question)
        out.append(1.0 if c == "solved" else 0.0 if c == "hopeless" else float(k % 2))
    return out


def alternating(completions, examples) -> list[float]:
    return by_question(completions, examples, kind=lambda q: "mixed")


@pytest.fixture
def rule(monkeypatch):
    monkeypatch.setitem(REWARDS, RULE, by_question)
    monkeypatch.setitem(REWARDS, ALTERNATING, alternating)


def config(tmp_path, **kw) -> GRPOConfig:
    base = {"model": {"init": "tiny", "overrides": {"num_hidden_layers": 2}}, "steps": 1, "group_size": 4,
            "prompts_per_step": 2, "max_new_tokens": 8, "out_dir": str(tmp_path / "run"), "rewards": {RULE: 1.0},
            "data": {"task": "arithmetic", "options": {"digits": [1, 2]}, "limit": 48}, "beta": 0.0,
            "log": {"progress": False, "plots": False}, "optim": {"lr": 3e-3}, "seed": 3, "threads": 1}
    return from_dict(GRPOConfig, {**base, **kw})


def setup(cfg: GRPOConfig):
    model, tokenizer = load_start(cfg.model, cfg.seed)
    algorithm = build_algorithm(cfg, model, tokenizer)
    return algorithm, Trainer(cfg, model, tokenizer, algorithm)


def records(cfg: GRPOConfig) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in WALL} for r in read_metrics(Path(cfg.out_dir) / "metrics.jsonl")]


def snapshot(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ---------------------------------------------------------------------- kill -9, then --resume
def test_grpo_kill_9_then_resume_reproduces_the_uninterrupted_run(tmp_path):
    """The shipped base on its task (rewards vary within groups), two mini-batches, dynamic
    sampling and a reference model reset after step 3. `r1lab grpo` in a subprocess gets
    SIGKILL at a random moment after its step-4 checkpoint (so the resumed run must take the
    reset reference from the checkpoint) while the uninterrupted run goes on in this
    process; `r1lab grpo --resume` (a fresh process) then reproduces that run's metrics
    (rewards per step included), samples and final weights exactly."""
    recipe = {
        "model": {"init": "r1zero-base"},
        "data": {"task": "chain_add", "options": {"terms": 10, "digits": 1, "mod": 4, "solution": "prefix",
                                                  "wording": "digit_sum"}, "prompt_style": "plain", "limit": 64},
        "rewards": {"correct": 1.0, "format": {"weight": 0.1, "options": {"style": "r1_zero"}}},
        "group_size": 4, "prompts_per_step": 2, "max_new_tokens": 32, "beta": 0.01, "ref_reset_every": 3,
        "mini_batches": 2, "dynamic_sampling": True, "max_sampling_rounds": 2, "steps": 6, "threads": 1, "seed": 0,
        "optim": {"lr": 1e-4}, "checkpoint": {"every": 1, "keep_last": 2},
        "log": {"progress": False, "plots": False, "sample_every": 2, "samples": 1}, "eval": {"every": 0},
    }
    f = tmp_path / "recipe.yaml"
    f.write_text(yaml.safe_dump(recipe))
    full_dir, cut_dir = tmp_path / "full", tmp_path / "cut"
    cmd = [sys.executable, "-m", "r1lab.cli", "grpo", str(f), "--set", f"out_dir={cut_dir}"]
    delay, problems = random.uniform(0.0, 0.3), []

    def kill_after_checkpoint_4():
        deadline = time.time() + 240
        while not (cut_dir / "checkpoints" / "step_000004").exists():
            if cut.poll() is not None or time.time() > deadline:
                problems.append("the run ended or stalled before its step-4 checkpoint")
                return
            time.sleep(0.01)
        time.sleep(delay)
        if cut.poll() is not None:
            problems.append(f"the run finished within {delay:.3f}s; nothing was interrupted")
            return
        cut.send_signal(signal.SIGKILL)
        cut.wait()

    with open(tmp_path / "cut.log", "w") as log:
        cut = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO)
        killer = threading.Thread(target=kill_after_checkpoint_4)
        killer.start()
        try:
            grpo(from_dict(GRPOConfig, {**recipe, "out_dir": str(full_dir)}))
        finally:
            killer.join()
            if cut.poll() is None:
                cut.kill()
                cut.wait()
    assert not problems, (problems, (tmp_path / "cut.log").read_text())
    killed_at = max(r["step"] for r in read_metrics(cut_dir / "metrics.jsonl"))
    assert not (cut_dir / "final").exists() and killed_at < 6
    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True, timeout=240, cwd=REPO)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout

    def comparable(d):
        return [{k: v for k, v in r.items() if k not in WALL} for r in read_metrics(d / "metrics.jsonl")]

    expected, got = comparable(full_dir), comparable(cut_dir)
    assert [r["step"] for r in got] == list(range(1, 7))
    # the rewards are informative (not all equal), so equal metrics mean equal rollouts
    assert any(r["reward_std"] > 0 for r in expected)
    assert [r["reward"] for r in got] == [r["reward"] for r in expected]
    assert got == expected, f"killed {delay:.3f}s after step_000004 (last logged step {killed_at})"
    assert (cut_dir / "samples.jsonl").read_text() == (full_dir / "samples.jsonl").read_text()
    from safetensors.torch import load_file

    a, b = load_file(full_dir / "final" / "model.safetensors"), load_file(cut_dir / "final" / "model.safetensors")
    assert same(a, b)


# ---------------------------------------------------------------------- dynamic sampling
def expected_batches(pool, cfg: GRPOConfig) -> list[dict]:
    """Per step: the questions the update must use, sampling rounds, dropped groups and the
    first round's zero-variance share — worked out from the question order alone."""
    stream, out = PromptStream(pool, cfg.seed), []
    P = cfg.prompts_per_step
    for _ in range(cfg.steps):
        kept, rounds, dropped, first = [], 0, 0, None
        while rounds == 0 or (len(kept) < P and rounds < cfg.max_sampling_rounds):
            questions = [ex.question for ex in stream.take(P)]
            first = first or questions
            informative = [q for q in questions if question_class(q) == "mixed"]
            kept += informative
            dropped += P - len(informative)
            rounds += 1
        if not kept:            # nothing informative: the first batch, all of it flat
            kept, dropped = first, dropped - P
        out.append({"questions": kept[:P], "sampling_rounds": rounds, "dropped_groups": dropped,
                    "zero_variance_share": sum(question_class(q) != "mixed" for q in first) / P})
    return out


def test_dynamic_sampling_drops_zero_variance_groups_and_refills_the_batch(tmp_path, rule, monkeypatch):
    cfg = config(tmp_path, steps=2, prompts_per_step=3, dynamic_sampling=True, max_sampling_rounds=2, seed=4)
    algorithm, trainer = setup(cfg)
    expected = expected_batches(algorithm.stream.pool, cfg)
    # this seed exercises both outcomes: a step that drops groups and refills the batch to
    # prompts_per_step, and one that runs out of rounds with fewer informative groups
    assert any(e["dropped_groups"] > 0 and e["sampling_rounds"] == 2 and len(e["questions"]) == 3 for e in expected)
    assert any(0 < len(e["questions"]) < 3 for e in expected)

    used_rewards, used_questions = [], []
    advantages = grpo_mod.group_advantages

    def spy(rewards, G, mode):
        used_rewards.append(rewards.clone())
        return advantages(rewards, G, mode)

    monkeypatch.setattr(grpo_mod, "group_advantages", spy)
    step = algorithm.train_step

    def train_step(tr):
        out = step(tr)
        ro = algorithm.last
        groups = [ro.examples[i:i + 4] for i in range(0, len(ro.examples), 4)]
        assert all(all(ex is g[0] for ex in g) for g in groups)
        used_questions.append([g[0].question for g in groups])
        return out

    algorithm.train_step = train_step
    trainer.fit()
    recs = records(cfg)
    assert len(recs) == len(expected) == 2
    for rec, exp, questions, rewards in zip(recs, expected, used_questions, used_rewards):
        assert questions == exp["questions"]
        assert rewards.numel() == 4 * len(questions) == 4 * rec["groups"]
        g = rewards.reshape(-1, 4)
        assert bool((g.amax(1) > g.amin(1)).all())       # every group in the update has reward variance
        assert (rec["sampling_rounds"], rec["dropped_groups"]) == (exp["sampling_rounds"], exp["dropped_groups"])
        assert rec["zero_variance_share"] == pytest.approx(exp["zero_variance_share"], rel=1e-6)


# ---------------------------------------------------------------------- reference model
def test_ref_reset_every_copies_the_policy_into_the_reference(tmp_path, rule):
    cfg = config(tmp_path, steps=5, beta=0.01, ref_reset_every=2, rewards={ALTERNATING: 1.0})
    algorithm, trainer = setup(cfg)
    initial = snapshot(trainer.model)
    seen = []       # (completed steps before the call, policy before it, reference after it)
    step = algorithm.train_step

    def train_step(tr):
        s, before = tr.step, snapshot(tr.model)
        out = step(tr)
        seen.append((s, before, snapshot(algorithm.ref)))
        return out

    algorithm.train_step = train_step
    trainer.fit()
    refs = {s: ref for s, _, ref in seen}
    # after s completed steps the reference is the policy of that moment when s is a positive
    # multiple of 2 (a reset), else unchanged (at first: the initial policy)
    kept = [same(ref, before if s and s % 2 == 0 else refs[s - 1] if s else initial) for s, before, ref in seen]
    assert kept == [True] * 5, "expected: unchanged, unchanged, reset, unchanged, reset"
    assert [same(refs[2], refs[4]), same(refs[2], initial)] == [False, False]   # resets took different policies
    # KL to the reference is exactly 0 in the step right after a reset (one mini-batch: the
    # reference and the policy are the same weights when the loss is computed), > 0 otherwise
    kl = [r["kl"] for r in records(cfg)]
    assert kl[0] == kl[2] == kl[4] == 0.0 and kl[1] > 0 and kl[3] > 0, kl


@pytest.mark.parametrize("beta", [0.0, 0.01])
def test_reference_model_is_built_only_when_beta_is_positive(tmp_path, beta, monkeypatch):
    model, tokenizer = load_start(config(tmp_path, rewards={"correct": 1.0}).model, 3)
    cls = type(model)

    def live_models() -> int:
        gc.collect()
        return sum(type(o) is cls for o in gc.get_objects())

    base = live_models()
    cfg = config(tmp_path, beta=beta, rewards={"correct": 1.0})
    algorithm = build_algorithm(cfg, model, tokenizer)
    assert live_models() - base == (1 if beta else 0)
    assert (algorithm.ref is None) == (beta == 0)
    refs = []
    loss = grpo_mod.grpo_loss

    def spy(*a, **kw):
        refs.append(kw["ref_logprobs"])
        return loss(*a, **kw)

    monkeypatch.setattr(grpo_mod, "grpo_loss", spy)
    Trainer(cfg, model, tokenizer, algorithm).fit()
    assert live_models() - base == (1 if beta else 0)
    assert refs and all((r is None) == (beta == 0) for r in refs)    # no reference forward at β = 0
    (rec,) = records(cfg)
    assert ("kl" in rec) == (beta > 0)
    state = torch.load(latest_checkpoint(cfg.out_dir) / TRAINER_STATE_FILE, weights_only=False)
    assert ("ref" in state["algorithm"]) == (beta > 0)


# ---------------------------------------------------------------------- inner epochs
def test_inner_epochs_reuse_the_rollout_logprobs_as_the_old_policy(tmp_path, rule, monkeypatch):
    cfg = config(tmp_path, steps=2, inner_epochs=3, mini_batches=2, micro_batch_size=8, rewards={ALTERNATING: 1.0})
    algorithm, trainer = setup(cfg)
    calls, optimizer_steps = [], []
    loss, opt_step = grpo_mod.grpo_loss, Trainer.optimizer_step

    def spy(lp, old, adv, mask, **kw):
        out = loss(lp, old, adv, mask, **kw)
        calls.append((old.detach().clone(), mask.detach().clone(), out[1]))
        return out

    def counted(self):
        optimizer_steps.append(self.step)
        return opt_step(self)

    monkeypatch.setattr(grpo_mod, "grpo_loss", spy)
    monkeypatch.setattr(Trainer, "optimizer_step", counted)
    trainer.fit()
    recs = records(cfg)
    # 2 mini-batches × 3 inner epochs = 6 optimizer steps per train step
    assert optimizer_steps == [0] * 6 + [1] * 6
    assert [r["optimizer_steps"] for r in recs] == [6, 12]
    assert len(calls) == 12                        # one micro-batch per mini-batch
    for step_calls in (calls[:6], calls[6:]):
        first = step_calls[0][2]
        # the rollout's own policy scores the first mini-batch: ratio 1
        assert abs(first["ratio_mean"] - 1) < 1e-5 and first["approx_kl_old"] < 1e-8
        for epoch in (1, 2):
            for mb in (0, 1):
                old, mask, st = step_calls[2 * epoch + mb]
                old0, mask0, _ = step_calls[mb]
                # π_old stays the rollout's log-probs, so the moved policy's ratio leaves 1
                assert torch.equal(old, old0) and torch.equal(mask, mask0)
                assert st["approx_kl_old"] > 1e-6 and st["ratio_mean"] != 1.0, (epoch, mb, st)
    assert all(r["approx_kl_old"] > 1e-7 for r in recs)
