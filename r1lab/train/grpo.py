"""GRPO (``r1lab grpo RECIPE.yaml``): reinforcement learning with rule rewards (SPEC §3, §4).

One train step:

1. **Rollout.** ``prompts_per_step`` questions from the task's training split (a seeded
   permutation per epoch: the data position is part of the checkpoint), each sampled
   ``group_size`` times by our engine, which runs the *live policy* in-process: no weight
   copy, no sync step. The engine returns each sampled token's log-probability under the
   sampling distribution (softmax(logits / T), exact: see the engine issue), which is
   π_old of the ratio.
2. **Rewards.** A weighted sum of registered rules (``rewards:`` in the recipe; ``correct``
   is the task's own checker, ``format`` the R1-Zero tags, ``overlong`` the soft length
   penalty …). The reward has no length bonus.
3. **Advantages** per group (``advantage``: ``group_std`` as R1, ``group_mean`` as Dr. GRPO,
   ``batch_std``). With ``dynamic_sampling`` (DAPO) groups whose rewards are all equal are
   dropped and more questions are sampled, up to ``max_sampling_rounds`` (metrics
   ``sampling_rounds`` and ``dropped_groups``); surplus informative groups of the last round
   are left unused.
4. **Policy update.** The rollout is split into ``mini_batches`` (one optimizer step each),
   for ``inner_epochs`` passes; micro-batches of ``micro_batch_size`` sequences accumulate
   gradients. Loss: the clipped surrogate with ε_low/ε_high, minus β·k3-KL to a reference
   model (β = 0 skips the reference entirely), aggregated per ``loss_agg``
   (``seq_mean`` as R1, ``token_mean`` as DAPO, ``constant`` as Dr. GRPO) — grpo_loss.py.
   Only completion tokens carry gradient. The reference is reset to the policy every
   ``ref_reset_every`` steps (R1: 400).
"""

from __future__ import annotations

import copy
import random
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from ..engine.sampler import sequence_seed
from ..files import jsonable
from .config import BaseTrainConfig, _choice, _is_int, _is_num, _positive_int, check
from .grpo_loss import (ADVANTAGE_MODES, LOSS_AGGREGATIONS, group_advantages, grpo_loss, loss_normaliser,
                        masked_entropy, token_logprobs, zero_variance_groups)
from .loop import Trainer, load_start, start_meta


@dataclass
class GRPOData:
    """The prompts: a registered task (or a JSONL path) and its options; ``split`` is the
    training split (held-out evaluation uses ``eval.task``); ``limit`` caps the pool."""

    task: str = "arithmetic"
    options: dict[str, Any] = field(default_factory=dict)
    split: str = "train"
    prompt_style: str | None = None
    limit: int | None = None

    def __post_init__(self) -> None:
        check(isinstance(self.task, str) and bool(self.task), "task", f"must be a task name or path, got {self.task!r}")
        check(isinstance(self.options, dict), "options", f"must be a mapping, got {self.options!r}")
        check(self.prompt_style in (None, "chat", "r1_zero", "plain"), "prompt_style",
              f"must be chat, r1_zero or plain, got {self.prompt_style!r}")
        if self.limit is not None:
            _positive_int(self.limit, "limit")


