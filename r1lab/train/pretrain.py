"""Pre-training (``r1lab pretrain RECIPE.yaml``): the DeepSeek-V3 objective on packed documents.

Loss per micro-batch (SPEC §2)::

    L = CE(next token) + λ · CE_mtp(token t+2) + α · Σ_layers Σ_i f_i P_i

with λ = ``mtp_lambda`` (0.3 early in V3's training), α = ``balance_alpha`` (default: the
model config's ``aux_loss_alpha``, 0.0001) and, after every optimizer step, the
auxiliary-loss-free bias update ``b_i += γ·sign(mean_load − load_i)`` with γ =
``bias_gamma`` (done by ``Trainer.optimizer_step``). Data: the synthetic arithmetic corpus
with a minority of worked solutions (SPEC §4b) or text/JSONL files (``data.py``).

Logged per step: loss, mtp_loss, balance_loss, lr, grad_norm, tokens/s, expert load
max/mean (before the bias update); every ``eval.every`` steps the same losses on a fixed
held-out batch (``heldout_loss``, ``heldout_mtp_loss``).
"""

from __future__ import annotations

from typing import Any

import torch

from ..model_meta import task_meta
from .config import PretrainConfig, TrainError
from .data import (PAD, FileDocuments, PackedDocuments, PaddedDocuments, SyntheticDocuments, in_heldout_bucket,
                   pack_fixed, pad_fixed, read_text_documents, split_rows)
from .loop import Trainer, check_seq_len, load_start

SAMPLE_KV_CACHE_BYTES = 16 * 2**20   # KV cache of the small engine that writes samples.jsonl


def lm_objective(out, mtp_lambda: float, balance_alpha: float, token_weight: float = 1.0,
                 sequence_weight: float = 1.0, mtp_weight: float | None = None) -> torch.Tensor:
    """``token_weight·CE + mtp_weight·λ·MTP + sequence_weight·α·balance`` for one micro-batch (SPEC §2).

    The weights turn per-micro-batch means into the optimizer step's mean: ``1/grad_accum``
    for all three when every micro-batch has as many target tokens (pre-training); SFT
    passes ``n_targets_micro / n_targets_step`` (and the same count for MTP's targets); the
    balance loss is a mean over sequences, so it keeps ``1/grad_accum``. A zero weight drops
    its term (a micro-batch without targets has a NaN mean CE).
    """
    mtp_weight = token_weight if mtp_weight is None else mtp_weight
    terms = []
    if token_weight:
        terms.append(token_weight * out.loss)
    if out.mtp_loss is not None and mtp_lambda and mtp_weight:
        terms.append(mtp_weight * mtp_lambda * out.mtp_loss)
    if out.balance_loss is not None and balance_alpha:
        terms.append(sequence_weight * balance_alpha * out.balance_loss)
    if not terms:   # nothing to learn from this micro-batch; keep a graph so backward() works
        return out.logits.sum() * 0.0
    return sum(terms[1:], terms[0])


def balance_alpha_of(cfg_alpha: float | None, model) -> float:
    return float(model.config.aux_loss_alpha if cfg_alpha is None else cfg_alpha)


@torch.no_grad()
def heldout_losses(trainer: Trainer, ids: torch.Tensor, batch_size: int,
                   labels: torch.Tensor | None = None) -> dict[str, float]:
    """Token-weighted CE (and MTP CE) of the model on fixed rows, in eval mode."""
    ce_sum = mtp_sum = 0.0
    n_tok = n_mtp = 0
    for i in range(0, ids.shape[0], batch_size):
        inputs, y = split_rows(ids[i:i + batch_size])
        if labels is not None:
            y = labels[i:i + batch_size, 1:]
        inputs, y = trainer.to_device(inputs), trainer.to_device(y)
        with trainer.autocast():
            out = trainer.model(inputs, targets=y)
        n = int((y != -100).sum())
        if n:
            ce_sum += float(out.loss) * n
            n_tok += n
        if out.mtp_loss is not None:
            m = int((y[:, 1:] != -100).sum())
            if m:
                mtp_sum += float(out.mtp_loss) * m
                n_mtp += m
    res = {}
    if n_tok:
        res["heldout_loss"] = ce_sum / n_tok
    if n_mtp:
        res["heldout_mtp_loss"] = mtp_sum / n_mtp
    return res


def generate_samples(trainer: Trainer, prompts: list[list[int]], max_tokens: int) -> list[str]:
    """Greedy completions of token-id prompts with a small engine over the live model."""
    from ..engine import Engine, EngineConfig, SamplingParams

    engine = Engine(trainer.model, trainer.tokenizer, EngineConfig(kv_cache_bytes=SAMPLE_KV_CACHE_BYTES))
    ctx = trainer.model.config.max_position_embeddings
    params = [SamplingParams(temperature=0.0, max_tokens=max(1, min(max_tokens, ctx - len(p) - 1))) for p in prompts]
    return [r.outputs[0].text for r in engine.generate(prompts, params)]


