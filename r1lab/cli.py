"""`r1lab <verb>`: thin verbs over the library. Each verb calls one public function.

Errors a user can fix (bad config, missing checkpoint, bad flag) print one line
``r1lab: error: …`` and exit with status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import math
import json
import sys
from pathlib import Path

from . import __version__
from .config import PRESETS, ConfigError
from .tokenizer import TokenizerError


class CLIError(Exception):
    """A user error detected by the CLI itself."""


def _resolve_config(spec: str):
    """PRESET name, shipped model, path to a config.json, or a checkpoint directory -> ModelConfig."""
    from .checkpoint import SHIPPED_MODELS, load_config, resolve_checkpoint
    from .config import ModelConfig, preset

    if spec in PRESETS:
        return preset(spec)
    p = resolve_checkpoint(spec)
    if not p.exists():
        raise CLIError(f"model path {spec} does not exist (give a preset: {', '.join(PRESETS)}; a config.json file; "
                       f"a checkpoint directory; or a shipped model name: {', '.join(SHIPPED_MODELS)})")
    if p.is_dir():
        return load_config(p)
    if p.is_file():
        return ModelConfig.from_json(p)
    raise CLIError(f"{spec!r} is not a preset ({', '.join(PRESETS)}), a config.json file or a checkpoint directory")


# ---------------------------------------------------------------------------- verbs
def cmd_info(args) -> int:
    from .accounting import format_report, report

    if args.context <= 0:
        raise CLIError(f"--context must be positive, got {args.context}")
    if args.tokens is not None and args.tokens <= 0:
        raise CLIError(f"--tokens must be positive, got {args.tokens}")
    if args.mfu is not None and not (0 < args.mfu <= 1):
        raise CLIError(f"--mfu must be in (0, 1], got {args.mfu}")
    if args.usd_per_hour < 0:
        raise CLIError(f"--usd-per-hour must be >= 0, got {args.usd_per_hour}")
    cfg = _resolve_config(args.model)
    rep = report(cfg, context=args.context, tokens=args.tokens, gpu=args.gpu, mfu=args.mfu,
                 usd_per_hour=args.usd_per_hour)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(format_report(rep, args.model))
    return 0


def cmd_init(args) -> int:
    import torch

    from .checkpoint import save_model
    from .config import META_PRESETS, preset
    from .model import build_model

    out = Path(args.out_dir)
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not args.force:
        raise CLIError(f"{out} exists and is not empty; choose a new directory or pass --force")
    if args.preset in PRESETS:
        cfg = preset(args.preset)
        if args.preset in META_PRESETS and not args.force:
            raise CLIError(f"preset {args.preset!r} is too large to initialise on this machine; pass --force if you mean it")
    else:
        cfg = _resolve_config(args.preset)
    tokenizer, tok_note = _init_tokenizer(cfg, args.tokenizer)
    model = build_model(cfg, seed=args.seed)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    save_model(model, out, dtype=dtype, tokenizer=tokenizer)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({n / 1e6:.2f}M parameters, seed {args.seed}, {args.dtype}; {tok_note})")
    return 0


def _init_tokenizer(cfg, path: str | None):
    """The tokenizer directory `init` copies: --tokenizer, else the shipped one if it fits the config."""
    from .tokenizer import SHIPPED_TOKENIZER_DIR, load_tokenizer

    tok = load_tokenizer(path)
    if path is not None:
        if tok.vocab_size > cfg.vocab_size:
            raise CLIError(f"tokenizer {path} has {tok.vocab_size} tokens but the model's vocab_size is "
                           f"{cfg.vocab_size}")
        return path, f"tokenizer from {path}"
    eos = cfg.eos_token_id if isinstance(cfg.eos_token_id, list) else [cfg.eos_token_id]
    if tok.vocab_size <= cfg.vocab_size and cfg.bos_token_id == tok.bos_token_id and tok.eos_token_id in eos:
        return SHIPPED_TOKENIZER_DIR, f"shipped tokenizer, {tok.vocab_size} tokens"
    return None, "no tokenizer (the shipped one does not fit this config; pass --tokenizer DIR)"


def _int_arg(minimum: int, what: str):
    """An argparse type: an integer >= ``minimum``, else argparse's one-line error."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = minimum - 1
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be a {what} integer, got {text!r}")
        return value
    return parse


_positive_int_arg = _int_arg(1, "positive")
_nonneg_int_arg = _int_arg(0, "non-negative")


