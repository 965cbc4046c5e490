"""`make demo` at the foundation stage: accounting for the presets, then about a minute
of pre-training of the tiny MoE model on synthetic addition, with a before/after table,
JSONL metrics, a loss plot and a checkpoint. (Later stages replace this with R1-Zero.)

Text is encoded with the shipped tokenizer of the `tiny` preset (every digit is one
token). The objective is the full V3 one: next-token CE + λ·MTP CE +
α·sequence balance loss, with the auxiliary-loss-free bias update after every step.
"""

from __future__ import annotations

import json
import math
import os
import random
import time
from pathlib import Path

import torch

MTP_LAMBDA = 0.3          # SPEC §2: λ = 0.3 early in training
BIAS_GAMMA = 0.01         # SPEC §2 uses γ = 0.001 over thousands of steps; a 1-minute run needs faster balancing
EVAL_PROBLEMS = 64
BATCH, SEQ_LEN, PEAK_LR = 8, 128, 5e-3   # small batches: more updates in a one-minute budget


_TOKENIZER = None


def tokenizer():
    global _TOKENIZER
    if _TOKENIZER is None:
        from .tokenizer import load_tokenizer

        _TOKENIZER = load_tokenizer(None)
    return _TOKENIZER


def encode(text: str) -> list[int]:
    return tokenizer().encode(text)


def decode(ids: list[int]) -> str:
    return tokenizer().decode(ids)


def problem(rng: random.Random, digits: int | None = None) -> tuple[str, str]:
    """`a+b=` and its answer; a and b have 1 or 2 digits (random when digits is None)."""
    digits = digits or rng.choice((1, 2))
    lo = 0 if digits == 1 else 10
    a, b = rng.randrange(lo, 10 ** digits), rng.randrange(lo, 10 ** digits)
    return f"{a}+{b}=", str(a + b)


def batch(rng: random.Random, batch_size: int, seq_len: int) -> torch.Tensor:
    """Rows of BOS + problems separated by newlines, packed to seq_len + 1 tokens."""
    rows = []
    for _ in range(batch_size):
        ids = [tokenizer().bos_token_id]
        while len(ids) < seq_len + 1:
            q, a = problem(rng)
            ids += encode(q + a + "\n")
        rows.append(ids[: seq_len + 1])
    return torch.tensor(rows)


@torch.no_grad()
def greedy_answers(model, prompts: list[str], max_new: int = 4) -> list[str]:
    """Greedy completions up to a newline; prompts of equal length run as one batch."""
    answers = {}
    by_len: dict[int, list[str]] = {}
    for p in prompts:
        by_len.setdefault(len(encode(p)), []).append(p)
    newline = encode("\n")[0]
    for group in by_len.values():
        ids = torch.tensor([[tokenizer().bos_token_id] + encode(p) for p in group])
        for _ in range(max_new):
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
        for p, row in zip(group, ids[:, -max_new:].tolist()):
            out = []
            for t in row:
                if t in (tokenizer().eos_token_id, newline):
                    break
                out.append(t)
            answers[p] = decode(out)
    return [answers[p] for p in prompts]


def evaluate(model, problems) -> tuple[float, list[tuple[str, str, str]]]:
    model.eval()
    got = greedy_answers(model, [q for q, _ in problems])
    model.train()
    rows = [(q, a, g) for (q, a), g in zip(problems, got)]
    return sum(a == g for _, a, g in rows) / len(rows), rows


@torch.no_grad()
def eval_loss(model, data: torch.Tensor) -> float:
    model.eval()
    out = model(data[:, :-1], targets=data[:, 1:])
    model.train()
    return out.loss.item()


def load_imbalance(model) -> float:
    load = model.expert_load()
    if load is None or load.sum() == 0:
        return 1.0
    return float((load.max(dim=1).values / load.mean(dim=1).clamp_min(1e-9)).mean())


def _print_info() -> None:
    from .accounting import _h, report
    from .config import preset

    print("== r1lab info (presets) ==")
    print(f"{'preset':<14}{'total':>12}{'active':>12}{'KV bytes/token (MLA vs MHA)':>32}")
    for name in ("tiny", "small", "deepseek-v3"):
        rep = report(preset(name))
        p, kv = rep["parameters"], rep["kv_cache"]
        print(f"{name:<14}{_h(p['total']):>12}{_h(p['active']):>12}"
              f"{_h(kv['bytes_per_token'], unit='B'):>18} vs {_h(kv['mha_equivalent_bytes'], unit='B'):<10}")
    print()


