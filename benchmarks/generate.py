"""Generation throughput: our engine vs transformers' ``generate`` on the identical tiny V3.

Same config (preset ``bench``) and weights (saved by us, loaded by transformers), random
token-id prompts, sampled at temperature 1, exactly ``--new`` tokens per sequence (EOS is
disabled on both sides), CPU fp32. Also measures the engine's KV-cache bytes per token
against (kv_lora_rank + qk_rope_head_dim) × layers × dtype bytes, and runs 64 requests with
n = 8 against a small cache budget.

    python benchmarks/generate.py [--new 128] [--batches 1 16 64] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import tempfile
import time

import torch

import r1lab
from r1lab import build_model, preset, save_model
from r1lab.engine import Engine, EngineConfig, SamplingParams

PROMPT_LEN = 16


class NoEOSTokenizer:
    """The engine only needs decode (for stop strings / streams) and eos_token_id."""

    eos_token_id = None

    def decode(self, ids, skip_special_tokens=False):
        return ""


def ours(model, prompts, new, kv_bytes):
    eng = Engine(model, NoEOSTokenizer(), EngineConfig(kv_cache_bytes=kv_bytes, max_num_seqs=256))
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
    ap.add_argument("--json", help="write the figures here")
    args = ap.parse_args()

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
    print(f"preset 'bench', prompts {PROMPT_LEN} tokens, {args.new} sampled tokens each, fp32 CPU\n")

    g = torch.Generator().manual_seed(0)
    rows, figures = [], {"new_tokens": args.new, "commit": commit, "torch": torch.__version__}
    kv_bytes = 64 * 2**20
    for b in args.batches:
        prompts = torch.randint(2, cfg.vocab_size, (b, PROMPT_LEN), generator=g).tolist()
        ours(model, prompts[:1], 8, kv_bytes)  # warm-up
        tok_ours, eng = ours(model, prompts, args.new, kv_bytes)
        tok_hf = theirs(hf, prompts, args.new) if b <= args.skip_hf_above else None
        ratio = tok_ours / tok_hf if tok_hf else None
        rows.append((b, tok_ours, tok_hf, ratio))
        figures[f"batch_{b}"] = {"ours_tok_s": tok_ours, "hf_tok_s": tok_hf, "ratio": ratio}
    print(f"{'batch':>6}{'ours tok/s':>14}{'transformers':>15}{'ratio':>9}")
    for b, o, h, r in rows:
        print(f"{b:>6}{o:>14.0f}{(f'{h:.0f}' if h else '-'):>15}{(f'{r:.2f}x' if r else '-'):>9}")

    expected = (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * cfg.num_hidden_layers * 4
    print(f"\nKV cache bytes per token (fp32): measured {eng.cache.bytes_per_token}, "
          f"(kv_lora_rank + qk_rope_head_dim) x layers x 4 = {expected}")
    figures["kv_bytes_per_token"] = {"measured": eng.cache.bytes_per_token, "formula": expected}

    # 64 requests x n=8 against a budget that holds only a fraction of them at once
    budget = 2 * 2**20
    eng = Engine(model, NoEOSTokenizer(), EngineConfig(kv_cache_bytes=budget, max_num_seqs=256))
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