@dataclass
class GRPOConfig(BaseTrainConfig):
    """``r1lab grpo`` (SPEC §3). Defaults are DeepSeek-R1's where it published them."""

    data: GRPOData = field(default_factory=GRPOData)
    rewards: Any = field(default_factory=lambda: {"correct": 1.0})
    group_size: int = 16
    prompts_per_step: int = 32
    temperature: float = 1.0
    max_new_tokens: int = 1024
    beta: float = 0.001
    eps_low: float = 0.2
    eps_high: float | None = None
    advantage: str = "group_std"
    loss_agg: str = "seq_mean"
    dynamic_sampling: bool = False
    max_sampling_rounds: int = 3
    mini_batches: int = 1
    inner_epochs: int = 1
    micro_batch_size: int = 32
    ref_reset_every: int = 0
    kv_cache_mb: float = 256.0
    spec_mtp: bool = False
    out_dir: str = "runs/grpo"

    def __post_init__(self) -> None:
        super().__post_init__()
        from ..rewards import RewardError, parse_reward_specs
        try:
            parse_reward_specs(self.rewards)
        except RewardError as e:
            check(False, "rewards", str(e))
        for name in ("group_size", "prompts_per_step", "max_new_tokens", "max_sampling_rounds", "mini_batches",
                     "inner_epochs", "micro_batch_size"):
            _positive_int(getattr(self, name), name)
        check(self.group_size >= 2, "group_size", f"must be >= 2 (advantages compare samples), got {self.group_size}")
        check(_is_num(self.temperature) and self.temperature > 0, "temperature",
              f"must be > 0 (GRPO samples), got {self.temperature!r}")
        check(_is_num(self.beta) and self.beta >= 0, "beta", f"must be >= 0, got {self.beta!r}")
        check(_is_num(self.eps_low) and self.eps_low > 0, "eps_low", f"must be > 0, got {self.eps_low!r}")
        check(self.eps_high is None or (_is_num(self.eps_high) and self.eps_high > 0), "eps_high",
              f"must be > 0 or null (= eps_low), got {self.eps_high!r}")
        _choice(self.advantage, "advantage", ADVANTAGE_MODES)
        _choice(self.loss_agg, "loss_agg", LOSS_AGGREGATIONS)
        check(isinstance(self.dynamic_sampling, bool), "dynamic_sampling", "must be true or false")
        check(isinstance(self.spec_mtp, bool), "spec_mtp", "must be true or false")
        check(_is_int(self.ref_reset_every) and self.ref_reset_every >= 0, "ref_reset_every",
              f"must be an integer >= 0 (0 = never), got {self.ref_reset_every!r}")
        check(_is_num(self.kv_cache_mb) and self.kv_cache_mb > 0, "kv_cache_mb", f"must be > 0, got {self.kv_cache_mb!r}")
        n = self.group_size * self.prompts_per_step
        check(self.mini_batches <= n, "mini_batches", f"must be <= group_size × prompts_per_step ({n})")


@dataclass
class Rollout:
    """One step's samples, flattened group by group (row i belongs to question i // G)."""

    examples: list          # per row
    prompt_ids: list[list[int]]
    completion_ids: list[list[int]]
    old_logprobs: list[list[float]]
    texts: list[str]
    finish_reasons: list[str]
    rewards: torch.Tensor                     # (N,)
    per_reward: dict[str, list[float]]
    correct: list[float]


class PromptStream:
    """Questions in a seeded order, epoch after epoch; the position is checkpointed."""

    def __init__(self, pool: list, seed: int):
        self.pool, self.seed = pool, seed
        self.epoch, self.index = 0, 0
        self._order = self._permutation()

    def _permutation(self) -> list[int]:
        order = list(range(len(self.pool)))
        random.Random(sequence_seed(self.seed, self.epoch)).shuffle(order)
        return order

    def take(self, n: int) -> list:
        out = []
        while len(out) < n:
            if self.index == len(self.pool):
                self.epoch, self.index = self.epoch + 1, 0
                self._order = self._permutation()
            out.append(self.pool[self._order[self.index]])
            self.index += 1
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "index": self.index}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.index = state["epoch"], state["index"]
        self._order = self._permutation()


