"""Training-step throughput: r1lab's DeepSeek-V3 vs transformers' DeepseekV3ForCausalLM.

Three columns: "ours" is the plain model (r1lab/model/deepseek.py as written), "ours
(optimized)" the same weights after ``r1lab.model.fast.optimize_for_training`` (grouped-mm
experts, fused input projections, torch.compile of the whole model; the compile happens
in its first warm-up step, whose time is printed), "transformers" the reference.

Both models get the same config (``r1lab.config.preset("bench")`` by default) and the
same weights: ours is built with ``build_model(cfg, seed=0)``, written with
``r1lab.checkpoint.save_model`` and loaded back by ``transformers.AutoModelForCausalLM``.
One step = forward + next-token cross entropy (computed here, from ``.logits``, the same
way for both) + backward + ``torch.optim.AdamW(lr=1e-4)`` step, fp32, on the CPU.
transformers runs with ``attn_implementation="sdpa"`` and the fastest of its experts
implementations (eager / grouped_mm / batched_mm) that reproduces our logits, picked by
a short fwd+bwd trial and printed.

Before timing, the logits of the two models on the benchmark batch must agree within
1e-4. Steps of the two models are interleaved (ours, theirs, ours, …) so that drift in
the machine's speed hits both equally; the median step time is reported, and the
median process CPU time per step (with --threads 1 nearly blind to other processes
on the machine; with more threads it includes OpenMP spin-waiting).

The machine's fp32 matmul peak is measured in the same run (best of several large
square matmuls) and turned into model FLOPs utilisation:
    MFU = tokens/s × 6 × active parameters / peak FLOP/s,
active = every parameter except the embedding table (lm_head included) with the
routed experts counted at top_k / n_routed_experts. 6N leaves out the attention
score/value matmuls (2 × 2 × T × H × (d_qk + d_v) / 2 per token per layer, causal);
their share is printed separately.

    python benchmarks/train_step.py                      # 5 timed steps, 16 × 256 tokens
    python benchmarks/train_step.py --steps 10 --json out.json
    python benchmarks/train_step.py --profile            # + torch.profiler top ops of ours
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import r1lab  # noqa: E402
from r1lab.checkpoint import save_model  # noqa: E402
from r1lab.config import preset  # noqa: E402
from r1lab.model.fast import optimize_for_training  # noqa: E402

LOGIT_TOL = 1e-4
EXPERT_IMPLS = ("grouped_mm", "batched_mm", "eager")


# ---------------------------------------------------------------------- helpers
def log(msg: str = "") -> None:
    print(msg, flush=True)


def loss_fn(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Plain next-token CE; ``targets`` are already shifted (targets[:, t] = ids[t+1])."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))


def ours_logits(model, ids):
    return model(ids).logits


def hf_logits(model, ids):
    return model(input_ids=ids, use_cache=False).logits


def make_optimizer(model, mode: str):
    params = [p for p in model.parameters() if p.requires_grad]
    modes = ["fused", "foreach", "for-loop"] if mode == "auto" else [mode]
    last = None
    for m in modes:
        kw = {"fused": {"fused": True}, "foreach": {"foreach": True}, "for-loop": {"foreach": False}}[m]
        try:
            opt = torch.optim.AdamW(params, lr=1e-4, **kw)
            # A fused/foreach AdamW may only fail at its first step: probe it on a copy.
            probe = [torch.nn.Parameter(torch.zeros(4)) for _ in range(2)]
            for p in probe:
                p.grad = torch.ones(4)
            torch.optim.AdamW(probe, lr=1e-4, **kw).step()
            return opt, m
        except (RuntimeError, ValueError) as e:  # not supported here: try the next one
            last = e
    raise RuntimeError(f"no AdamW implementation works here: {last}")


def train_step(model, logits_fn, opt, ids, targets) -> float:
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(logits_fn(model, ids), targets)
    loss.backward()
    opt.step()
    return loss.item()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def matmul_peak(n: int = 2048, reps: int = 8) -> float:
    """Best fp32 GFLOP/s of an n×n @ n×n matmul (the machine's practical peak)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    out = torch.empty(n, n)
    for _ in range(2):
        torch.mm(a, b, out=out)
    best = min(timed(lambda: torch.mm(a, b, out=out)) for _ in range(reps))
    return 2 * n**3 / best / 1e9


def param_counts(model, cfg) -> dict:
    """Total / active parameters from the model itself (ours; same tensors as HF's)."""
    total = embed = routed = 0
    for name, p in model.named_parameters():
        n = p.numel()
        total += n
        if name == "model.embed_tokens.weight":
            embed += n
        elif ".mlp.experts." in name:
            routed += n
    if cfg.tie_word_embeddings:  # lm_head shares the table: it is compute, count it once
        embed = 0
    frac = (cfg.num_experts_per_tok / cfg.n_routed_experts) if cfg.n_routed_experts else 0.0
    active = total - embed - routed + routed * frac
    return {"total": total, "embedding": embed, "routed_experts": routed, "active_no_embed": int(round(active))}


def attention_flops_per_token(cfg, seq: int) -> float:
    """Causal QK^T and PV matmuls, fwd+bwd (×3), per token, all layers (not in 6N)."""
    per_layer_fwd = 2 * cfg.num_attention_heads * (cfg.qk_head_dim + cfg.v_head_dim) * seq / 2
    return 3 * per_layer_fwd * cfg.num_hidden_layers


def machine_info() -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem = f"{int(line.split()[1]) / 1024**2:.1f} GiB"
    commit = None
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent,
                                capture_output=True, text=True, timeout=10).stdout.strip() or None
    import transformers

    return {
        "cpu": cpu, "logical_cpus": os.cpu_count(), "memory": mem, "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
        "r1lab": r1lab.__version__, "r1lab_commit": commit,
    }


