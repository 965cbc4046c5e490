"""GRPO step throughput: r1lab's GRPO vs TRL's ``GRPOTrainer`` on the identical tiny V3.

Both sides train the same model (preset ``bench``, 3.83M parameters: ours is built with
``build_model(cfg, seed=0)``, written with ``save_model`` and loaded by transformers'
``AutoModelForCausalLM`` as ``DeepseekV3ForCausalLM``, fp32, ``attn_implementation="sdpa"``,
transformers' default experts implementation) on the same task with the same tokenizer:

* **Tokenizer.** One character-level ``tokenizers`` WordLevel model (digits, ``+``, ``=``,
  space, newline, ``<bos>``/``<eos>``/``<pad>``/``<unk>``), padded with unused special
  tokens to the model's vocabulary of 512 so that every id the policy can sample decodes
  to something. TRL gets it as a ``PreTrainedTokenizerFast`` whose post-processor
  prepends ``<bos>``; our engine gets a thin wrapper over the same object (it prepends
  BOS itself). Completions are decoded with ``skip_special_tokens=True`` on both sides,
  so both rewards see the same text.
* **Task.** Prompts ``"a+b="`` with a, b in 0..99 (one seeded pool for both); reward 1.0
  when the completion's first number equals a + b, else 0.0. Ours: a small ``Task``
  subclass, scored through the registered ``correct`` reward (``rewards: {correct: 1.0}``);
  TRL: the same function as its reward function.
* **Step.** 16 completions per step = 2 prompts × G = 8, temperature 1 (no top-p/top-k),
  every completion exactly ``new`` tokens (TRL: ``max_completion_length=new`` and
  ``generation_kwargs={"min_new_tokens": new}``; ours: the engine's tokenizer has no EOS,
  so every sequence stops at ``max_tokens``), one optimizer step per generation batch
  (TRL: ``per_device_train_batch_size=16``, ``gradient_accumulation_steps=1``,
  ``steps_per_generation=1``, ``num_iterations=1``; ours: ``mini_batches=1``,
  ``inner_epochs=1``, ``micro_batch_size=16``), the R1 loss (TRL ``loss_type="grpo"`` =
  our ``loss_agg: seq_mean``), ε = 0.2, group-std advantages, AdamW lr 1e-6 constant,
  betas (0.9, 0.999), no weight decay, gradient clipping at 1.0, fp32 on the CPU, no
  gradient checkpointing. With β > 0 both keep a frozen reference model and run it on
  every completion.

Settings (all in one run, ours then TRL for each): 64 new tokens β = 0, 256 new tokens
β = 0, 64 new tokens β = 0.001. Each side runs ``--warmup`` untimed steps and then
``--steps`` timed ones; a step's time is wall time from the end of the previous step to
the end of this one (TRL: ``on_step_end`` callback timestamps inside ``trainer.train()``,
so setup is excluded; ours: around ``GRPOAlgorithm.train_step``). Completion tokens per
step = 16 × new tokens (checked: every completion has exactly that many tokens).
Also reported: the generation part of each step (ours: ``gen_seconds`` — rollout incl.
rewards; TRL: time inside its ``_generate_single_turn``, i.e. ``model.generate``).

Needs TRL besides the test extras: ``pip install trl`` (1.16 measured; it leaves torch alone).

    python benchmarks/grpo_step.py                        # 6 timed steps after 2 warm-up
    python benchmarks/grpo_step.py --steps 10 --json out.json
    python benchmarks/grpo_step.py --steps 1 --warmup 1 --settings 64:0   # smoke test
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import r1lab  # noqa: E402
from r1lab.checkpoint import save_model  # noqa: E402
from r1lab.config import preset  # noqa: E402
from r1lab.tasks import Example, Task  # noqa: E402
from r1lab.train.config import ModelSpec, OptimConfig, ScheduleConfig  # noqa: E402
from r1lab.train.grpo import GRPOAlgorithm, GRPOConfig, GRPOData  # noqa: E402
from r1lab.train.loop import Trainer  # noqa: E402

LOGIT_TOL = 1e-4
GROUP = 8                 # G: completions per prompt
PROMPTS_PER_STEP = 2      # → 16 completions per step
LR = 1e-6
EPSILON = 0.2
POOL_SIZE = 4096
TARGET = 4.0              # the target: ours ≥ 4× TRL
DEFAULT_SETTINGS = ("64:0", "256:0", "64:0.001")

BOS, EOS, PAD, UNK = "<bos>", "<eos>", "<pad>", "<unk>"
CHARS = list("0123456789+= \n")
NUMBER = re.compile(r"\d+")


def log(msg: str = "") -> None:
    print(msg, flush=True)


# ---------------------------------------------------------------------- tokenizer
def build_char_tokenizer(vocab_size: int):
    """A ``tokenizers.Tokenizer``: one token per character, specials first, unused specials
    ``<unused_k>`` up to ``vocab_size`` (a random policy samples them: they must decode)."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

    specials = [BOS, EOS, PAD, UNK]
    vocab = {t: i for i, t in enumerate(specials + CHARS)}
    unused = [f"<unused_{i}>" for i in range(len(vocab), vocab_size)]
    for t in unused:
        vocab[t] = len(vocab)
    tok = Tokenizer(models.WordLevel(vocab, unk_token=UNK))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"[\s\S]"), behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials + unused])
    tok.post_processor = processors.TemplateProcessing(single=f"{BOS} $A", pair=f"{BOS} $A $B",
                                                       special_tokens=[(BOS, vocab[BOS])])
    assert tok.get_vocab_size() == vocab_size, tok.get_vocab_size()
    return tok