def run_demo(seconds: float = 60.0, out_dir: Path = Path("runs/demo"), seed: int = 0) -> int:
    from tqdm import tqdm

    from .checkpoint import save_model
    from .config import preset
    from .model import build_model

    torch.set_num_threads(max(1, os.cpu_count() or 1))
    _print_info()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg = preset("tiny")
    model = build_model(cfg, seed=seed)
    model.train()
    n_params = sum(p.numel() for p in model.parameters())
    print(f"== pre-training the tiny MoE ({n_params / 1e6:.2f}M parameters, {cfg.n_routed_experts} experts, "
          f"top-{cfg.num_experts_per_tok}, MTP depth {cfg.num_nextn_predict_layers}) for {seconds:.0f}s ==")

    rng = random.Random(seed)
    eval_rng = random.Random(seed + 12345)
    easy = [problem(eval_rng, 1) for _ in range(EVAL_PROBLEMS // 2)]
    hard = [problem(eval_rng, 2) for _ in range(EVAL_PROBLEMS // 2)]
    held_out = batch(random.Random(seed + 999), 16, 128)
    easy0, _ = evaluate(model, easy)
    hard0, _ = evaluate(model, hard)
    loss0 = eval_loss(model, held_out)

    opt = torch.optim.AdamW(model.parameters(), lr=PEAK_LR, betas=(0.9, 0.95), weight_decay=0.01)
    warmup, metrics = 20, []
    metrics_path = out_dir / "metrics.jsonl"
    tmp_metrics = metrics_path.with_suffix(".jsonl.tmp")
    start = time.time()
    step = 0
    bar = tqdm(total=int(seconds), unit="s", desc="pretrain", bar_format="{l_bar}{bar}| {n:.0f}/{total}s {postfix}")
    with open(tmp_metrics, "w") as f:
        while time.time() - start < seconds:
            frac = min(1.0, (time.time() - start) / seconds)
            lr = PEAK_LR * min(1.0, (step + 1) / warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))
            for g in opt.param_groups:
                g["lr"] = lr
            data = batch(rng, BATCH, SEQ_LEN)
            out = model(data[:, :-1], targets=data[:, 1:])
            loss = out.loss + MTP_LAMBDA * out.mtp_loss + cfg.aux_loss_alpha * out.balance_loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            gnorm = float(torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0))
            opt.step()
            imbalance = load_imbalance(model)
            model.update_expert_bias(BIAS_GAMMA)
            rec = {"step": step, "time": round(time.time() - start, 3), "loss": out.loss.item(),
                   "mtp_loss": out.mtp_loss.item(), "balance_loss": out.balance_loss.item(),
                   "lr": lr, "grad_norm": gnorm, "expert_max_over_mean": imbalance}
            f.write(json.dumps(rec) + "\n")
            metrics.append(rec)
            step += 1
            bar.n = min(int(time.time() - start), int(seconds))
            bar.set_postfix_str(f"step {step} loss {rec['loss']:.3f} mtp {rec['mtp_loss']:.3f}")
            bar.refresh()
    bar.close()
    os.replace(tmp_metrics, metrics_path)

    easy1, rows1 = evaluate(model, easy)
    hard1, rows2 = evaluate(model, hard)
    loss1 = eval_loss(model, held_out)
    elapsed = time.time() - start
    tokens = step * BATCH * SEQ_LEN
    print()
    print(f"{'':<30}{'before':>10}{'after':>10}")
    print(f"{'held-out loss (nats/token)':<30}{loss0:>10.3f}{loss1:>10.3f}")
    print(f"{'1-digit addition, greedy':<30}{easy0:>10.1%}{easy1:>10.1%}")
    print(f"{'2-digit addition, greedy':<30}{hard0:>10.1%}{hard1:>10.1%}")
    print(f"{'MTP loss (first/last step)':<30}{metrics[0]['mtp_loss']:>10.3f}{metrics[-1]['mtp_loss']:>10.3f}")
    print(f"{'expert load max/mean':<30}{metrics[0]['expert_max_over_mean']:>10.2f}{metrics[-1]['expert_max_over_mean']:>10.2f}")
    print(f"\n{step} steps, {tokens / elapsed:,.0f} tokens/s. Samples after training:")
    for q, a, g in rows1[:3] + rows2[:3]:
        print(f"  {q}{g:<6} ({'ok' if g == a else 'want ' + a})")
    save_model(model, out_dir / "checkpoint", tokenizer=tokenizer())
    _plot(metrics, out_dir / "loss.png")
    print(f"\nwrote {metrics_path}, {out_dir / 'loss.png'}, {out_dir / 'checkpoint'}/")
    return 0


def _plot(metrics, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = [m["step"] for m in metrics]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(steps, [m["loss"] for m in metrics], label="next-token")
    ax[0].plot(steps, [m["mtp_loss"] for m in metrics], label="MTP (t+2)")
    ax[0].set_xlabel("step")
    ax[0].set_ylabel("cross entropy")
    ax[0].set_yscale("log")
    ax[0].legend()
    ax[1].plot(steps, [m["expert_max_over_mean"] for m in metrics])
    ax[1].set_xlabel("step")
    ax[1].set_ylabel("expert load max/mean")
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)