def _fraction_arg(text: str) -> float:
    """An argparse type: a number in [0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be a fraction in [0, 1], got {text!r}")
    return value


def _off_or(kind):
    """An argparse type: ``off`` (None) or what ``kind`` parses."""
    def parse(text: str):
        return None if text.strip().lower() == "off" else kind(text)
    return parse


def _rejection_flags(s) -> None:
    """The sampling and filter flags of rejection-sample and distill."""
    s.add_argument("--split", default="train", help="task split to sample (default train; never the test set)")
    s.add_argument("--limit", type=_positive_int_arg, metavar="N", help="prompts per task (default: the whole split)")
    s.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (default 0.6)")
    s.add_argument("--top-p", type=float, default=0.95, help="nucleus mass (default 0.95)")
    s.add_argument("--max-tokens", type=_positive_int_arg, metavar="N", help="new tokens per completion (default: context)")
    s.add_argument("--seed", type=_nonneg_int_arg, default=0, help="sampling seed (default 0)")
    s.add_argument("--task-opt", action="append", metavar="KEY=VALUE",
                   help="task option (repeatable; default: the options the model was trained with, from r1lab.json)")
    s.add_argument("--kv-cache-mb", type=float, default=256.0, help="KV-cache budget in MiB (default 256)")
    f = s.add_argument_group("filters (each reported; 'off' switches a threshold off)")
    f.add_argument("--pass-rate", default="0,1", metavar="MIN,MAX",
                   help="keep prompts whose pass rate is in [MIN, MAX] (default 0,1: all; e.g. 0.1,0.9)")
    f.add_argument("--keep-truncated", action="store_true", help="keep completions that hit the token limit")
    f.add_argument("--keep-unformatted", action="store_true", help="keep completions without reasoning</think>answer")
    f.add_argument("--keep-wrong", action="store_true", help="keep wrong answers too")
    f.add_argument("--min-tokens", type=_positive_int_arg, metavar="N", help="drop completions shorter than N tokens")
    f.add_argument("--max-kept-tokens", type=_positive_int_arg, metavar="N", help="drop completions longer than N tokens")
    f.add_argument("--min-language", type=_off_or(_fraction_arg), default=0.95, metavar="F|off",
                   help="least share of reasoning words in the question's script (default 0.95)")
    f.add_argument("--max-paragraph-chars", type=_off_or(_positive_int_arg), default=2000, metavar="N|off",
                   help="drop reasoning with a paragraph longer than N characters (default 2000)")
    f.add_argument("--allow-code", action="store_true", help="keep code blocks (```) inside the reasoning")
    f.add_argument("--keep-duplicates", action="store_true", help="keep exact duplicates of a kept completion")
    f.add_argument("--near-duplicate", type=_off_or(_fraction_arg), default=0.9, metavar="F|off",
                   help="drop completions whose word-3-gram Jaccard similarity to a kept one is >= F (default 0.9)")
    f.add_argument("--keep-per-prompt", type=_positive_int_arg, metavar="N", help="keep at most N per prompt")


def _seconds_arg(minimum_exclusive: bool):
    """An argparse type: a finite number of seconds, > 0 (or >= 0), else argparse's one-line error."""
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or value < 0 or (minimum_exclusive and value == 0):
            raise argparse.ArgumentTypeError(f"must be a number of seconds {'>' if minimum_exclusive else '>='} 0, "
                                             f"got {text!r}")
        return value
    return parse


R1_ZERO_DEMO_FLAGS = ("base", "recipe", "steps", "questions", "k", "threads")


def cmd_demo(args) -> int:
    if args.foundation:
        given = [f"--{f}" for f in R1_ZERO_DEMO_FLAGS if getattr(args, f) is not None]
        if given:
            raise CLIError(f"{', '.join(given)} apply to the R1-Zero demo, not to --foundation")
        from .demo import run_demo

        return run_demo(seconds=60.0 if args.seconds is None else args.seconds, out_dir=Path(args.out),
                        seed=args.seed or 0)
    if args.seconds is not None:
        raise CLIError("--seconds applies to --foundation only (the R1-Zero demo runs the recipe's steps; "
                       "use --steps)")
    from .demo_r1zero import DEFAULT_BASE, EVAL_K, EVAL_QUESTIONS, run_demo as run_r1_zero

    if args.base is not None:
        from .checkpoint import require_checkpoint

        require_checkpoint(args.base)
    return run_r1_zero(base=args.base or DEFAULT_BASE, out_dir=Path(args.out), recipe=args.recipe,
                       steps=args.steps, questions=args.questions or EVAL_QUESTIONS, k=args.k or EVAL_K,
                       threads=args.threads, seed=args.seed)


def cmd_tokenizer_train(args) -> int:
    from .tokenizer import N_BYTES, SPECIAL_TOKENS, train_tokenizer

    # the tokenizers library draws its bar on a terminal (and prints bare newlines to stdout otherwise)
    show = not args.quiet and sys.stdout.isatty() and sys.stderr.isatty()
    tok, stats = train_tokenizer(args.input, args.vocab_size, args.out_dir, force=args.force, show_progress=show)
    merges = tok.vocab_size - len(SPECIAL_TOKENS) - N_BYTES
    print(f"wrote {args.out_dir}: {tok.vocab_size} tokens ({len(SPECIAL_TOKENS)} special, {N_BYTES} bytes, "
          f"{merges} merges) from {stats.documents} documents, {stats.characters} characters in {stats.files} file(s)")
    if tok.vocab_size < args.vocab_size:
        print(f"note: asked for {args.vocab_size} tokens; the corpus yields no more merges")
    return 0


def cmd_tokenize(args) -> int:
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    text = sys.stdin.read() if args.text == "-" else args.text
    ids = tok.encode(text, add_special_tokens=args.add_special_tokens)
    pieces = tok.pieces(ids)
    if args.json:
        tokens = [tok.id_to_token(i) for i in ids]
        print(json.dumps({"ids": ids, "pieces": pieces, "tokens": tokens}, ensure_ascii=False))
        return 0
    print(f"{len(ids)} tokens, {len(text)} characters ({tok.vocab_size}-token vocabulary)")
    for i, piece in zip(ids, pieces):
        print(f"{i:>8}  {piece!r}")
    print("ids:", " ".join(map(str, ids)))
    return 0