def hf_tokenizer(tok):
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, unk_token=UNK)


class EngineTokenizer:
    """What our engine and GRPO need: ``encode`` (no specials: the engine prepends BOS),
    ``decode`` (specials skipped, as TRL decodes), ``bos_token_id``, and ``eos_token_id =
    None`` so that no sampled token ends a completion (every one runs to ``max_tokens``)."""

    eos_token_id = None

    def __init__(self, tok):
        self.tok = tok
        self.bos_token_id = tok.token_to_id(BOS)
        self.vocab_size = tok.get_vocab_size()

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self.tok.encode(text, add_special_tokens=add_special_tokens).ids

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return self.tok.decode(list(ids), skip_special_tokens=True)


# ---------------------------------------------------------------------- task
def first_number_reward(completion: str, gold: str) -> float:
    """1.0 when the first number in the completion is the gold sum, else 0.0 (both sides)."""
    m = NUMBER.search(completion)
    return 1.0 if m is not None and m.group(0).lstrip("0") == gold.lstrip("0") else 0.0


class AdditionTask(Task):
    name = "bench_addition"
    kind = "math"
    splits = ("train",)
    default_split = "train"
    default_style = "plain"

    def __init__(self, pool: list[Example]):
        self.pool = pool

    def examples(self, split=None):
        yield from self.pool

    def prompt(self, example: Example, style: str = "plain") -> str:
        return example.question

    def score(self, completions, examples) -> list[float]:
        return [first_number_reward(c, ex.gold) for c, ex in zip(completions, examples)]

    def answer_key(self, completion: str, example: Example):
        m = NUMBER.search(completion)
        return m.group(0) if m else None