def load_avg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def mem_available() -> int | None:
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable"):
                return int(line.split()[1]) * 1024
    return None


# ---------------------------------------------------------------- transformers side
def load_hf(ckpt: Path):
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    return AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="sdpa")


def choose_experts_impl(hf, ours, cfg, ids, targets, requested: str, trial_seqs: int) -> tuple[str, dict]:
    """Try transformers' experts implementations; keep the fastest that gives our logits.

    Trials run fwd+bwd on the first ``trial_seqs`` sequences of the batch (an
    implementation several times slower than the best so far on its warm-up call is
    not timed further). Returns (name, {impl: seconds per fwd+bwd, or why not})."""
    if not hf._can_set_experts_implementation():
        return "n/a (model has no switchable experts)", {}
    candidates = ("eager", "grouped_mm", "batched_mm") if requested == "auto" else (requested,)
    ids, targets = ids[:trial_seqs], targets[:trial_seqs]
    with torch.no_grad():
        ref = ours_logits(ours, ids)
    trials: dict[str, float | str] = {}
    n_tokens = ids.numel()
    for impl in candidates:
        if impl == "batched_mm":
            # batched_mm gathers one (2I×D + D×I) weight copy per (token, expert) pair and
            # keeps it for backward: estimate that and skip it when it cannot fit.
            pairs = n_tokens * cfg.num_experts_per_tok
            moe_layers = sum(cfg.is_moe_layer(i) for i in range(cfg.num_hidden_layers))
            need = 2 * moe_layers * pairs * 3 * cfg.moe_intermediate_size * cfg.hidden_size * 4
            avail = mem_available()
            if requested == "auto" and avail is not None and need > 0.4 * avail:
                trials[impl] = f"skipped: needs ~{need / 1024**3:.1f} GiB of gathered expert weights ({avail / 1024**3:.1f} GiB free)"
                continue
        try:
            hf.set_experts_implementation(impl)
            with torch.no_grad():
                diff = (hf_logits(hf, ids) - ref).abs().max().item()
            if not diff <= LOGIT_TOL:
                trials[impl] = f"rejected: max |logit diff| {diff:.2e} > {LOGIT_TOL:g}"
                continue

            def fwd_bwd():
                hf.zero_grad(set_to_none=True)
                loss_fn(hf_logits(hf, ids), targets).backward()

            fwd_bwd()  # first call: allocator / kernel warm-up
            first = timed(fwd_bwd)
            best_so_far = min((v for v in trials.values() if isinstance(v, float)), default=None)
            if best_so_far is not None and first > 4 * best_so_far:
                trials[impl] = f"too slow: fwd+bwd {first * 1e3:.0f} ms (> 4x the best), not timed further"
                continue
            trials[impl] = min(first, timed(fwd_bwd), timed(fwd_bwd))
        except Exception as e:  # noqa: BLE001 - an implementation that fails here is just not used
            trials[impl] = f"failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
    hf.zero_grad(set_to_none=True)
    timed_ok = {k: v for k, v in trials.items() if isinstance(v, float)}
    if not timed_ok:
        raise SystemExit(f"no transformers experts implementation works: {trials}")
    best = min(timed_ok, key=timed_ok.get)
    hf.set_experts_implementation(best)
    return best, trials


