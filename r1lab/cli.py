"""`r1lab <verb>`: thin verbs over the library. Each verb calls one public function.

Errors a user can fix (bad config, missing checkpoint, bad flag) print one line
``r1lab: error: …`` and exit with status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .config import PRESETS, ConfigError


class CLIError(Exception):
    """A user error detected by the CLI itself."""


def _resolve_config(spec: str):
    """PRESET name, path to a config.json, or a checkpoint directory -> ModelConfig."""
    from .checkpoint import load_config
    from .config import ModelConfig, preset

    if spec in PRESETS:
        return preset(spec)
    p = Path(spec)
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
    model = build_model(cfg, seed=args.seed)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}[args.dtype]
    save_model(model, out, dtype=dtype, tokenizer=args.tokenizer)
    n = sum(p.numel() for p in model.parameters())
    print(f"wrote {out} ({n / 1e6:.2f}M parameters, seed {args.seed}, {args.dtype})")
    return 0


def cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(seconds=args.seconds, out_dir=Path(args.out), seed=args.seed)


# ---------------------------------------------------------------------------- parser
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="r1lab",
        description="Build, train, evaluate and serve DeepSeek-R1-style reasoning models.",
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
    s.add_argument("--tokenizer", help="directory whose tokenizer files to copy into the checkpoint")
    s.add_argument("--force", action="store_true", help="write into a non-empty directory / allow huge presets")
    s.set_defaults(func=cmd_init)

    s = sub.add_parser("demo", help="the main demo: model accounting and a short CPU pre-training run",
                       description="Shows r1lab info for the presets, then pre-trains the tiny MoE model on "
                                   "synthetic arithmetic for about a minute and prints a before/after table.")
    s.add_argument("--seconds", type=float, default=60.0, help="training time budget (default 60)")
    s.add_argument("--out", default="runs/demo", help="output directory for metrics, plots, checkpoint")
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_demo)
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
    except (CLIError, ConfigError) as e:
        print(f"r1lab: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # known library errors carry one-line messages
        from .checkpoint import CheckpointError

        if isinstance(e, (CheckpointError, FileNotFoundError, PermissionError, IsADirectoryError)):
            print(f"r1lab: error: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":
    sys.exit(main())