class GRPOAlgorithm:
    """The ``Algorithm`` of loop.py for GRPO (module docstring)."""

    name = "grpo"
    headline = ("reward", "accuracy", "response_len", "kl")

    def __init__(self, cfg: GRPOConfig, model, tokenizer, task, pool: list, model_style: str | None = None):
        from ..model_meta import task_meta
        from ..rewards import CombinedReward

        self.cfg, self.task, self.tokenizer = cfg, task, tokenizer
        # the recipe's style, else the task's own option, else the one the start model was trained with
        self.style = cfg.data.prompt_style or getattr(task, "style", None) or model_style or task.default_style
        self.meta = {"prompt_style": self.style, "task": task_meta(cfg.data.task, cfg.data.options)}
        self.stream = PromptStream(pool, cfg.seed)
        self.reward = CombinedReward(cfg.rewards)
        self.model = model
        self._engine = None
        self.ref = None
        if cfg.beta > 0:
            self.ref = copy.deepcopy(model).eval().requires_grad_(False)
        self.optimizer_steps_per_step = cfg.mini_batches * cfg.inner_epochs
        self.last: Rollout | None = None

    @property
    def engine(self):
        """The engine over the live policy, made on first use (after the trainer placed the
        model on its device); its KV cache is allocated once, at ``kv_cache_mb``."""
        if self._engine is None:
            from ..engine import Engine, EngineConfig
            cfg = self.cfg
            self._engine = Engine(self.model, self.tokenizer,
                                  EngineConfig(kv_cache_bytes=int(cfg.kv_cache_mb * 2**20),
                                               max_num_seqs=max(256, cfg.group_size), spec_mtp=cfg.spec_mtp))
        return self._engine

    # ------------------------------------------------------------ rollout
    def _sample(self, trainer: Trainer, examples: list, round_: int) -> Rollout:
        from ..engine import SamplingParams

        cfg = self.cfg
        G = cfg.group_size
        ctx = trainer.model.config.max_position_embeddings
        prompts = [self.task.prompt(ex, self.style) for ex in examples]
        base = sequence_seed(cfg.seed, 1_000_003 * (trainer.step + 1) + round_)
        params = [SamplingParams(n=G, temperature=cfg.temperature, max_tokens=min(cfg.max_new_tokens, ctx - 1),
                                 seed=sequence_seed(base, i)) for i in range(len(prompts))]
        outs = self.engine.generate(prompts, params)
        rows = [(ex, o, c) for ex, o in zip(examples, outs) for c in o.outputs]
        texts = [c.text for _, _, c in rows]
        exs = [ex for ex, _, _ in rows]
        lengths = [len(c.token_ids) for _, _, c in rows]
        total, per_reward = self.reward(texts, exs, num_tokens=lengths, task=self.task)
        correct = per_reward.get("correct") or [float(s) for s in self.task.score(texts, exs)]
        return Rollout(exs, [o.prompt_token_ids for _, o, _ in rows], [list(c.token_ids) for _, _, c in rows],
                       [list(c.sampling_logprobs) for _, _, c in rows], texts, [c.finish_reason for _, _, c in rows],
                       torch.tensor(total, dtype=torch.float32), per_reward, [float(x) for x in correct])

    def rollout(self, trainer: Trainer) -> tuple[Rollout, dict[str, float]]:
        """Sample, score and (with dynamic sampling) refill until enough informative groups."""
        cfg = self.cfg
        G = cfg.group_size
        first = self._sample(trainer, self.stream.take(cfg.prompts_per_step), 0)
        flat = zero_variance_groups(first.rewards, G)
        stats = {"zero_variance_share": float(flat.float().mean())}
        if not cfg.dynamic_sampling:
            return first, stats
        kept, rounds, dropped = _keep_groups(first, ~flat, G), 1, int(flat.sum())
        while _groups(kept, G) < cfg.prompts_per_step and rounds < cfg.max_sampling_rounds:
            more = self._sample(trainer, self.stream.take(cfg.prompts_per_step), rounds)
            flat = zero_variance_groups(more.rewards, G)
            kept, dropped = _concat(kept, _keep_groups(more, ~flat, G)), dropped + int(flat.sum())
            rounds += 1
        if _groups(kept, G) > cfg.prompts_per_step:
            kept = _keep_groups(kept, torch.arange(_groups(kept, G)) < cfg.prompts_per_step, G)
        if not kept.texts:
            # every group had equal rewards: nothing to learn; keep the first batch (zero gradient)
            kept, dropped = first, dropped - _groups(first, G)
        # dropped_groups: zero-variance groups sampled this step and left out of the update
        stats["sampling_rounds"], stats["dropped_groups"] = rounds, dropped
        return kept, stats

    # ------------------------------------------------------------ update
    def train_step(self, trainer: Trainer) -> dict[str, float]:
        cfg = self.cfg
        t0 = time.perf_counter()
        ro, stats = self.rollout(trainer)
        t_gen = time.perf_counter() - t0
        self.last = ro
        G, N = cfg.group_size, len(ro.texts)
        adv = group_advantages(ro.rewards, G, cfg.advantage)

        if self.ref is not None and next(self.ref.parameters()).device != trainer.device:
            self.ref.to(trainer.device)
        if self.ref is not None and cfg.ref_reset_every and trainer.step > 0 and trainer.step % cfg.ref_reset_every == 0:
            self.ref.load_state_dict(trainer.model.state_dict())

        # rows sorted into mini-batches by a seeded shuffle (deterministic, resumable)
        order = list(range(N))
        random.Random(sequence_seed(cfg.seed, 7919 * (trainer.step + 1))).shuffle(order)
        mbs = [order[i::cfg.mini_batches] for i in range(cfg.mini_batches)]
        opt_metrics: list[dict] = []
        loss_stats: list[dict] = []
        entropy = None
        t1 = time.perf_counter()
        for _ in range(cfg.inner_epochs):
            for mb in mbs:
                denom = loss_normaliser(cfg.loss_agg, [len(ro.completion_ids[i]) for i in mb], cfg.max_new_tokens)
                for j in range(0, len(mb), cfg.micro_batch_size):
                    rows = mb[j:j + cfg.micro_batch_size]
                    loss, st, ent = self._micro_loss(trainer, ro, adv, rows, denom, want_entropy=entropy is None)
                    if ent is not None:
                        entropy = ent
                    trainer.backward(loss, scale=1.0)
                    st["weight"] = len(rows)
                    loss_stats.append(st)
                opt_metrics.append(trainer.optimizer_step())
        t_train = time.perf_counter() - t1

        lengths = torch.tensor([len(c) for c in ro.completion_ids], dtype=torch.float32)
        n_tokens = int(lengths.sum()) + sum(len(p) for p in ro.prompt_ids)
        m: dict[str, Any] = {
            "reward": float(ro.rewards.mean()), "reward_std": float(ro.rewards.std()) if N > 1 else 0.0,
            "accuracy": sum(ro.correct) / N,
            "response_len": float(lengths.mean()), "response_len_max": float(lengths.max()),
            "truncation_rate": sum(f == "length" for f in ro.finish_reasons) / N,
            "groups": N // G, **stats,
            "gen_seconds": t_gen, "train_seconds": t_train,
            "gen_tokens_per_s": float(lengths.sum()) / max(t_gen, 1e-9),
            "tokens": n_tokens,
        }
        for name, scores in ro.per_reward.items():
            m[f"reward_{name}"] = sum(scores) / N
        if entropy is not None:
            m["entropy"] = entropy
        total_w = sum(s["weight"] for s in loss_stats)
        for key in ("clip_frac", "kl", "ratio_mean", "approx_kl_old", "policy_loss"):
            vals = [(s[key], s["weight"]) for s in loss_stats if key in s]
            if vals:
                m[key] = sum(v * w for v, w in vals) / total_w
        for key in ("grad_norm", "lr", "expert_load_max_over_mean"):
            vals = [o[key] for o in opt_metrics if key in o]
            if vals:
                m[key] = sum(vals) / len(vals)
        return m

    def _micro_loss(self, trainer: Trainer, ro: Rollout, adv: torch.Tensor, rows: list[int], denom: float,
                    want_entropy: bool):
        cfg = self.cfg
        seqs = [ro.prompt_ids[i] + ro.completion_ids[i] for i in rows]
        T = max(len(s) for s in seqs) - 1
        ids = torch.zeros(len(rows), T + 1, dtype=torch.long)
        mask = torch.zeros(len(rows), T)
        old = torch.zeros(len(rows), T)
        for r, i in enumerate(rows):
            s, p, c = seqs[r], len(ro.prompt_ids[i]), len(ro.completion_ids[i])
            ids[r, : len(s)] = torch.tensor(s)
            mask[r, p - 1: p - 1 + c] = 1.0               # position t predicts token t+1
            old[r, p - 1: p - 1 + c] = torch.tensor(ro.old_logprobs[i])
        ids, mask, old = trainer.to_device(ids), trainer.to_device(mask), trainer.to_device(old)
        inputs, targets = ids[:, :-1], ids[:, 1:]
        with trainer.autocast():
            logits = trainer.model(inputs).logits.float() / cfg.temperature
        lp = token_logprobs(logits, targets)
        ref = None
        if self.ref is not None:
            with torch.no_grad(), trainer.autocast():
                ref = token_logprobs(self.ref(inputs).logits.float() / cfg.temperature, targets)
        loss, st = grpo_loss(lp, old, trainer.to_device(adv[rows]), mask, ref_logprobs=ref, beta=cfg.beta,
                             eps_low=cfg.eps_low, eps_high=cfg.eps_high, loss_agg=cfg.loss_agg,
                             max_tokens=cfg.max_new_tokens, denominator=denom)
        ent = masked_entropy(logits.detach(), mask) if want_entropy else None
        return loss, st, ent

    # ------------------------------------------------------------ logging, state
    def samples(self, trainer: Trainer) -> list[dict]:
        ro = self.last
        if ro is None:
            return []
        G, n = self.cfg.group_size, trainer.cfg.log.samples
        out = []
        for i in range(0, min(len(ro.texts), n * G), G):
            out.append({"question": ro.examples[i].question, "gold": jsonable(ro.examples[i].gold),
                        "completion": ro.texts[i], "reward": float(ro.rewards[i]), "correct": ro.correct[i],
                        "tokens": len(ro.completion_ids[i])})
        return out

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"data": self.stream.state_dict()}
        if self.ref is not None:
            state["ref"] = {k: v.detach().cpu() for k, v in self.ref.state_dict().items()}
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["data"])
        if self.ref is not None and "ref" in state:
            self.ref.load_state_dict(state["ref"])


