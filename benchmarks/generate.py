"""Generation throughput: our engine vs transformers' ``generate`` on the identical tiny V3.

Same config (preset ``bench``) and weights (saved by us, loaded by transformers), random
token-id prompts, sampled at temperature 1, exactly ``--new`` tokens per sequence (EOS is
disabled on both sides: our engine runs without a tokenizer, so it knows no EOS), CPU fp32.

Fair timing: both sides are warmed up on the batch's shape first (transformers' first
``generate`` on a fresh model pays one-time setup), then the timed runs alternate — ours,
theirs, ours, theirs … — so a machine's slow spell hits both, and each side's figure is the
median of ``--runs`` (≥ 3) runs; every run is printed. Also measures the engine's KV-cache
bytes per token against (kv_lora_rank + qk_rope_head_dim) × layers × dtype bytes, and runs
64 requests with n = 8 against a small cache budget.

    python benchmarks/generate.py [--new 128] [--batches 1 16 64] [--runs 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import tempfile
import time

import torch

import r1lab
from r1lab import build_model, preset, save_model
from r1lab.engine import Engine, EngineConfig, SamplingParams

PROMPT_LEN = 16
WARMUP_TOKENS = 8   # each side's warm-up run, on the timed batch's shape
MIN_RUNS = 3


def ours(model, prompts, new, kv_bytes):
    """tok/s of one ``generate`` (the engine is built outside the timing; no tokenizer, so no EOS)."""
    eng = Engine(model, None, EngineConfig(kv_cache_bytes=kv_bytes, max_num_seqs=256))
    params = SamplingParams(temperature=1.0, max_tokens=new, seed=0)
    t = time.perf_counter()
    outs = eng.generate(prompts, params)
    dt = time.perf_counter() - t
    n = sum(len(c.token_ids) for o in outs for c in o.outputs)
    assert n == len(prompts) * new, n
    return n / dt, eng


@torch.inference_mode()
def theirs(hf, prompts, new):
    ids = torch.tensor(prompts)
    t = time.perf_counter()
    out = hf.generate(ids, attention_mask=torch.ones_like(ids), do_sample=True, temperature=1.0, top_p=1.0, top_k=0,
                      max_new_tokens=new, min_new_tokens=new, eos_token_id=None, pad_token_id=0)
    dt = time.perf_counter() - t
    n = (out.shape[1] - ids.shape[1]) * ids.shape[0]
    assert n == len(prompts) * new
    return n / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--new", type=int, default=128, help="new tokens per sequence")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 16, 64])
    ap.add_argument("--skip-hf-above", type=int, default=16, help="skip transformers for larger batches")
    ap.add_argument("--runs", type=int, default=MIN_RUNS, help=f"timed runs per side (>= {MIN_RUNS}); medians reported")
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()
    if args.runs < MIN_RUNS:
        ap.error(f"--runs must be >= {MIN_RUNS} (a median of fewer runs is one noisy sample), got {args.runs}")

    import transformers
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    cfg = preset("bench")
    model = build_model(cfg, seed=0).eval()
    with tempfile.TemporaryDirectory() as d:
        save_model(model, d)
        hf = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32, attn_implementation="sdpa").eval()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}; "
          f"torch {torch.__version__}, r1lab {r1lab.__version__} ({commit})")
    print(f"transformers {transformers.__version__}; preset 'bench', prompts {PROMPT_LEN} tokens, "
          f"{args.new} sampled tokens each, fp32 CPU; both sides warmed up, {args.runs} interleaved runs each\n")

    g = torch.Generator().manual_seed(0)
    rows, figures = [], {"new_tokens": args.new, "runs": args.runs, "commit": commit, "torch": torch.__version__,
                         "transformers": transformers.__version__}
    kv_bytes = 64 * 2**20
    for b in args.batches:
        prompts = torch.randint(2, cfg.vocab_size, (b, PROMPT_LEN), generator=g).tolist()
        with_hf = b <= args.skip_hf_above
        ours(model, prompts, WARMUP_TOKENS, kv_bytes)
        if with_hf:
            theirs(hf, prompts, WARMUP_TOKENS)
        runs_ours, runs_hf = [], []
        for r in range(args.runs):
            tok_s, eng = ours(model, prompts, args.new, kv_bytes)
            runs_ours.append(tok_s)
            if with_hf:
                runs_hf.append(theirs(hf, prompts, args.new))
            print(f"batch {b:>3} run {r + 1}: ours {runs_ours[-1]:7.0f} tok/s"
                  + (f", transformers {runs_hf[-1]:7.0f} tok/s" if with_hf else ""), flush=True)
        med_ours = statistics.median(runs_ours)
        med_hf = statistics.median(runs_hf) if with_hf else None
        ratio = med_ours / med_hf if med_hf else None
        rows.append((b, med_ours, med_hf, ratio))
        figures[f"batch_{b}"] = {"ours_tok_s": med_ours, "hf_tok_s": med_hf, "ratio": ratio,
                                 "ours_runs": runs_ours, "hf_runs": runs_hf or None}
    print(f"\nmedians of {args.runs} runs")
    print(f"{'batch':>6}{'ours tok/s':>14}{'transformers':>15}{'ratio':>9}")
    for b, o, h, r in rows:
        print(f"{b:>6}{o:>14.0f}{(f'{h:.0f}' if h else '-'):>15}{(f'{r:.2f}x' if r else '-'):>9}")

    expected = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * cfg.num_hidden_layers * 4
    print(f"\nKV cache bytes per token (fp32): measured {eng.cache.bytes_per_token}, "
          f"(kv_lora_rank + qk_rope_head_dim) x layers x 4 = {expected}")
    figures["kv_bytes_per_token"] = {"measured": eng.cache.bytes_per_token, "formula": expected}

    # 64 requests x n=8 against a budget that holds only a fraction of them at once
    budget = 2 * 2**20
    eng = Engine(model, None, EngineConfig(kv_cache_bytes=budget, max_num_seqs=256))
    prompts = torch.randint(2, cfg.vocab_size, (64, PROMPT_LEN), generator=g).tolist()
    low = eng.cache.free_blocks()
    t = time.perf_counter()
    rids = [eng.add_request(p, SamplingParams(n=8, temperature=1.0, max_tokens=64, seed=i)) for i, p in enumerate(prompts)]
    while eng.has_unfinished():
        eng.step()
        low = min(low, eng.cache.free_blocks())
    outs = [eng.output(r, release=True) for r in rids]
    done = sum(c.finish_reason == "length" for o in outs for c in o.outputs)
    print(f"64 requests x n=8 x 64 tokens in a {budget / 2**20:.0f} MiB cache ({eng.cache.num_blocks} blocks): "
          f"{done}/512 completed in {time.perf_counter() - t:.1f}s, lowest free blocks {low}, "
          f"free at the end {eng.cache.free_blocks()}/{eng.cache.num_blocks}")
    figures["budget_test"] = {"completed": done, "of": 512, "blocks": eng.cache.num_blocks, "lowest_free": low}
    print("RESULT " + " ".join(f"b{b}_ratio={r:.2f}" for b, _, _, r in rows if r))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=2)


if __name__ == "__main__":
    main()