def cmd_generate(args) -> int:
    from .generate import run_generate

    if (args.prompt is None) == (args.prompts is None):
        raise CLIError("give exactly one of --prompt TEXT or --prompts FILE.jsonl")
    return run_generate(args.model, args.prompt, args.prompts, n=args.n, temperature=args.temperature,
                        top_p=args.top_p, top_k=args.top_k, max_tokens=args.max_tokens, seed=args.seed,
                        chat=args.chat, output=args.output, tokenizer_dir=args.tokenizer,
                        kv_cache_mb=args.kv_cache_mb, spec_mtp=args.spec_mtp, device=args.device,
                        dtype=args.dtype)


def _task_options(pairs: list[str] | None) -> dict:
    """``--task-opt KEY=VALUE`` pairs as a mapping, parsed like a recipe's ``--set``."""
    from .train.config import TrainError, apply_override

    out: dict = {}
    for item in pairs or []:
        try:
            apply_override(out, item)
        except TrainError as e:
            raise CLIError(f"--task-opt: {e}") from None
    return out


def _rejection_configs(args):
    """(SampleConfig, FilterConfig) of the rejection-sampling flags (rejection-sample, distill)."""
    from .train.rejection import FilterConfig, SampleConfig, parse_window

    if args.kv_cache_mb <= 0:
        raise CLIError(f"--kv-cache-mb must be positive, got {args.kv_cache_mb}")
    lo, hi = parse_window(args.pass_rate)
    filters = FilterConfig(pass_rate_min=lo, pass_rate_max=hi, drop_truncated=not args.keep_truncated,
                           require_format=not args.keep_unformatted, require_correct=not args.keep_wrong,
                           min_tokens=args.min_tokens, max_tokens=args.max_kept_tokens,
                           min_language=args.min_language, max_paragraph_chars=args.max_paragraph_chars,
                           drop_code_in_reasoning=not args.allow_code, dedup=not args.keep_duplicates,
                           near_duplicate=args.near_duplicate, keep_per_prompt=args.keep_per_prompt)
    sample = SampleConfig(k=args.k, temperature=args.temperature, top_p=args.top_p, max_new_tokens=args.max_tokens,
                          split=args.split, limit=args.limit, seed=args.seed, kv_cache_mb=args.kv_cache_mb)
    return sample, filters


