"""MTP speculative decoding: speed-up and acceptance rate on a tiny model trained with MTP.

The model: preset ``tiny`` (4.78M parameters, one MTP depth) pre-trained for
``--train-seconds`` with the full V3 objective (next-token + MTP + balance loss, the
demo's synthetic addition corpus), or any checkpoint given with ``--model``. Prompts are
BOS + a few addition problems; every sequence generates exactly ``--new`` tokens (EOS
ignored) with and without ``spec_mtp``, greedy and sampled (T = 1), batch 1 and 16, in
one process. Greedy outputs must be identical.

    python benchmarks/spec_mtp.py [--train-seconds 180] [--model DIR] [--new 128]
"""

from __future__ import annotations

import argparse
import random
import time
from pathlib import Path

import torch

from r1lab import build_model, load_model, preset, save_model
from r1lab.demo import MTP_LAMBDA, batch, encode, problem, tokenizer
from r1lab.engine import Engine, EngineConfig, SamplingParams

CACHE = Path(__file__).resolve().parent / ".cache" / "spec_tiny"


def train(seconds: float, seed: int = 0):
    torch.manual_seed(seed)
    cfg = preset("tiny")
    model = build_model(cfg, seed=seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, betas=(0.9, 0.95), weight_decay=0.01)
    rng, step, start = random.Random(seed), 0, time.time()
    while time.time() - start < seconds:
        data = batch(rng, 8, 128)
        out = model(data[:, :-1], targets=data[:, 1:])
        loss = out.loss + MTP_LAMBDA * out.mtp_loss + cfg.aux_loss_alpha * out.balance_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        model.update_expert_bias(0.01)
        step += 1
        if step % 50 == 0:
            print(f"  step {step} loss {out.loss.item():.3f} mtp {out.mtp_loss.item():.3f}", flush=True)
    return model.eval()


class NoEOS:
    eos_token_id = None

    def decode(self, ids, skip_special_tokens=False):
        return ""


def run(model, prompts, params, spec):
    eng = Engine(model, NoEOS(), EngineConfig(kv_cache_bytes=64 << 20, spec_mtp=spec))
    eng.generate(prompts[:1], SamplingParams(max_tokens=8))   # warm-up
    eng.spec_drafted = eng.spec_accepted = 0
    t = time.perf_counter()
    outs = eng.generate(prompts, params)
    dt = time.perf_counter() - t
    n = sum(len(c.token_ids) for o in outs for c in o.outputs)
    return n / dt, eng.acceptance_rate, [c.token_ids for o in outs for c in o.outputs]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="a checkpoint with an MTP module (default: train one, cached)")
    ap.add_argument("--train-seconds", type=float, default=180)
    ap.add_argument("--new", type=int, default=128)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16])
    args = ap.parse_args()
    if args.model:
        model = load_model(args.model).eval()
    elif (CACHE / "config.json").exists():
        print(f"using the cached trained model in {CACHE}")
        model = load_model(CACHE).eval()
    else:
        print(f"training preset 'tiny' with MTP for {args.train_seconds:.0f}s …")
        model = train(args.train_seconds)
        save_model(model, CACHE, tokenizer=tokenizer())
    rng = random.Random(1)
    print(f"\n{'batch':>5} {'mode':>8} {'plain tok/s':>12} {'spec tok/s':>11} {'speed-up':>9} {'accept':>7} same")
    for b in args.batches:
        prompts = []
        for _ in range(b):
            text = "".join(q + a + "\n" for q, a in (problem(rng) for _ in range(3))) + problem(rng)[0]
            prompts.append([tokenizer().bos_token_id] + encode(text))
        for mode, temp in (("greedy", 0.0), ("T=1", 1.0)):
            params = SamplingParams(temperature=temp, max_tokens=args.new, seed=0)
            plain, _, ref = run(model, prompts, params, False)
            spec, acc, got = run(model, prompts, params, True)
            same = "yes" if got == ref else ("-" if temp else "NO")
            print(f"{b:>5} {mode:>8} {plain:>12.0f} {spec:>11.0f} {spec / plain:>8.2f}x {acc:>7.1%} {same}")


if __name__ == "__main__":
    main()