# ------------------------------------------------------------------------ profile
def profile_steps(name, model, logits_fn, opt, ids, targets, steps: int = 2, rows: int = 25) -> str:
    from torch.profiler import ProfilerActivity, profile

    train_step(model, logits_fn, opt, ids, targets)  # warm
    with profile(activities=[ProfilerActivity.CPU], record_shapes=False) as prof:
        for _ in range(steps):
            train_step(model, logits_fn, opt, ids, targets)
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=48)
    return f"\n=== torch.profiler: {name}, {steps} training steps, top {rows} ops by self CPU time ===\n{table}"


# --------------------------------------------------------------------------- main
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=5, help="timed steps per model (default 5)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps per model first (default 2)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--preset", default="bench", help="r1lab config preset (default: bench)")
    ap.add_argument("--experts-impl", default="auto", choices=("auto",) + EXPERT_IMPLS,
                    help="transformers experts implementation (default: fastest that works)")
    ap.add_argument("--trial-seqs", type=int, default=4,
                    help="sequences used to pick the experts implementation (default 4)")
    ap.add_argument("--optim", default="auto", choices=("auto", "fused", "foreach", "for-loop"),
                    help="AdamW implementation for both models (default: first of fused/foreach/for-loop that works)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    ap.add_argument("--optimized", default="compile", choices=("compile", "eager", "off"),
                    help="the 'ours (optimized)' column: optimize_for_training with torch.compile (default), "
                         "without it, or no such column")
    ap.add_argument("--profile", action="store_true", help="after timing, torch.profiler 2 steps of OUR model")
    ap.add_argument("--profile-optimized", action="store_true", help="same for the optimized model")
    ap.add_argument("--profile-hf", action="store_true", help="same for the transformers model")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.batch < 1 or args.seq < 2:
        ap.error("--steps, --batch must be >= 1 and --seq >= 2")
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    info = machine_info()
    load_start = load_avg()
    cfg = preset(args.preset)
    if not cfg.is_moe_model:
        ap.error(f"--preset {args.preset!r} is not a DeepSeek-V3 model")
    if args.seq > cfg.max_position_embeddings:
        ap.error(f"--seq {args.seq} > max_position_embeddings {cfg.max_position_embeddings}")
    log(f"machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, {info['memory']}, torch threads {info['torch_threads']}")
    log(f"load average at start: {load_start}")
    log(f"versions: python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, "
        f"r1lab {info['r1lab']} ({info['r1lab_commit']})")

    # --- models with identical weights
    ours = r1lab.build_model(cfg, seed=0)
    with tempfile.TemporaryDirectory(prefix="r1lab-bench-") as tmp:
        ckpt = save_model(ours, Path(tmp) / "ckpt")
        hf = load_hf(ckpt)
    ours.train()
    hf.train()
    counts = param_counts(ours, cfg)
    hf_total = sum(p.numel() for p in hf.parameters())
    if hf_total != counts["total"]:
        raise SystemExit(f"parameter counts differ: ours {counts['total']}, transformers {hf_total}")

    # --- the batch: B sequences of T+1 random tokens -> inputs / next-token targets
    g = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, cfg.vocab_size, (args.batch, args.seq + 1), generator=g)
    ids, targets = tokens[:, :-1].contiguous(), tokens[:, 1:].contiguous()
    n_tok = ids.numel()

    # --- transformers' experts implementation + the logit check
    trial_seqs = min(args.batch, args.trial_seqs)
    if args.experts_impl == "auto":
        log(f"choosing transformers' experts implementation (fwd+bwd on {trial_seqs} × {args.seq} tokens):")
    impl, trials = choose_experts_impl(hf, ours, cfg, ids, targets, args.experts_impl, trial_seqs)
    for k, v in trials.items():
        log(f"  experts_implementation={k:<10} " + (f"fwd+bwd {v * 1e3:8.1f} ms" if isinstance(v, float) else v))
    log(f"transformers: attn_implementation={hf.config._attn_implementation}, experts_implementation={impl}")
    with torch.no_grad():
        lo, lh = ours_logits(ours, ids), hf_logits(hf, ids)
    max_diff = (lo - lh).abs().max().item()
    log(f"logit check on the benchmark batch: max |ours - transformers| = {max_diff:.2e} (tolerance {LOGIT_TOL:g})")
    assert max_diff <= LOGIT_TOL, f"logits differ by {max_diff:.3e} > {LOGIT_TOL}"
    loss_o, loss_h = loss_fn(lo, targets).item(), loss_fn(lh, targets).item()
    assert abs(loss_o - loss_h) < 1e-4, (loss_o, loss_h)
    del lo, lh

    # --- ours (optimized): a second copy of the same weights, sped up in place
    fast = compile_s = None
    if args.optimized != "off":
        fast = optimize_for_training(r1lab.build_model(cfg, seed=0), compile=args.optimized == "compile").train()
        c0 = time.perf_counter()
        lf = ours_logits(fast, ids).detach()  # with grad enabled: compiles the graph the training steps use
        compile_s = time.perf_counter() - c0
        fast.zero_grad(set_to_none=True)
        with torch.no_grad():
            max_diff_fast = (lf - hf_logits(hf, ids)).abs().max().item()
        log(f"ours (optimized, {args.optimized}): first forward {compile_s:.1f} s"
            + (" (includes torch.compile)" if args.optimized == "compile" else "")
            + f"; max |logit diff| vs transformers {max_diff_fast:.2e}")
        assert max_diff_fast <= LOGIT_TOL, f"optimized logits differ by {max_diff_fast:.3e} > {LOGIT_TOL}"
        del lf

    opt_o, optim_mode = make_optimizer(ours, args.optim)
    opt_h, _ = make_optimizer(hf, optim_mode)
    opt_f = make_optimizer(fast, optim_mode)[0] if fast is not None else None
    log(f"optimizer: torch.optim.AdamW(lr=1e-4, {optim_mode}) for all")

    # --- machine peak
    peak = matmul_peak()
    log(f"fp32 matmul peak (2048^3, best of 8): {peak:.1f} GFLOP/s")

    # --- timing: warm up, then interleave the two models step by step
    runs = {"ours": (ours, ours_logits, opt_o)}
    if fast is not None:
        runs["ours_optimized"] = (fast, ours_logits, opt_f)
    runs["transformers"] = (hf, hf_logits, opt_h)
    for _ in range(args.warmup):
        for model, fn, opt in runs.values():
            train_step(model, fn, opt, ids, targets)
    times: dict[str, list[float]] = {k: [] for k in runs}
    cpu_times: dict[str, list[float]] = {k: [] for k in runs}
    losses: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(args.steps):
        for k, (model, fn, opt) in runs.items():
            c0, t0 = time.process_time(), time.perf_counter()
            losses[k].append(train_step(model, fn, opt, ids, targets))
            times[k].append(time.perf_counter() - t0)
            cpu_times[k].append(time.process_time() - c0)

    # --- figures
    flops_tok = 6 * counts["active_no_embed"]
    attn_tok = attention_flops_per_token(cfg, args.seq)
    res = {}
    for k in runs:
        med = statistics.median(times[k])
        tok_s = n_tok / med
        res[k] = {"median_step_s": med, "min_step_s": min(times[k]), "max_step_s": max(times[k]),
                  "step_times_s": times[k], "cpu_times_s": cpu_times[k],
                  "median_cpu_s": statistics.median(cpu_times[k]), "tokens_per_s": tok_s,
                  "mfu": tok_s * flops_tok / (peak * 1e9), "losses": losses[k]}
    hf_res = res["transformers"]
    ratios = {k: res[k]["tokens_per_s"] / hf_res["tokens_per_s"] for k in runs if k != "transformers"}
    ratio = ratios["ours"]
    ratio_opt = ratios.get("ours_optimized")

    log()
    log(f"config: preset {args.preset!r}, {counts['total'] / 1e6:.2f}M parameters "
        f"(embedding {counts['embedding'] / 1e6:.3f}M, routed experts {counts['routed_experts'] / 1e6:.3f}M)")
    log(f"active parameters per token, excluding the embedding table, lm_head included, routed experts × "
        f"{cfg.num_experts_per_tok}/{cfg.n_routed_experts}: {counts['active_no_embed']:,} ({counts['active_no_embed'] / 1e6:.3f}M)")
    log(f"FLOPs per token used for MFU: 6 × {counts['active_no_embed']:,} = {flops_tok / 1e6:.2f} MFLOP "
        f"(attention scores/values not included: +{attn_tok / 1e6:.2f} MFLOP/token at T={args.seq}, "
        f"{100 * attn_tok / flops_tok:.0f}% more)")
    log(f"batch {args.batch} × {args.seq} = {n_tok} tokens/step, fp32, {args.warmup} warm-up + {args.steps} timed steps each, interleaved")
    if compile_s is not None:
        log(f"ours (optimized): optimize_for_training(compile={args.optimized == 'compile'}), "
            f"first forward (compile) {compile_s:.1f} s")
    log()
    # columns: each model, then each of ours vs transformers (time ratio theirs/ours = speed-up)
    w = 15
    names = {"ours": "ours", "ours_optimized": "ours (opt.)", "transformers": "transformers"}
    speedup = {"ours": "speed-up ours", "ours_optimized": "speed-up opt."}
    head = "".join(f"{names[k]:>{w}}" for k in runs) + "".join(f"{speedup[k]:>{w}}" for k in ratios)
    log(f"{'':<22}{head}")

    def row(label, key, fmt, scale=1.0, speedup=False):
        cells = "".join(f"{res[k][key] * scale:>{w}{fmt}}" for k in runs)
        for k in ratios:  # >1 means ours is better
            r = hf_res[key] / res[k][key] if speedup else res[k][key] / hf_res[key]
            cells += f"{r:>{w}.3f}"
        log(f"{label:<22}{cells}")

    row("median step (ms)", "median_step_s", ".1f", 1e3, speedup=True)
    log(f"{'min / max step (ms)':<22}"
        + "".join(f"{res[k]['min_step_s'] * 1e3:>{w - 7}.0f} /{res[k]['max_step_s'] * 1e3:>5.0f}" for k in runs))
    row("median CPU s/step", "median_cpu_s", ".2f", speedup=True)
    row("tokens/s", "tokens_per_s", ".0f")
    row("MFU (% of peak)", "mfu", ".2f", 100)
    log(f"{'final loss':<22}" + "".join(f"{losses[k][-1]:>{w}.4f}" for k in runs))
    log("(speed-up columns: vs transformers, >1 = ours faster; for times it is transformers' / ours)")
    log(f"load average at end: {load_avg()} (1/5/15 min; timings are only clean when it stays below the thread count)")
    spread = max(res[k]["max_step_s"] / res[k]["min_step_s"] for k in runs)
    if spread > 1.3:
        log(f"WARNING: step times vary {spread:.1f}x (max/min): the machine is busy; compare the ratio, not "
            f"absolute figures, rerun with more --steps, or use --threads 1 (CPU s/step then ignores other load)")
    log(f"(peak {peak:.1f} GFLOP/s fp32; transformers: sdpa + experts_implementation={impl}; AdamW {optim_mode})")
    log()
    result = (f"RESULT ours_tok_s={res['ours']['tokens_per_s']:.1f} hf_tok_s={hf_res['tokens_per_s']:.1f} "
              f"ratio={ratio:.3f} ours_mfu={res['ours']['mfu']:.4f} hf_mfu={hf_res['mfu']:.4f} peak_gflops={peak:.1f}")
    if ratio_opt is not None:
        result += (f" opt_tok_s={res['ours_optimized']['tokens_per_s']:.1f} ratio_opt={ratio_opt:.3f}"
                   f" opt_mfu={res['ours_optimized']['mfu']:.4f} opt_compile_s={compile_s:.1f}")
    log(result)

    if args.json:
        payload = {
            "benchmark": "train_step", "machine": info, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "config": cfg.to_dict(), "params": counts, "flops_per_token": flops_tok,
            "attention_flops_per_token": attn_tok, "peak_gflops": peak, "optimizer": f"AdamW(lr=1e-4, {optim_mode})",
            "transformers_attn_implementation": hf.config._attn_implementation,
            "transformers_experts_implementation": impl,
            "experts_impl_trials_s": trials, "logit_max_abs_diff": max_diff,
            "load_average_start": load_start, "load_average_end": load_avg(),
            "tokens_per_step": n_tok, "ours": res["ours"], "transformers": res["transformers"], "ratio": ratio,
            "ours_optimized": res.get("ours_optimized"), "ratio_optimized": ratio_opt,
            "optimized_mode": args.optimized, "optimized_first_forward_s": compile_s,
        }
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
        log(f"wrote {args.json}")

    if args.profile:
        log(profile_steps("ours", ours, ours_logits, opt_o, ids, targets))
    if args.profile_optimized and fast is not None:
        log(profile_steps(f"ours (optimized, {args.optimized})", fast, ours_logits, opt_f, ids, targets))
    if args.profile_hf:
        log(profile_steps(f"transformers ({impl})", hf, hf_logits, opt_h, ids, targets))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