def make_pool(n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randrange(100), rng.randrange(100)
        out.append(Example(id=str(i), question=f"{a}+{b}=", gold=str(a + b)))
    return out


# ---------------------------------------------------------------------- ours
def run_ours(cfg_model, tok, pool, new: int, beta: float, warmup: int, steps: int, seed: int) -> dict:
    model = r1lab.build_model(cfg_model, seed=0)  # the same weights as the saved checkpoint
    gcfg = GRPOConfig(
        model=ModelSpec(init="bench", dtype="float32"),
        optim=OptimConfig(lr=LR, betas=[0.9, 0.999], eps=1e-8, weight_decay=0.0, grad_clip=1.0),
        schedule=ScheduleConfig(warmup_steps=0, kind="constant"),
        data=GRPOData(task="bench_addition", prompt_style="plain"),
        rewards={"correct": 1.0},
        group_size=GROUP, prompts_per_step=PROMPTS_PER_STEP, temperature=1.0, max_new_tokens=new,
        beta=beta, eps_low=EPSILON, advantage="group_std", loss_agg="seq_mean",
        mini_batches=1, inner_epochs=1, micro_batch_size=GROUP * PROMPTS_PER_STEP,
        kv_cache_mb=32.0, steps=warmup + steps, device="cpu", seed=seed,
        out_dir=tempfile.mkdtemp(prefix="r1lab-grpo-bench-"),
    )
    shutil.rmtree(gcfg.out_dir, ignore_errors=True)  # nothing is written there: no fit(), no checkpoints
    task = AdditionTask(pool)
    algo = GRPOAlgorithm(gcfg, model, tok, task, pool)
    trainer = Trainer(gcfg, model, tok, algo)
    times, gen, train, all_rewards = [], [], [], []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        m = algo.train_step(trainer)
        trainer.step += 1
        dt = time.perf_counter() - t0
        lengths = {len(c) for c in algo.last.completion_ids}
        if lengths != {new} or len(algo.last.completion_ids) != GROUP * PROMPTS_PER_STEP:
            raise SystemExit(f"ours: step {i} produced completion lengths {sorted(lengths)} "
                             f"× {len(algo.last.completion_ids)}, expected {new} × {GROUP * PROMPTS_PER_STEP}")
        all_rewards.append(m["reward"])
        if i >= warmup:
            times.append(dt)
            gen.append(m["gen_seconds"])
            train.append(m["train_seconds"])
    return summarize(times, new) | {"gen_seconds": statistics.fmean(gen), "train_seconds": statistics.fmean(train),
                                     "reward_mean_all_steps": statistics.fmean(all_rewards)}


# ---------------------------------------------------------------------- TRL
def run_trl(ckpt: Path, hf_tok, pool, new: int, beta: float, warmup: int, steps: int, seed: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, TrainerCallback
    from transformers.trainer_callback import PrinterCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    def addition_reward(completions, answer, **kwargs):
        return [first_number_reward(c, g) for c, g in zip(completions, answer)]

    class StepClock(TrainerCallback):
        def __init__(self):
            self.stamps, self.logs = [], []

        def on_train_begin(self, args, state, control, **kw):
            self.stamps = [time.perf_counter()]

        def on_step_end(self, args, state, control, **kw):
            self.stamps.append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kw):
            self.logs.append(dict(logs or {}))

    ds = Dataset.from_list([{"prompt": ex.question, "answer": ex.gold} for ex in pool])
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="sdpa")
    out_dir = tempfile.mkdtemp(prefix="trl-grpo-bench-")
    args = TRLConfig(
        output_dir=out_dir, seed=seed, data_seed=seed,
        per_device_train_batch_size=GROUP * PROMPTS_PER_STEP, gradient_accumulation_steps=1,
        steps_per_generation=1, num_iterations=1, num_generations=GROUP,
        max_completion_length=new, generation_kwargs={"min_new_tokens": new},
        temperature=1.0, top_p=1.0, top_k=0, beta=beta, epsilon=EPSILON, loss_type="grpo",
        scale_rewards="group", mask_truncated_completions=False,
        learning_rate=LR, lr_scheduler_type="constant", warmup_steps=0, weight_decay=0.0,
        adam_beta1=0.9, adam_beta2=0.999, adam_epsilon=1e-8, max_grad_norm=1.0,
        max_steps=warmup + steps, logging_strategy="no", save_strategy="no", eval_strategy="no",
        report_to=[], bf16=False, fp16=False, use_cpu=True, gradient_checkpointing=False,
        dataloader_num_workers=0, disable_tqdm=True, use_vllm=False, log_completions=False,
        router_aux_loss_coef=0.0,
    )
    clock = StepClock()
    trainer = GRPOTrainer(model=model, reward_funcs=addition_reward, args=args, train_dataset=ds,
                          processing_class=hf_tok, callbacks=[clock])
    trainer.remove_callback(PrinterCallback)  # its end-of-training metrics dict is noise here
    # time spent in generation (model.generate) per call, for the profile column
    gen_times: list[float] = []
    orig = trainer._generate_single_turn

    def timed_generate(*a, **kw):
        t = time.perf_counter()
        try:
            return orig(*a, **kw)
        finally:
            gen_times.append(time.perf_counter() - t)

    trainer._generate_single_turn = timed_generate
    try:
        trainer.train()
    finally:
        shutil.rmtree(out_dir, ignore_errors=True)
    stamps = clock.stamps
    if len(stamps) != warmup + steps + 1:
        raise SystemExit(f"TRL: expected {warmup + steps} steps, saw {len(stamps) - 1}")
    times = [b - a for a, b in zip(stamps[:-1], stamps[1:])][warmup:]
    # with logging_strategy="no" TRL logs once, at the end: its metrics averaged over all steps
    # (per-step min/max completion lengths; min ≤ new always, so an average of new means all new)
    mets = next((lg for lg in reversed(clock.logs) if "completions/min_length" in lg), {})
    lo, hi = mets.get("completions/min_length"), mets.get("completions/max_length")
    if lo is None or hi is None:
        raise SystemExit("TRL: no completion-length metrics were logged; cannot check the lengths")
    if float(lo) != new or float(hi) != new:
        raise SystemExit(f"TRL: completion lengths averaged min {lo} / max {hi}, expected exactly {new}")
    if len(gen_times) != warmup + steps:
        raise SystemExit(f"TRL: {len(gen_times)} generate calls for {warmup + steps} steps (one per step expected)")
    return summarize(times, new) | {"gen_seconds": statistics.fmean(gen_times[warmup:]),
                                     "reward_mean_all_steps": float(mets["reward"]) if "reward" in mets else None}


