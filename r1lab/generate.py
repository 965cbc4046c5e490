"""`r1lab generate`: complete prompts with the engine, streaming one prompt to the terminal
or writing a JSONL file of completions for many (with a progress bar).

Prompt files are JSONL: each line is a JSON string, or an object with ``prompt`` (text) or
``messages`` (chat). Output lines carry the prompt, and per completion the text, token ids,
logprobs, finish reason and — for chat prompts, which open ``<think>`` — the reasoning and
answer split (SPEC §8).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from .device import resolve_device as pick_device
from .files import atomic_write_text, iter_jsonl

BATCH_PROMPTS = 64  # prompts handed to the engine at once when generating from a file


class GenerateError(ValueError):
    """Bad generate input (prompt file, flags); one line."""


def read_prompts(path: Path, chat: bool) -> list:
    """The prompts of a JSONL file: strings, ``{"prompt": text}`` or ``{"messages": [...]}``
    (checked against the chat template here, so a bad row names its line)."""
    from .tokenizer import TokenizerError, render_chat

    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise GenerateError(f"prompts file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise GenerateError(f"cannot read prompts file {path}: {e}") from None
    prompts = []
    for n, item in iter_jsonl(lines, path, GenerateError):
        if isinstance(item, str):
            text = item
        elif isinstance(item, dict) and isinstance(item.get("messages"), list):
            try:                     # the template's own checks, with the line they come from
                render_chat(item["messages"])
            except TokenizerError as e:
                raise GenerateError(f"{path} line {n}: {e}") from None
            if not item["messages"]:
                raise GenerateError(f"{path} line {n}: 'messages' is empty; give at least one user message")
            prompts.append(item["messages"])
            continue
        elif isinstance(item, dict) and isinstance(item.get("prompt"), str):
            text = item["prompt"]
        else:
            raise GenerateError(f"{path} line {n}: expected a string or an object with 'prompt' (text) or 'messages'")
        prompts.append([{"role": "user", "content": text}] if chat else text)
    if not prompts:
        raise GenerateError(f"prompts file {path} has no prompts")
    return prompts


def _record(prompt, out, is_chat: bool) -> dict:
    from .reasoning import split_reasoning

    rec = {"prompt": prompt, "completions": []}
    for c in out.outputs:
        item = {"text": c.text, "token_ids": c.token_ids, "logprobs": [round(x, 6) for x in c.logprobs],
                "finish_reason": c.finish_reason}
        if is_chat:
            item["reasoning"], item["answer"] = split_reasoning(c.text)
        rec["completions"].append(item)
    return rec


def run_generate(model_dir: str, prompt: str | None, prompts_file: str | None, *, n: int, temperature: float,
                 top_p: float, top_k: int, max_tokens: int, seed: int | None, chat: bool, output: str | None,
                 tokenizer_dir: str | None = None, kv_cache_mb: float = 256.0, spec_mtp: bool = False,
                 device: str = "auto", dtype: str | None = None) -> int:
    from tqdm import tqdm

    from .engine import Engine, EngineConfig, SamplingParams

    params = SamplingParams(n=n, temperature=temperature, top_p=top_p, top_k=top_k, max_tokens=max_tokens, seed=seed)
    if kv_cache_mb <= 0:
        raise GenerateError(f"--kv-cache-mb must be positive, got {kv_cache_mb}")
    if prompt is not None:
        items = [[{"role": "user", "content": prompt}] if chat else prompt]
    else:                    # input errors before the model loads
        items = read_prompts(Path(prompts_file), chat)
    model, tok = load_model_and_tokenizer(model_dir, tokenizer_dir, device, dtype)
    if spec_mtp and not getattr(model, "mtp_layers", None):
        raise GenerateError(f"--spec-mtp needs a model with an MTP module; {model_dir} has none "
                            "(num_nextn_predict_layers is 0 or the model is dense)")
    engine = Engine(model, tok, EngineConfig(kv_cache_bytes=int(kv_cache_mb * 2**20), spec_mtp=spec_mtp))

    if len(items) == 1 and n == 1 and output is None:  # stream to the terminal
        for d in engine.stream(items, params):
            sys.stdout.write(d.text)
            sys.stdout.flush()
        sys.stdout.write("\n")
        _report_spec(engine)
        return 0

    records = []
    bar = tqdm(total=len(items), unit="prompt", desc="generate", disable=len(items) == 1)
    for start in range(0, len(items), BATCH_PROMPTS):
        batch = items[start:start + BATCH_PROMPTS]
        for p, out in zip(batch, engine.generate(batch, params)):
            records.append(_record(p, out, is_chat=isinstance(p, list)))
        bar.update(len(batch))
    bar.close()
    lines = "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    if output is None:
        sys.stdout.write(lines)
    else:
        out = Path(output)
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out, lines)
        print(f"wrote {len(records)} prompts × {n} completions to {out}", file=sys.stderr)
    _report_spec(engine)
    return 0


def load_model_and_tokenizer(model_dir: str, tokenizer_dir: str | None = None, device: str = "auto",
                             dtype: str | None = None, error: type[Exception] = None):
    """(model, tokenizer) from a checkpoint directory; the tokenizer is the checkpoint's own
    unless ``tokenizer_dir`` is given. Problems raise ``error`` (default GenerateError)."""
    from .checkpoint import CheckpointError, load_config, load_model, require_checkpoint
    from .tokenizer import load_tokenizer

    error = error or GenerateError
    try:  # a missing path or a non-checkpoint says so before any complaint about its tokenizer
        model_dir = str(require_checkpoint(model_dir))
        load_config(model_dir)
    except CheckpointError as e:
        raise error(str(e)) from None
    tok_dir = tokenizer_dir or (model_dir if (Path(model_dir) / "tokenizer.json").is_file() else None)
    if tok_dir is None:
        raise error(f"{model_dir} has no tokenizer.json; pass --tokenizer DIR")
    tok = load_tokenizer(tok_dir)
    try:
        device, dt = resolve_device(device, dtype)
    except GenerateError as e:
        raise error(str(e)) from None
    model = load_model(model_dir, device=device, dtype=dt)
    if tok.vocab_size > model.config.vocab_size:
        raise error(f"tokenizer has {tok.vocab_size} tokens but the model's vocabulary is {model.config.vocab_size}")
    return model, tok


def _report_spec(engine) -> None:
    if engine.spec and engine.acceptance_rate is not None:
        print(f"MTP speculative decoding: {engine.spec_accepted}/{engine.spec_drafted} drafts accepted "
              f"({engine.acceptance_rate:.1%})", file=sys.stderr)


def resolve_device(device: str = "auto", dtype: str | None = None) -> tuple[str, torch.dtype]:
    """``auto`` = CUDA when present, else CPU; dtype defaults to bf16 on CUDA, fp32 on CPU."""
    dev = pick_device(device, "--device", GenerateError)
    device = str(dev)
    if dtype is None:
        return device, (torch.bfloat16 if dev.type == "cuda" else torch.float32)
    dt = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}.get(dtype)
    if dt is None:
        raise GenerateError(f"--dtype: unknown dtype {dtype!r} (use float32, bfloat16 or float16)")
    return device, dt