def _groups(ro: Rollout, G: int) -> int:
    return len(ro.texts) // G


def _keep_groups(ro: Rollout, keep: torch.Tensor, G: int) -> Rollout:
    rows = [i for g in range(len(keep)) if keep[g] for i in range(g * G, (g + 1) * G)]
    return Rollout([ro.examples[i] for i in rows], [ro.prompt_ids[i] for i in rows],
                   [ro.completion_ids[i] for i in rows], [ro.old_logprobs[i] for i in rows],
                   [ro.texts[i] for i in rows], [ro.finish_reasons[i] for i in rows],
                   ro.rewards[rows] if rows else ro.rewards[:0],
                   {k: [v[i] for i in rows] for k, v in ro.per_reward.items()}, [ro.correct[i] for i in rows])


def _concat(a: Rollout, b: Rollout) -> Rollout:
    return Rollout(a.examples + b.examples, a.prompt_ids + b.prompt_ids, a.completion_ids + b.completion_ids,
                   a.old_logprobs + b.old_logprobs, a.texts + b.texts, a.finish_reasons + b.finish_reasons,
                   torch.cat([a.rewards, b.rewards]),
                   {k: a.per_reward[k] + b.per_reward[k] for k in a.per_reward}, a.correct + b.correct)


def build_algorithm(cfg: GRPOConfig, model, tokenizer) -> GRPOAlgorithm:
    """Task, prompt pool and engine; data problems are raised here, before any training."""
    from ..tasks import TaskError, get_task
    from .config import TrainError

    try:
        task = get_task(cfg.data.task, **cfg.data.options)
        if cfg.data.split not in task.splits:
            raise TrainError(f"task {task.name!r} has no split {cfg.data.split!r}; splits: {', '.join(task.splits)}")
        pool = task.load(cfg.data.split, cfg.data.limit)
    except TaskError as e:
        raise TrainError(str(e)) from None
    if not pool:
        raise TrainError(f"task {task.name!r} split {cfg.data.split!r} has no examples")
    if cfg.prompts_per_step > len(pool):
        raise TrainError(f"prompts_per_step={cfg.prompts_per_step} exceeds the {len(pool)} training questions")
    return GRPOAlgorithm(cfg, model, tokenizer, task, pool, model_style=start_meta(cfg.model).get("prompt_style"))


def grpo(cfg: GRPOConfig) -> dict[str, Any]:
    """Run GRPO per ``cfg``; returns the trainer's summary."""
    model, tokenizer = load_start(cfg.model, cfg.seed)
    algorithm = build_algorithm(cfg, model, tokenizer)
    return Trainer(cfg, model, tokenizer, algorithm).fit()


__all__ = ["GRPOAlgorithm", "GRPOConfig", "GRPOData", "PromptStream", "Rollout", "build_algorithm", "grpo"]