def summarize(times: list[float], new: int) -> dict:
    tokens = GROUP * PROMPTS_PER_STEP * new
    mean = statistics.fmean(times)
    return {"steps": len(times), "s_per_step": mean, "s_per_step_median": statistics.median(times),
            "s_per_step_all": times, "completion_tokens_per_step": tokens, "tokens_per_s": tokens / mean}


# ---------------------------------------------------------------------- setup
def machine_info() -> dict:
    """train_step.py's machine/version record, plus TRL's version."""
    import trl
    from train_step import machine_info as base_info   # benchmarks/ is on sys.path when run as a script

    return {**base_info(), "trl": trl.__version__}


def check_logits(ours_model, ckpt: Path, tok: EngineTokenizer) -> float:
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32, attn_implementation="sdpa").eval()
    ours_model.eval()
    texts = ["12+34=46\n", "99+1=100 ", "7+80=87\n\n"]  # ragged: pad to one length with spaces
    width = max(len(t) for t in texts)
    ids = torch.tensor([[tok.bos_token_id] + tok.encode(t.ljust(width)) for t in texts])
    with torch.no_grad():
        diff = (ours_model(ids).logits - hf(input_ids=ids, use_cache=False).logits).abs().max().item()
    return diff


def parse_setting(s: str) -> tuple[int, float]:
    new, _, beta = s.partition(":")
    return int(new), float(beta or 0)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=6, help="timed steps per side and setting (default 6)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2)")
    ap.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS),
                    help="NEW_TOKENS:BETA pairs (default: 64:0 256:0 64:0.001)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's default)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--skip-trl", action="store_true", help="ours only (smoke tests)")
    ap.add_argument("--json", type=Path, default=None, help="write the figures to this JSON file")
    args = ap.parse_args(argv)
    if args.steps < 1 or args.warmup < 0:
        ap.error("--steps must be >= 1 and --warmup >= 0")
    settings = [parse_setting(s) for s in args.settings]
    if args.threads:
        torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()

    info = machine_info()
    log(f"machine: {info['cpu']}, {info['logical_cpus']} logical CPUs, torch threads {info['torch_threads']}, "
        f"load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    log(f"versions: python {info['python']}, torch {info['torch']}, transformers {info['transformers']}, "
        f"trl {info['trl']}, r1lab {info['r1lab']} ({info['r1lab_commit']})")

    cfg = preset("bench")
    chars = build_char_tokenizer(cfg.vocab_size)
    tok = EngineTokenizer(chars)
    hf_tok = hf_tokenizer(chars)
    pool = make_pool(POOL_SIZE, args.seed)
    # both tokenizers give the same prompt ids: BOS + one id per character
    for ex in pool[:8]:
        a = [tok.bos_token_id] + tok.encode(ex.question)
        b = hf_tok(ex.question)["input_ids"]
        if a != b:
            raise SystemExit(f"tokenizers disagree on {ex.question!r}: ours {a}, TRL {b}")

    figures: dict = {"machine": info, "group_size": GROUP, "prompts_per_step": PROMPTS_PER_STEP,
                     "completions_per_step": GROUP * PROMPTS_PER_STEP, "lr": LR, "warmup": args.warmup,
                     "steps": args.steps, "settings": []}
    with tempfile.TemporaryDirectory(prefix="r1lab-grpo-bench-") as tmp:
        ours0 = r1lab.build_model(cfg, seed=0)
        n_params = sum(p.numel() for p in ours0.parameters())
        ckpt = save_model(ours0, Path(tmp) / "ckpt")
        if not args.skip_trl:
            diff = check_logits(ours0, Path(ckpt), tok)
            log(f"preset 'bench' ({n_params / 1e6:.2f}M parameters); max |logit diff| ours vs transformers {diff:.1e}")
            if not diff <= LOGIT_TOL:
                raise SystemExit(f"logits differ by {diff:.2e} > {LOGIT_TOL}")
            figures["logit_max_abs_diff"] = diff
        del ours0
        log(f"{GROUP * PROMPTS_PER_STEP} completions per step ({PROMPTS_PER_STEP} prompts × G={GROUP}), "
            f"{args.warmup} warm-up + {args.steps} timed steps per side, fp32 CPU\n")

        for new, beta in settings:
            label = f"{new} tok, β={beta:g}"
            log(f"--- {label}: ours ...")
            t = time.perf_counter()
            ours = run_ours(cfg, tok, pool, new, beta, args.warmup, args.steps, args.seed)
            log(f"    ours {ours['s_per_step']:.3f} s/step, {ours['tokens_per_s']:.0f} tok/s "
                f"(gen {ours['gen_seconds']:.3f} s + train {ours['train_seconds']:.3f} s; {time.perf_counter() - t:.0f} s total)")
            theirs = None
            if not args.skip_trl:
                log(f"--- {label}: TRL ...")
                t = time.perf_counter()
                theirs = run_trl(Path(ckpt), hf_tok, pool, new, beta, args.warmup, args.steps, args.seed)
                log(f"    TRL  {theirs['s_per_step']:.3f} s/step, {theirs['tokens_per_s']:.0f} tok/s "
                    f"(gen {theirs['gen_seconds']:.3f} s; {time.perf_counter() - t:.0f} s total)")
            ratio = theirs["s_per_step"] / ours["s_per_step"] if theirs else None
            figures["settings"].append({"label": label, "new_tokens": new, "beta": beta, "ours": ours,
                                        "trl": theirs, "ratio": ratio})

    rows = figures["settings"]
    log("")
    log(f"| setting | ours s/step | ours tok/s | TRL s/step | TRL tok/s | ratio | ours gen / train s | TRL gen s |")
    log("|---|---|---|---|---|---|---|---|")
    for r in rows:
        o, h = r["ours"], r["trl"]
        h_step = f"{h['s_per_step']:.3f}" if h else "-"
        h_tok = f"{h['tokens_per_s']:.0f}" if h else "-"
        h_gen = f"{h['gen_seconds']:.3f}" if h else "-"
        ratio = f"{r['ratio']:.2f}×" if r["ratio"] else "-"
        log(f"| {r['label']} | {o['s_per_step']:.3f} | {o['tokens_per_s']:.0f} | {h_step} | {h_tok} | {ratio} | "
            f"{o['gen_seconds']:.3f} / {o['train_seconds']:.3f} | {h_gen} |")
    ratios = [r["ratio"] for r in rows if r["ratio"]]
    met = bool(ratios) and min(ratios) >= TARGET
    figures["target"] = TARGET
    figures["target_met"] = met
    log("")
    log("RESULT " + " ".join(
        f"{r['new_tokens']}tok_beta{r['beta']:g}: ours_s_step={r['ours']['s_per_step']:.3f} "
        f"ours_tok_s={r['ours']['tokens_per_s']:.0f}"
        + (f" trl_s_step={r['trl']['s_per_step']:.3f} trl_tok_s={r['trl']['tokens_per_s']:.0f} "
           f"ratio={r['ratio']:.2f};" if r["trl"] else ";")
        for r in rows) + (f" target>={TARGET:g}x {'met' if met else 'NOT met'}" if ratios else ""))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