class PretrainAlgorithm:
    """Next-token + MTP + balance loss on packed rows (the ``Algorithm`` of loop.py)."""

    name = "pretrain"
    headline = ("loss", "mtp_loss", "lr")
    meta: dict | None = None      # r1lab.json of its checkpoints (set by build_algorithm)

    def __init__(self, cfg: PretrainConfig, stream: PackedDocuments, heldout: torch.Tensor | None,
                 sample_prompts: list[tuple[str, str | None]], balance_alpha: float):
        self.cfg, self.stream, self.heldout = cfg, stream, heldout
        self.sample_prompts = sample_prompts
        self.balance_alpha = balance_alpha

    def train_step(self, trainer: Trainer) -> dict[str, float]:
        cfg = self.cfg
        accum = cfg.optim.grad_accum
        sums = torch.zeros(3)
        n_tokens = 0
        for _ in range(accum):
            rows = self.stream.next_rows(cfg.batch_size)
            n_tokens += int((rows[:, 1:] != PAD).sum())   # tokens read (prompts too), padding not
            inputs, targets = (trainer.to_device(t) for t in split_rows(rows))
            with trainer.autocast():
                out = trainer.model(inputs, targets=targets)
            loss = lm_objective(out, cfg.mtp_lambda, self.balance_alpha, 1.0 / accum, 1.0 / accum)
            trainer.backward(loss, scale=1.0)
            parts = [out.loss, out.mtp_loss, out.balance_loss]
            sums += torch.tensor([0.0 if p is None else float(p.detach()) for p in parts]) / accum
        metrics: dict[str, Any] = {"loss": float(sums[0])}
        if out.mtp_loss is not None:
            metrics["mtp_loss"] = float(sums[1])
        if out.balance_loss is not None:
            metrics["balance_loss"] = float(sums[2])
        metrics.update(trainer.optimizer_step())
        metrics["tokens"] = n_tokens
        return metrics

    def evaluate(self, trainer: Trainer) -> dict[str, float]:
        if self.heldout is None:
            return {}
        return heldout_losses(trainer, self.heldout, self.cfg.batch_size)

    def samples(self, trainer: Trainer) -> list[dict]:
        tok = trainer.tokenizer
        prompts = []
        for text, _ in self.sample_prompts:
            ids = tok.encode(text)
            prompts.append(ids if ids and ids[0] == tok.bos_token_id else [tok.bos_token_id] + ids)
        texts = generate_samples(trainer, prompts, trainer.cfg.log.sample_tokens)
        return [{"prompt": p, "completion": c, **({"gold": g} if g is not None else {})}
                for (p, g), c in zip(self.sample_prompts, texts)]

    def state_dict(self) -> dict[str, Any]:
        return {"data": self.stream.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stream.load_state_dict(state["data"])


def build_algorithm(cfg: PretrainConfig, model, tokenizer) -> PretrainAlgorithm:
    """Data streams, held-out batch and sample prompts; every data problem is raised here,
    before any training."""
    d = cfg.data
    check_seq_len(model.config, cfg.seq_len)
    n_samples = cfg.log.samples if cfg.log.sample_every else 0
    if d.source != "files":
        docs = SyntheticDocuments(d.options, d.worked_fraction, d.style, cfg.seed, source=d.source,
                                  parts=d.loss_on == "completion",
                                  total_docs=cfg.steps * cfg.batch_size * cfg.optim.grad_accum)
        heldout_docs = docs.heldout()
        prompts: list[tuple[str, str | None]] = docs.sample_prompts(n_samples) if n_samples else []
    else:
        texts = read_text_documents(d.paths, d.text_field)
        if d.heldout_paths:
            held = read_text_documents(d.heldout_paths, d.text_field)
        else:
            is_held = [bool(d.heldout_fraction) and in_heldout_bucket(t, d.heldout_fraction) for t in texts]
            held = [t for t, h in zip(texts, is_held) if h]
            texts = [t for t, h in zip(texts, is_held) if not h]
        docs = FileDocuments(texts, cfg.seed, d.shuffle)
        heldout_docs = held
        # a document's first tokens as the prompt of a sample
        source = held or texts
        prompts = [(tokenizer.decode(tokenizer.encode(t)[:16]), None) for t in source[:n_samples]]
    heldout = None
    if cfg.eval.every and cfg.eval.heldout_rows:
        fixed = pack_fixed if d.pack else pad_fixed
        heldout = fixed(heldout_docs, tokenizer, cfg.seq_len, cfg.eval.heldout_rows)
        if heldout is None:
            print("r1lab: note: too few held-out documents for one row; no held-out loss", flush=True)
    stream = (PackedDocuments if d.pack else PaddedDocuments)(docs, tokenizer, cfg.seq_len)
    try:
        docs[0]           # the first documents are produced now: data errors surface before training
    except IndexError:
        raise TrainError("the training data is empty") from None
    algorithm = PretrainAlgorithm(cfg, stream, heldout, prompts, balance_alpha_of(cfg.balance_alpha, model))
    if d.source != "files":   # synthetic documents are prompts in d.style with their completions
        algorithm.meta = {"prompt_style": d.style, "task": task_meta(d.source, d.options)}
    return algorithm


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Pre-train per ``cfg``: returns the trainer's summary (``out_dir``, ``step``, ``final``, …)."""
    model, tokenizer = load_start(cfg.model, cfg.seed)
    algorithm = build_algorithm(cfg, model, tokenizer)
    return Trainer(cfg, model, tokenizer, algorithm).fit()


__all__ = ["PretrainAlgorithm", "build_algorithm", "heldout_losses", "lm_objective", "pretrain"]
