"""Supervised fine-tuning (``r1lab sft RECIPE.yaml``): cold-start / distillation data (SPEC §5, §6).

Chat JSONL (``{"messages": [...]}`` or ``{"prompt", "completion"}``) is rendered with
DeepSeek-R1's template (SPEC §8) — the last assistant turn exactly as the engine will
prompt for it, ``<｜Assistant｜><think>\\n`` then the reasoning, ``</think>``, the answer and
EOS — and packed whole into rows (``data.PackedConversations``). The loss is the
pre-training objective (``pretrain.lm_objective``: CE + λ·MTP + α·balance, SPEC §2) on
assistant tokens only; labels are -100 on prompts, padding and so across conversation
boundaries. With gradient accumulation each micro-batch is weighted by its share of the
step's target tokens, so the step's loss is the mean over all its assistant tokens
whatever the split into micro-batches.
"""

from __future__ import annotations

from typing import Any

import torch

from ..model.common import IGNORE_INDEX
from .config import SFTConfig
from .data import (Conversation, PackedConversations, load_conversations, pack_conversations_fixed,
                   split_heldout)
from .loop import Trainer, check_seq_len, load_start
from .pretrain import balance_alpha_of, generate_samples, heldout_losses, lm_objective


class SFTAlgorithm:
    """Assistant-token-only LM loss on packed conversations (the ``Algorithm`` of loop.py)."""

    name = "sft"
    headline = ("loss", "lr", "grad_norm")
    meta: dict | None = None      # r1lab.json of its checkpoints (set by build_algorithm)

    def __init__(self, cfg: SFTConfig, stream: PackedConversations,
                 heldout: tuple[torch.Tensor, torch.Tensor] | None, sample_convs: list[Conversation],
                 balance_alpha: float):
        self.cfg, self.stream, self.heldout = cfg, stream, heldout
        self.sample_convs = sample_convs
        self.balance_alpha = balance_alpha

    def train_step(self, trainer: Trainer) -> dict[str, float]:
        cfg = self.cfg
        accum = cfg.optim.grad_accum
        batches = [self.stream.next_rows(cfg.batch_size) for _ in range(accum)]
        # target counts of the whole step: CE targets are labels[:, 1:], MTP's labels[:, 2:]
        n_step = sum(int((lab[:, 1:] != IGNORE_INDEX).sum()) for _, lab in batches)
        m_step = sum(int((lab[:, 2:] != IGNORE_INDEX).sum()) for _, lab in batches)
        ce = mtp = bal = 0.0
        has_mtp = has_bal = False
        for ids, lab in batches:
            n = int((lab[:, 1:] != IGNORE_INDEX).sum())
            m = int((lab[:, 2:] != IGNORE_INDEX).sum())
            x, y = trainer.to_device(ids[:, :-1]), trainer.to_device(lab[:, 1:])
            with trainer.autocast():
                out = trainer.model(x, targets=y)
            w, wm = (n / n_step if n_step else 0.0), (m / m_step if m_step else 0.0)
            loss = lm_objective(out, cfg.mtp_lambda, self.balance_alpha, token_weight=w,
                                sequence_weight=1.0 / accum, mtp_weight=wm)
            trainer.backward(loss, scale=1.0)
            if n:
                ce += w * float(out.loss.detach())
            if out.mtp_loss is not None and m:
                has_mtp = True
                mtp += wm * float(out.mtp_loss.detach())
            if out.balance_loss is not None:
                has_bal = True
                bal += float(out.balance_loss.detach()) / accum
        metrics: dict[str, Any] = {"loss": ce}
        if has_mtp:
            metrics["mtp_loss"] = mtp
        if has_bal:
            metrics["balance_loss"] = bal
        metrics.update(trainer.optimizer_step())
        metrics["tokens"] = accum * cfg.batch_size * cfg.seq_len
        metrics["target_tokens"] = n_step
        return metrics

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        if self.heldout is None:
            return {}
        ids, labels = self.heldout
        return heldout_losses(trainer, ids, self.cfg.batch_size, labels=labels)

    def samples(self, trainer: Trainer) -> list[dict]:
        """Greedy replies to held-out prompts (the messages before the last assistant turn)."""
        tok = trainer.tokenizer
        prompts, refs = [], []
        for c in self.sample_convs:
            last = max(i for i, m in enumerate(c.messages) if m["role"] == "assistant" and m["content"])
            prompts.append(tok.apply_chat_template(c.messages[:last], add_generation_prompt=True))
            refs.append(c.messages[last]["content"])
        texts = generate_samples(trainer, prompts, trainer.cfg.log.sample_tokens)
        return [{"where": c.where, "prompt": tok.decode(p), "completion": t, "reference": r}
                for c, p, t, r in zip(self.sample_convs, prompts, texts, refs)]

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["data"])


def build_algorithm(cfg: SFTConfig, model, tokenizer) -> SFTAlgorithm:
    """Load, render, tokenize and split the conversations (errors before any training)."""
    d = cfg.data
    check_seq_len(model.config, cfg.seq_len)
    convs = load_conversations(d.paths, tokenizer, d.loss_on)
    if d.heldout_paths:
        train, held = convs, load_conversations(d.heldout_paths, tokenizer, d.loss_on)
    else:
        train, held = split_heldout(convs, d.heldout_fraction)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    stream = PackedConversations(train, cfg.seq_len, pad, cfg.seed, d.shuffle)
    if stream.truncated:
        print(f"r1lab: note: {stream.truncated} of {len(train)} conversations are longer than seq_len + 1 = "
              f"{cfg.seq_len + 1} tokens and are truncated", flush=True)
    heldout = None
    if cfg.eval.every and cfg.eval.heldout_rows and held:
        heldout = pack_conversations_fixed(held, cfg.seq_len, pad, cfg.eval.heldout_rows)
    n_samples = cfg.log.samples if cfg.log.sample_every else 0
    sample_convs = (held or train)[:n_samples]
    algorithm = SFTAlgorithm(cfg, stream, heldout, sample_convs, balance_alpha_of(cfg.balance_alpha, model))
    algorithm.meta = {"prompt_style": "chat"}     # conversations through the chat template (SPEC §8)
    return algorithm


def sft(cfg: SFTConfig) -> dict[str, Any]:
    """Fine-tune per ``cfg``: returns the trainer's summary (``out_dir``, ``step``, ``final``, …)."""
    model, tokenizer = load_start(cfg.model, cfg.seed)
    algorithm = build_algorithm(cfg, model, tokenizer)
    return Trainer(cfg, model, tokenizer, algorithm).fit()


__all__ = ["SFTAlgorithm", "build_algorithm", "sft"]