def _task_list(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def cmd_rejection_sample(args) -> int:
    from .train.rejection import rejection_sample, stats_paths

    sample, filters = _rejection_configs(args)
    tasks = _task_list(args.task)
    stats = rejection_sample(args.model, tasks, args.output, sample, filters,
                             task_options=_task_options(args.task_opt) if args.task_opt else None,
                             device=args.device, dtype=args.dtype, progress=not args.quiet)
    dropped = ", ".join(f"{k} {v}" for k, v in stats["dropped"].items() if v) or "none"
    js, md = stats_paths(Path(args.output))
    print(f"kept {stats['kept']} of {stats['candidates']} completions ({stats['kept_fraction']:.1%}) from "
          f"{stats['prompts_with_kept']} of {stats['prompts']} prompts; dropped: {dropped}")
    print(f"wrote {args.output} (SFT chat JSONL), {js}, {md}")
    return 0


def cmd_distill(args) -> int:
    from .train.distill import DistillConfig, distill

    sample, filters = _rejection_configs(args)
    cfg = DistillConfig(student=args.student, out_dir=args.out, teacher=args.teacher, tasks=_task_list(args.task),
                        traces=list(args.traces or []), tokenizer=args.tokenizer, sample=sample, filters=filters,
                        sft_overrides=list(args.set or []),
                        task_options=_task_options(args.task_opt) if args.task_opt else None,
                        device=args.device, dtype=args.dtype)
    summary = distill(cfg, progress=not args.quiet)
    ts = summary.get("trace_stats")
    if ts:
        reused = " (reused)" if summary.get("traces_reused") else ""
        print(f"traces{reused}: kept {ts['kept']} of {ts['candidates']} teacher completions from {ts['prompts']} "
              f"prompts -> {summary['traces'][0]}")
    sft_sum = summary.get("sft", {})
    if sft_sum.get("stopped"):
        print(f"distill: stopped during SFT at step {sft_sum.get('step')}; run the same command again to continue")
        return 143
    print(f"distill: student {args.student} trained on the traces; wrote {summary['final']}/ (Hugging Face format: "
          f"config.json, safetensors, tokenizer)")
    return 0


def cmd_eval(args) -> int:
    from .eval import evaluate, markdown_table

    if (args.model is None) == (args.endpoint is None):
        raise CLIError("give exactly one of --model DIR or --endpoint URL")
    if args.endpoint is not None and not args.served_model:
        raise CLIError("--endpoint needs --served-model NAME (the model name the server expects)")
    if args.kv_cache_mb <= 0:
        raise CLIError(f"--kv-cache-mb must be positive, got {args.kv_cache_mb}")
    summary = evaluate(args.task, model=args.model, endpoint=args.endpoint, api_key=args.api_key,
                       served_model=args.served_model, split=args.split, k=args.k, temperature=args.temperature,
                       top_p=args.top_p, max_tokens=args.max_tokens, limit=args.limit, seed=args.seed,
                       concurrency=args.concurrency, prompt_style=args.prompt_style, output_dir=args.output,
                       kv_cache_mb=args.kv_cache_mb, task_options=_task_options(args.task_opt),
                       device=args.device, dtype=args.dtype)
    if "task_options_from_model" in summary:
        opts = ", ".join(f"{k}={v}" for k, v in summary["task_options_from_model"].items())
        print(f"note: {args.task} with the options {args.model} was trained on ({opts}; from its r1lab.json); "
              f"--task-opt KEY=VALUE overrides them")
    if summary.get("prompt_style_from_model"):
        print(f"note: prompt style {summary['prompt_style']!r}, the one {args.model} was trained with (from its "
              f"r1lab.json); --prompt-style overrides it")
    print(markdown_table([summary]), end="")
    if args.output:
        print(f"wrote {args.output}/samples.jsonl, summary.json, summary.md")
    return 0


def _train(args, config_cls, run, what: str) -> int:
    """Shared by `r1lab pretrain`, `sft` and `grpo`: recipe + overrides -> run -> summary line."""
    from .train.config import load_recipe

    cfg = load_recipe(args.recipe, config_cls, args.set or [])
    if args.resume:
        cfg.resume = True
    summary = run(cfg)
    last = summary["last"] or {}
    loss = f", loss {last['loss']:.4f}" if isinstance(last.get("loss"), float) else ""
    if summary["stopped"]:
        print(f"{what}: stopped by SIGTERM at step {summary['step']}{loss}; checkpoint {summary['checkpoint']} "
              f"(continue with --resume)")
        return 143
    out = summary["out_dir"]
    print(f"{what}: {summary['step']} steps{loss}; wrote {summary['final']}/ (model + tokenizer), "
          f"{out}/metrics.jsonl, {out}/plots/, {out}/checkpoints/")
    return 0


def cmd_pretrain(args) -> int:
    from .train.config import PretrainConfig
    from .train.pretrain import pretrain

    return _train(args, PretrainConfig, pretrain, "pretrain")


def cmd_sft(args) -> int:
    from .train.config import SFTConfig
    from .train.sft import sft

    return _train(args, SFTConfig, sft, "sft")


def cmd_grpo(args) -> int:
    from .train.grpo import GRPOConfig, grpo

    return _train(args, GRPOConfig, grpo, "grpo")


def cmd_chat(args) -> int:
    from .chat import run_chat

    return run_chat(args.model, endpoint=args.endpoint, api_key=args.api_key, served_model=args.served_model,
                    temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                    max_reasoning_tokens=args.max_reasoning_tokens, hide_thinking=args.hide_thinking,
                    system=args.system, seed=args.seed, device=args.device, dtype=args.dtype)


def cmd_serve(args) -> int:
    import os

    from .serve.server import ServeOptions, run_server

    keys = list(args.api_key or [])
    keys += [k.strip() for k in os.environ.get("R1LAB_API_KEYS", "").split(",") if k.strip()]
    if any(not k or any(c.isspace() for c in k) for k in keys):
        raise CLIError("--api-key: keys must be non-empty and contain no spaces")
    return run_server(ServeOptions(
        model=args.model, host=args.host, port=args.port, api_keys=tuple(keys),
        served_model_name=args.served_model_name, max_num_seqs=args.max_num_seqs, max_queue=args.max_queue,
        max_model_len=args.max_model_len, kv_cache_bytes=args.kv_cache_bytes, spec_mtp=args.spec_mtp,
        effort_budgets=args.reasoning_effort_budgets or _effort_budgets_arg(""), max_body_bytes=args.max_body_bytes,
        drain_timeout=args.drain_timeout, client_timeout=args.client_timeout, device=args.device, dtype=args.dtype,
        threads=args.threads))


BYTE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def _bytes_arg(text: str) -> int:
    """A size such as 1048576, 256MB or 1GiB (an argparse type)."""
    import re

    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*", text)
    unit = m.group(2).upper() if m else None
    if not m or unit not in BYTE_UNITS or float(m.group(1)) * BYTE_UNITS[unit] < 1:
        raise argparse.ArgumentTypeError(f"must be a size like 1048576, 256MB or 1GiB, got {text!r}")
    return int(float(m.group(1)) * BYTE_UNITS[unit])


def _effort_budgets_arg(text: str) -> dict:
    from .serve.protocol import parse_effort_budgets

    try:
        return parse_effort_budgets(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def cmd_template(args) -> int:
    from .tokenizer import load_tokenizer

    tok = load_tokenizer(args.tokenizer)
    src = "<stdin>" if args.messages == "-" else args.messages
    try:
        raw = sys.stdin.read() if args.messages == "-" else Path(args.messages).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise CLIError(f"messages file {src} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise CLIError(f"cannot read {src}: {e}") from None
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CLIError(f"{src} is not valid JSON: {e}") from None
    messages = data.get("messages") if isinstance(data, dict) else data
    text = tok.apply_chat_template(messages, add_generation_prompt=not args.no_generation_prompt, tokenize=False)
    if args.ids:
        print(json.dumps(tok.encode(text)))
    else:
        sys.stdout.write(text)
        sys.stdout.flush()
        print(f"\n({len(text)} characters, {len(tok.encode(text))} tokens)", file=sys.stderr)
    return 0


# ---------------------------------------------------------------------------- parser
class _HelpFormatter(argparse.HelpFormatter):
    """Keeps each verb and its help on one line: argparse before 3.13 measures verb names
    without their indent, so a verb as long as `tokenizer` pushed its help to the next line."""

    def add_argument(self, action):
        super().add_argument(action)
        if action.help is not argparse.SUPPRESS and hasattr(action, "_get_subactions"):
            names = [len(self._format_action_invocation(a)) for a in action._get_subactions()]
            self._action_max_length = max(self._action_max_length,
                                          max(names, default=0) + self._current_indent + self._indent_increment)


def _device_flags(s: argparse.ArgumentParser, prefix: str = "") -> None:
    """``--device``/``--dtype`` of the verbs that run the engine (r1lab/device.py's rule)."""
    s.add_argument("--device", default="auto", help=f"{prefix}auto (CUDA if present), cpu, cuda, cuda:N (default auto)")
    s.add_argument("--dtype", choices=["float32", "bfloat16", "float16"],
                   help=f"{prefix}weights and KV cache dtype (default: bfloat16 on CUDA, float32 on CPU)")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="r1lab",
        description="Build, train, evaluate and serve DeepSeek-R1-style reasoning models.",
        formatter_class=_HelpFormatter,
    )
    p.add_argument("--version", action="version", version=f"r1lab {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB", title="verbs")

    s = sub.add_parser("info", help="parameters (total/active), KV-cache bytes, FLOPs and training cost of a model",
                       description="Accounting for a preset, a config.json or a checkpoint directory.")
    s.add_argument("model", metavar="PRESET|CONFIG.json|CHECKPOINT_DIR", help=f"presets: {', '.join(PRESETS)}")
    s.add_argument("--context", type=int, default=4096, help="context length for FLOPs per token (default 4096)")
    s.add_argument("--tokens", type=float, help="training tokens for a cost estimate, e.g. 14.8e12")
    s.add_argument("--gpu", default="h800", help="GPU for the cost estimate (h800, h100, h200, a100, b200, rtx4090)")
    s.add_argument("--mfu", type=float, help="model FLOPs utilisation assumed for the cost estimate")
    s.add_argument("--usd-per-hour", type=float, default=2.0, help="price of one GPU-hour (default 2.0)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_info)

    s = sub.add_parser("init", help="write a randomly initialised checkpoint directory",
                       description="Write a Hugging Face checkpoint (config.json + model.safetensors) "
                                   "with random weights.")
    s.add_argument("--preset", required=True, help=f"preset name ({', '.join(PRESETS)}) or a config.json")
    s.add_argument("out_dir", metavar="OUT_DIR")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    s.add_argument("--tokenizer", help="directory whose tokenizer files to copy into the checkpoint "
                                       "(default: the shipped tokenizer when it fits the config)")
    s.add_argument("--force", action="store_true", help="write into a non-empty directory / allow huge presets")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("demo", help="the main demo: R1-Zero GRPO on the shipped tiny base model (CPU, minutes)",
                       description="R1-Zero on a CPU: evaluates the shipped base model (r1zero-base, a tiny MoE of "
                                   "the DeepSeek-V3 architecture pre-trained by recipes/base_tiny.yaml) on held-out "
                                   "questions, runs GRPO on it with rule rewards only (recipes/r1_zero_tiny.yaml; no "
                                   "length term), evaluates again and prints a before/after table; writes "
                                   "OUT/summary.json, OUT/length_hist.png and the trainer's plots under OUT/grpo/ "
                                   "(replaced on every run). --foundation: the first demo instead (model accounting "
                                   "and a one-minute pre-training run).")
    s.add_argument("--out", default="runs/demo", help="output directory (default runs/demo)")
    s.add_argument("--seed", type=_nonneg_int_arg, help="random seed (default: the recipe's; 0 with --foundation)")
    s.add_argument("--base", help="base checkpoint directory or shipped model name (default r1zero-base)")
    s.add_argument("--recipe", help="GRPO recipe file or shipped recipe name (default r1_zero_tiny, shipped in the package)")
    s.add_argument("--steps", type=_positive_int_arg, help="GRPO steps (default: the recipe's)")
    s.add_argument("--questions", type=_positive_int_arg, help="held-out questions (default 128)")
    s.add_argument("--k", type=_positive_int_arg, help="samples per question (default 4)")
    s.add_argument("--threads", type=_positive_int_arg, help="CPU threads (default: the recipe's)")
    s.add_argument("--foundation", action="store_true",
                   help="run the foundation demo (accounting + short pre-training) instead")
    s.add_argument("--seconds", type=float, help="--foundation: training time budget (default 60)")
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("tokenizer", help="train a byte-level BPE tokenizer with the R1 special tokens",
                       description="Tokenizer tools. `r1lab tokenizer train` trains byte-level BPE on text/JSONL "
                                   "files and saves a Hugging Face tokenizer directory.")
    tsub = s.add_subparsers(dest="action", metavar="ACTION", title="actions", required=True)
    t = tsub.add_parser("train", help="train on text files or JSONL (every string of every record)",
                        description="Train a byte-level BPE tokenizer (special tokens first: BOS id 0, EOS id 1) "
                                    "and write tokenizer.json + tokenizer_config.json (with the R1 chat template).")
    t.add_argument("--input", nargs="+", required=True, metavar="FILE",
                   help="plain-text files, or .jsonl files whose string fields are the text")
    t.add_argument("--vocab-size", type=int, required=True, help="total vocabulary, special tokens included")
    t.add_argument("out_dir", metavar="OUT_DIR")
    t.add_argument("--force", action="store_true", help="write into a non-empty directory")
    t.add_argument("--quiet", action="store_true", help="no progress bar")
    t.set_defaults(func=cmd_tokenizer_train)

    s = sub.add_parser("tokenize", help="show the token ids and pieces of a text",
                       description="Encode TEXT and show each id with its piece (debugging).")
    s.add_argument("text", metavar="TEXT", help='the text, or "-" to read standard input')
    s.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the shipped tokenizer)")
    s.add_argument("--add-special-tokens", action="store_true", help="apply the tokenizer's post-processor (BOS)")
    s.add_argument("--json", action="store_true", help="print JSON instead of a table")
    s.set_defaults(func=cmd_tokenize)

    s = sub.add_parser("template", help="show the R1 chat prompt rendered from a messages JSON file",
                       description="Render a JSON list of {role, content} messages (or {\"messages\": [...]}) "
                                   "with the DeepSeek-R1 chat template; the prompt goes to stdout verbatim.")
    s.add_argument("messages", metavar="MESSAGES.json", help='the messages file, or "-" for standard input')
    s.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the shipped tokenizer)")
    s.add_argument("--no-generation-prompt", action="store_true",
                   help="do not end with the generation prompt <｜Assistant｜><think>\\n")
    s.add_argument("--ids", action="store_true", help="print the token ids (JSON) instead of the text")
    s.set_defaults(func=cmd_template)

    s = sub.add_parser("generate", help="complete prompts with a model checkpoint (streams a single prompt)",
                       description="Generate with the r1lab engine (continuous batching, latent KV cache). "
                                   "One prompt streams to the terminal; a JSONL file of prompts writes JSONL.")
    s.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory")
    s.add_argument("--prompt", help="one prompt (text; with --chat, the user message)")
    s.add_argument("--prompts", metavar="FILE.jsonl",
                   help="JSONL: a string, or {\"prompt\": text} or {\"messages\": [...]} per line")
    s.add_argument("--chat", action="store_true", help="wrap text prompts as a user turn of the R1 chat template")
    s.add_argument("--n", type=int, default=1, help="completions per prompt (default 1)")
    s.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6, SPEC §7)")
    s.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    s.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0 = off)")
    s.add_argument("--max-tokens", type=int, default=256, help="new tokens per completion (default 256)")
    s.add_argument("--seed", type=int, help="random seed (reproducible outputs)")
    s.add_argument("--output", metavar="FILE.jsonl", help="write completions here (default: stdout)")
    s.add_argument("--tokenizer", metavar="DIR", help="tokenizer directory (default: the checkpoint's)")
    s.add_argument("--kv-cache-mb", type=float, default=256.0, help="KV-cache budget in MiB (default 256)")
    s.add_argument("--spec-mtp", action="store_true",
                   help="speculative decoding with the model's MTP module (same outputs' distribution; "
                        "prints the acceptance rate)")
    _device_flags(s)
    s.set_defaults(func=cmd_generate)

    s = sub.add_parser("rejection-sample", help="sample k completions per prompt, keep the correct and readable ones "
                                                "(SFT-ready chat JSONL + a statistics report)",
                       description="SPEC §5 stage 3: sample --k completions per training prompt with the engine, "
                                   "score them with the task, drop what each filter names (pass-rate window, "
                                   "truncated, format, wrong, too short/long, language mixing, long paragraphs, "
                                   "code in the reasoning, exact and near duplicates, per-prompt cap) and write "
                                   "OUTPUT (chat JSONL for r1lab sft) with OUTPUT.stats.json / .stats.md.")
    s.add_argument("--model", required=True, metavar="DIR", help="checkpoint directory or shipped model name")
    s.add_argument("--task", required=True, metavar="NAME[,NAME…]", help="task(s) whose training prompts to sample")
    s.add_argument("--k", type=_positive_int_arg, default=8, help="completions per prompt (default 8)")
    s.add_argument("--output", default="rejection.jsonl", metavar="FILE.jsonl",
                   help="kept completions (default rejection.jsonl; the report goes beside it)")
    _rejection_flags(s)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    _device_flags(s)
    s.set_defaults(func=cmd_rejection_sample)

    s = sub.add_parser("distill", help="distil a teacher's reasoning into a dense student (rejection-sampled traces "
                                       "-> SFT; Hugging Face output)",
                       description="SPEC §6: sample the teacher on --task training prompts and keep the correct, "
                                   "readable completions (as rejection-sample; or give --traces), then SFT the "
                                   "student (a dense qwen2/llama preset such as qwen2-tiny, or a checkpoint) on "
                                   "them. OUT/final is the student in Hugging Face format. Re-running continues "
                                   "where it stopped.")
    src = s.add_mutually_exclusive_group(required=True)
    src.add_argument("--teacher", metavar="DIR", help="teacher checkpoint (or shipped name) to sample traces from")
    src.add_argument("--traces", nargs="+", metavar="FILE.jsonl", help="chat JSONL traces to train on instead")
    s.add_argument("--task", metavar="NAME[,NAME…]", help="with --teacher: task(s) whose training prompts to sample")
    s.add_argument("--student", required=True, metavar="PRESET|DIR",
                   help="dense student: a preset (qwen2-tiny, llama-tiny, qwen2-1.5b, …) or a checkpoint directory")
    s.add_argument("--tokenizer", metavar="DIR",
                   help="a preset student's tokenizer (default: the teacher's, else the shipped one)")
    s.add_argument("--out", default="runs/distill", metavar="DIR", help="run directory (default runs/distill)")
    s.add_argument("--k", type=_positive_int_arg, default=8, help="teacher completions per prompt (default 8)")
    s.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="SFT recipe field for the student, e.g. --set steps=300 --set optim.lr=1e-3 (repeatable)")
    _rejection_flags(s)
    s.add_argument("--quiet", action="store_true", help="no progress bars")
    _device_flags(s)
    s.set_defaults(func=cmd_distill)

    s = sub.add_parser("eval", help="evaluate a model or an endpoint on a task (pass@1 over k samples, cons@k, pass@k)",
                       description="Evaluate with DeepSeek-R1's protocol (SPEC §7): k samples per question at "
                                   "temperature 0.6 / top-p 0.95; pass@1 = mean correctness over the samples, "
                                   "cons@k = majority vote, unbiased pass@k. Tasks: gsm8k, math500, aime24, amc23, "
                                   "humaneval, mbpp, arithmetic, chain_add, countdown, or any JSONL with "
                                   "question/answer fields.")
    s.add_argument("--task", required=True, metavar="NAME|FILE", help="a task name or a .jsonl file")
    s.add_argument("--model", metavar="DIR", help="checkpoint directory (runs our engine)")
    s.add_argument("--endpoint", metavar="URL", help="OpenAI-compatible base URL, e.g. http://localhost:8000/v1")
    s.add_argument("--api-key", help="API key for --endpoint (default: none)")
    s.add_argument("--served-model", metavar="NAME", help="model name to request from --endpoint")
    s.add_argument("--k", type=int, default=16, help="samples per question (default 16)")
    s.add_argument("--temperature", type=float, default=0.6, help="default 0.6 (SPEC §7)")
    s.add_argument("--top-p", type=float, default=0.95, help="default 0.95 (SPEC §7)")
    s.add_argument("--max-tokens", type=int,
                   help="new tokens per sample (default: the model's context; 32768 for endpoints, SPEC §7)")
    s.add_argument("--limit", type=int, metavar="M", help="only the first M questions")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    s.add_argument("--concurrency", type=int, default=8, help="parallel requests to --endpoint (default 8)")
    s.add_argument("--split", help="task split (default: the task's evaluation split)")
    s.add_argument("--prompt-style", choices=["chat", "r1_zero", "plain"],
                   help="chat (R1 template, SPEC §7), r1_zero (SPEC §4) or plain (default: the task's)")
    s.add_argument("--task-opt", action="append", metavar="KEY=VALUE",
                   help="task option, e.g. --task-opt digits=[3,4] (repeatable)")
    s.add_argument("--output", metavar="DIR", help="write samples.jsonl, summary.json and summary.md here")
    s.add_argument("--kv-cache-mb", type=float, default=256.0, help="engine KV-cache budget in MiB (default 256)")
    _device_flags(s)
    s.set_defaults(func=cmd_eval)

    s = sub.add_parser("serve", help="serve a model over an OpenAI-compatible HTTP API (thinking in reasoning_content)",
                       description="OpenAI-compatible server: /v1/chat/completions (the thinking in reasoning_content, "
                                   "a thinking budget), /v1/completions, /v1/models, /health, /ready, /metrics "
                                   "(Prometheus) and a web chat at /. SIGTERM drains running requests, then exits 0.")
    s.add_argument("model", metavar="MODEL", help="checkpoint directory or shipped model name (e.g. r1zero-base)")
    s.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    s.add_argument("--port", type=_nonneg_int_arg, default=8000, help="port (default 8000; 0 = any free port)")
    s.add_argument("--api-key", action="append", metavar="KEY",
                   help="require Authorization: Bearer KEY on /v1/* (repeatable; also $R1LAB_API_KEYS, comma separated)")
    s.add_argument("--served-model-name", metavar="NAME", help="model name clients send (default: MODEL's last path part)")
    s.add_argument("--max-num-seqs", type=_positive_int_arg, default=64, help="sequences generated at once (default 64)")
    s.add_argument("--max-queue", type=_nonneg_int_arg, default=256,
                   help="requests waiting for a slot before 429 (default 256)")
    s.add_argument("--max-model-len", type=_positive_int_arg, metavar="N",
                   help="context limit, prompt + completion (default: the model's)")
    s.add_argument("--kv-cache-bytes", type=_bytes_arg, default=256 * 2**20, metavar="SIZE",
                   help="KV-cache budget, e.g. 256MB or 1GiB (default 256MiB)")
    s.add_argument("--spec-mtp", action="store_true", help="speculative decoding with the model's MTP module")
    s.add_argument("--reasoning-effort-budgets", type=_effort_budgets_arg,
                   metavar="low=N,medium=N,high=N",
                   help="thinking budgets of reasoning_effort (default low=256,medium=1024,high=4096)")
    s.add_argument("--max-body-bytes", type=_bytes_arg, default=2**20, metavar="SIZE",
                   help="largest request body (default 1MiB; larger: 413)")
    s.add_argument("--drain-timeout", type=_seconds_arg(False), default=30.0, metavar="SECONDS",
                   help="on SIGTERM, how long running requests may finish (default 30)")
    s.add_argument("--client-timeout", type=_seconds_arg(True), default=30.0, metavar="SECONDS",
                   help="a client must send a request's headers, then its body, within this (default 30; slower: "
                        "the connection is closed, or 408)")
    s.add_argument("--threads", type=_positive_int_arg, metavar="N",
                   help="torch CPU threads of the engine process (default: all cores but one on CPU, leaving one "
                        "to the HTTP process)")
    _device_flags(s)
    s.set_defaults(func=cmd_serve)

    s = sub.add_parser("chat", help="chat in the terminal with a model or an OpenAI-compatible endpoint",
                       description="Terminal chat. MODEL (a checkpoint directory or shipped name) runs the engine in "
                                   "this process; --endpoint URL talks to an OpenAI-compatible server (r1lab serve, "
                                   "vLLM, the DeepSeek API) and reads the thinking from reasoning_content. The thinking "
                                   "is shown dimmed; only answers go back into the history. Commands: /think (show or "
                                   "hide the thinking), /reset, /exit, /help; Ctrl-C stops an answer.")
    s.add_argument("model", nargs="?", metavar="MODEL",
                   help="checkpoint directory or shipped model name (e.g. r1zero-base)")
    s.add_argument("--endpoint", metavar="URL", help="OpenAI-compatible base URL, e.g. http://127.0.0.1:8000/v1")
    s.add_argument("--api-key", metavar="KEY", help="API key for --endpoint (default: $OPENAI_API_KEY, else none)")
    s.add_argument("--model", dest="served_model", metavar="NAME",
                   help="model name to request from --endpoint (default: the first one it lists)")
    s.add_argument("--temperature", type=float, default=0.6, help="0 = greedy (default 0.6, SPEC §7)")
    s.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling mass (default 0.95)")
    s.add_argument("--max-tokens", type=_positive_int_arg, metavar="N",
                   help="new tokens per answer, thinking included (default: the model's context with MODEL, "
                        "the server's default with --endpoint)")
    s.add_argument("--max-reasoning-tokens", type=_nonneg_int_arg, metavar="N",
                   help="thinking budget: after N thinking tokens the thinking is closed and the answer follows")
    s.add_argument("--hide-thinking", action="store_true", help="do not print the thinking (/think toggles it)")
    s.add_argument("--system", metavar="TEXT", help="system prompt")
    s.add_argument("--seed", type=int, help="random seed (reproducible answers)")
    _device_flags(s, "with MODEL: ")
    s.set_defaults(func=cmd_chat)

    for verb, func, example, desc in (
        ("pretrain", cmd_pretrain, "pretrain_tiny", "pre-train a model from a YAML recipe (next-token + MTP + balance loss, SPEC §2)"),
        ("sft", cmd_sft, "sft_tiny", "supervised fine-tuning on chat JSONL from a YAML recipe (loss on assistant tokens)"),
        ("grpo", cmd_grpo, "r1_zero_tiny", "reinforcement learning with GRPO and rule rewards from a YAML recipe (SPEC §3, §4)"),
    ):
        s = sub.add_parser(verb, help=desc,
                           description=f"{desc[0].upper()}{desc[1:]}. Metrics go to OUT_DIR/metrics.jsonl, plots to "
                                       "OUT_DIR/plots/, checkpoints to OUT_DIR/checkpoints/, the model to OUT_DIR/final/.")
        s.add_argument("recipe", metavar="RECIPE.yaml", help="a recipe file, or a shipped recipe's name from any directory "
                                                                  "(e.g. %s; see r1lab/recipes/)" % example)
        s.add_argument("--set", action="append", metavar="KEY=VALUE",
                       help="override a recipe value, e.g. --set optim.lr=1e-3 --set steps=50 (repeatable)")
        s.add_argument("--resume", action="store_true",
                       help="continue from the latest complete checkpoint in the recipe's out_dir")
        s.set_defaults(func=func)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "verb", None):
        parser.print_help()
        return 0
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("r1lab: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and closed early
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (CLIError, ConfigError, TokenizerError) as e:
        print(f"r1lab: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # known library errors carry one-line messages
        from .checkpoint import CheckpointError
        from .chat import ChatError
        from .demo_r1zero import DemoError
        from .engine.cache import CacheError
        from .engine.engine import EngineError
        from .serve.server import ServeError
        from .engine.sampler import SamplingError
        from .eval import EvalError
        from .generate import GenerateError
        from .model_meta import MetaError
        from .rewards import RewardError
        from .tasks import TaskError
        from .train.config import TrainError

        known = (CheckpointError, CacheError, EngineError, SamplingError, GenerateError, EvalError, TaskError,
                 RewardError, TrainError, DemoError, MetaError, ChatError, ServeError,
                 FileNotFoundError, PermissionError, IsADirectoryError)
        if isinstance(e, known):
            print(f"r1lab: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
