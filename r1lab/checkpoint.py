"""Hugging Face checkpoints in and out: ``config.json`` + (sharded) ``model.safetensors``.

Names are the transformers ones (SPEC §2 "Checkpoint layout"). Our modules already use
them; the only renames are
  * routed experts: we hold them fused (``mlp.experts.gate_up_proj`` (E, 2I, D),
    ``mlp.experts.down_proj`` (E, D, I)); we write the per-expert layout of the published
    checkpoints (``mlp.experts.{j}.{gate,up,down}_proj.weight``) and read both;
  * MTP layers (index ``num_hidden_layers + k``) share the embedding and output head; the
    published files also store copies as ``embed_tokens`` and ``shared_head.head``, so we
    write them and ignore them on load;
  * published FP8 weights (``weight_scale_inv``, one scale per block of
    ``quantization_config.weight_block_size``, default 128×128) are dequantised.
Writes are atomic: a temporary directory is filled, then renamed into place.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .config import ConfigError, ModelConfig
from .model import build_model
from .model.common import Rotary, init_weights

log = logging.getLogger(__name__)

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
DEFAULT_MAX_SHARD_BYTES = 5 * 1024**3
FP8_BLOCK_SIZE = (128, 128)  # DeepSeek-V3/R1's weight_block_size (SPEC §9)
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "generation_config.json")
# Checkpoints that ship inside the package (r1lab/assets/models/NAME/, bf16 weights), each
# pre-trained by our own committed recipe; a name works wherever a checkpoint directory does.
SHIPPED_DIR = Path(__file__).resolve().parent / "assets" / "models"
SHIPPED_MODELS = {
    "r1zero-base": "the R1-Zero demo's base model: r1lab pretrain recipes/base_tiny.yaml",
}


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A checkpoint directory: ``path`` itself, or the shipped model of that name
    (``SHIPPED_MODELS``) when no such local path exists."""
    p = Path(path)
    if not p.exists() and str(path) in SHIPPED_MODELS:
        return SHIPPED_DIR / str(path)
    return p


def missing_path_message(path: str | os.PathLike) -> str:
    """The one-line error for a model path that does not exist (nor names a shipped model)."""
    return (f"model path {path} does not exist (give a checkpoint directory or a shipped model name: "
            f"{', '.join(SHIPPED_MODELS)})")


def require_checkpoint(path: str | os.PathLike) -> Path:
    """``resolve_checkpoint``, checked first of all: a path that does not exist is a
    CheckpointError saying so (not a later complaint about a file missing inside it)."""
    p = resolve_checkpoint(path)
    if not p.exists():
        raise CheckpointError(missing_path_message(path))
    return p


_OWN_FILES = re.compile(r"^(config\.json|model\.safetensors(\.index\.json)?|model-\d{5}-of-\d{5}\.safetensors)$")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or written. One line, says what and where."""


# ------------------------------------------------------------------ name mapping
def to_hf_state_dict(model: torch.nn.Module, expert_layout: str = "per_expert") -> dict[str, torch.Tensor]:
    """Our state dict in Hugging Face names and layout (tensors are not copied unless needed)."""
    if expert_layout not in ("per_expert", "fused"):
        raise ValueError(f"expert_layout must be 'per_expert' or 'fused', got {expert_layout!r}")
    cfg: ModelConfig = model.config
    out: dict[str, torch.Tensor] = {}
    for name, t in model.state_dict().items():
        if cfg.tie_word_embeddings and name == "lm_head.weight":
            continue
        if expert_layout == "per_expert" and name.endswith("mlp.experts.gate_up_proj"):
            prefix, inter = name[: -len("gate_up_proj")], t.shape[1] // 2
            for j in range(t.shape[0]):
                out[f"{prefix}{j}.gate_proj.weight"] = t[j, :inter]
                out[f"{prefix}{j}.up_proj.weight"] = t[j, inter:]
        elif expert_layout == "per_expert" and name.endswith("mlp.experts.down_proj"):
            prefix = name[: -len("down_proj")]
            for j in range(t.shape[0]):
                out[f"{prefix}{j}.down_proj.weight"] = t[j]
        else:
            out[name] = t
    if cfg.is_moe_model:
        for k in range(cfg.num_nextn_predict_layers):
            layer = f"model.layers.{cfg.num_hidden_layers + k}."
            out[layer + "embed_tokens.weight"] = model.model.embed_tokens.weight
            out[layer + "shared_head.head.weight"] = model.lm_head.weight
    return out


def from_hf_state_dict(tensors: dict[str, torch.Tensor], cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """Hugging Face names/layouts (per-expert or fused, FP8 or not) -> our state dict."""
    tensors = _dequantize_fp8(tensors, fp8_block_size(cfg))
    out: dict[str, torch.Tensor] = {}
    experts: dict[str, dict[int, dict[str, torch.Tensor]]] = {}
    per_expert = re.compile(r"^(.*\.mlp\.experts\.)(\d+)\.(gate_proj|up_proj|down_proj)\.weight$")
    mtp_shared = re.compile(r"^model\.layers\.(\d+)\.(embed_tokens|shared_head\.head)\.weight$")
    for name, t in tensors.items():
        if name.endswith("rotary_emb.inv_freq"):
            continue  # recomputed from the config
        m = mtp_shared.match(name)
        if m and int(m.group(1)) >= cfg.num_hidden_layers:
            continue  # copies of the shared embedding / head
        m = per_expert.match(name)
        if m:
            experts.setdefault(m.group(1), {}).setdefault(int(m.group(2)), {})[m.group(3)] = t
            continue
        out[name] = t
    for prefix, by_index in experts.items():
        n = len(by_index)
        if sorted(by_index) != list(range(n)) or any(len(v) != 3 for v in by_index.values()):
            raise CheckpointError(f"incomplete per-expert tensors under {prefix}* (need gate/up/down for experts 0..{n - 1})")
        out[prefix + "gate_up_proj"] = torch.stack(
            [torch.cat([by_index[j]["gate_proj"], by_index[j]["up_proj"]], dim=0) for j in range(n)]
        )
        out[prefix + "down_proj"] = torch.stack([by_index[j]["down_proj"] for j in range(n)])
    if cfg.tie_word_embeddings:
        out.pop("lm_head.weight", None)
    return out


def fp8_block_size(cfg: ModelConfig) -> tuple[int, int]:
    """(rows, cols) of one FP8 scale block: ``quantization_config.weight_block_size`` of
    config.json, or DeepSeek-V3/R1's 128×128 when the config does not say (SPEC §9)."""
    qc = cfg.quantization_config or {}
    if not isinstance(qc, dict):
        raise CheckpointError(f"config.json quantization_config must be an object, got {qc!r}")
    block = qc.get("weight_block_size", FP8_BLOCK_SIZE)
    if (not isinstance(block, (list, tuple)) or len(block) != 2
            or not all(isinstance(b, int) and not isinstance(b, bool) and b > 0 for b in block)):
        raise CheckpointError(f"config.json quantization_config.weight_block_size must be two positive integers "
                              f"[rows, cols], got {block!r}")
    return int(block[0]), int(block[1])


def _dequantize_fp8(tensors: dict[str, torch.Tensor],
                    block: tuple[int, int] = FP8_BLOCK_SIZE) -> dict[str, torch.Tensor]:
    """``weight * weight_scale_inv`` per ``block`` (rows, cols); a dimension that is not a
    multiple of the block ends in a partial block, so the block size cannot be inferred
    from the scale's shape (V3's 576-row kv_a_proj_with_mqa has 5 row blocks, not 576/5)."""
    scales = {k[: -len("_scale_inv")]: v for k, v in tensors.items() if k.endswith(".weight_scale_inv")}
    if not scales:
        return tensors
    br, bc = block
    out = {}
    for name, t in tensors.items():
        if name.endswith(".weight_scale_inv"):
            continue
        if name in scales:
            s = scales[name]
            if t.dim() != 2 or s.dim() != 2:
                raise CheckpointError(f"FP8 weight {name} {tuple(t.shape)} and its scale {tuple(s.shape)} must both "
                                      f"be matrices")
            rows, cols = t.shape
            want = (-(-rows // br), -(-cols // bc))
            if tuple(s.shape) != want:
                raise CheckpointError(f"FP8 weight {name} {tuple(t.shape)} has a weight_scale_inv of shape "
                                      f"{tuple(s.shape)}; {br}×{bc} blocks (quantization_config.weight_block_size) "
                                      f"need {want}")
            s = s.float().repeat_interleave(br, 0)[:rows].repeat_interleave(bc, 1)[:, :cols]
            t = t.float() * s
        out[name] = t
    return out


# ------------------------------------------------------------------------- save
def save_model(model: torch.nn.Module, path: str | os.PathLike, *, tokenizer=None,
               max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES, expert_layout: str = "per_expert",
               dtype: torch.dtype | None = None) -> Path:
    """Write ``model`` as a Hugging Face checkpoint directory, atomically.

    tokenizer: a directory whose tokenizer files are copied, or an object with
    ``save(dir)``. Existing files in ``path`` that are not part of a checkpoint
    (e.g. notes, training state) are kept.
    """
    path = Path(path)
    tensors = to_hf_state_dict(model, expert_layout)
    prepared: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, t in tensors.items():
        t = t.detach()
        if t.device.type != "cpu":
            t = t.cpu()
        if dtype is not None and t.is_floating_point() and not name.endswith("e_score_correction_bias"):
            t = t.to(dtype)
        # safetensors refuses shared or strided storage: copy views and duplicates.
        key = t.untyped_storage().data_ptr()
        if key in seen or not t.is_contiguous() or t.storage_offset() or t.numel() != t.untyped_storage().nbytes() // t.element_size():
            t = t.clone().contiguous()
        seen.add(t.untyped_storage().data_ptr())
        prepared[name] = t
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    try:
        cfg_dict = model.config.to_dict()
        if dtype is not None:
            cfg_dict["torch_dtype"] = str(dtype).removeprefix("torch.")
        _write_json(tmp / CONFIG_NAME, cfg_dict)
        _write_shards(prepared, tmp, max_shard_bytes)
        if tokenizer is not None:
            if hasattr(tokenizer, "save"):
                tokenizer.save(tmp)
            else:
                for fname in TOKENIZER_FILES:
                    src = Path(tokenizer) / fname
                    if src.is_file():
                        shutil.copy2(src, tmp / fname)
        if path.exists():
            if not path.is_dir():
                raise CheckpointError(f"{path} exists and is not a directory")
            for item in path.iterdir():  # carry over what is not ours to replace
                if not _OWN_FILES.match(item.name) and not (tmp / item.name).exists():
                    (shutil.copytree if item.is_dir() else shutil.copy2)(item, tmp / item.name)
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.old-", dir=path.parent))
            old.rmdir()
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def _write_shards(tensors: dict[str, torch.Tensor], out: Path, max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, t in tensors.items():
        n = t.numel() * t.element_size()
        if shards[-1] and size + n > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += n
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(out / WEIGHTS_NAME), metadata=meta)
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        fname = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(out / fname), metadata=meta)
        weight_map.update({name: fname for name in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    _write_json(out / INDEX_NAME, {"metadata": {"total_size": total}, "weight_map": weight_map})


# ------------------------------------------------------------------------- load
def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint directory (single file or sharded with an index)."""
    index = path / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise CheckpointError(f"{index} is not a valid safetensors index ({e.__class__.__name__}: {e})") from None
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise CheckpointError(f"{index}: 'weight_map' must map tensor names to shard file names")
        files = sorted(set(weight_map.values()))
        bad = next((f for f in files if Path(f).name != f or f in ("", ".", "..")), None)
        if bad is not None:
            raise CheckpointError(f"{index}: shard name {bad!r} is not a plain file name in the checkpoint directory")
    elif (path / WEIGHTS_NAME).is_file():
        files = [WEIGHTS_NAME]
    else:
        raise CheckpointError(f"no {WEIGHTS_NAME} or {INDEX_NAME} in {path}; is this a model checkpoint directory?")
    tensors: dict[str, torch.Tensor] = {}
    for fname in files:
        f = path / fname
        if not f.is_file():
            raise CheckpointError(f"checkpoint shard {f} is missing (listed in {INDEX_NAME})")
        try:
            tensors.update(load_file(str(f)))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            msg = str(e).splitlines()[0] if str(e) else e.__class__.__name__
            raise CheckpointError(f"cannot read {f}: corrupt or truncated safetensors file ({msg})") from None
    return tensors


def load_config(path: str | os.PathLike) -> ModelConfig:
    path = require_checkpoint(path)
    if not path.is_dir():
        raise CheckpointError(f"{path} is not a directory; give the checkpoint directory that holds {CONFIG_NAME}")
    if not (path / CONFIG_NAME).is_file():
        raise CheckpointError(f"no {CONFIG_NAME} in {path}; is this a model checkpoint directory?")
    return ModelConfig.from_json(path / CONFIG_NAME)


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu",
               dtype: torch.dtype | None = torch.float32) -> torch.nn.Module:
    """Build the model described by ``path/config.json`` and load its weights.

    Missing MTP weights (transformers does not save them) are initialised randomly with a
    warning; any other missing, unexpected or mis-shaped tensor is an error. ``path`` may
    name a shipped model (``SHIPPED_MODELS``).
    """
    path = require_checkpoint(path)
    cfg = load_config(path)
    tensors = from_hf_state_dict(read_tensors(path), cfg)
    model = build_model(cfg, device="meta")
    expected = model.state_dict()
    missing = [k for k in expected if k not in tensors]
    if cfg.tie_word_embeddings:
        missing = [k for k in missing if k != "lm_head.weight"]
    unexpected = [k for k in tensors if k not in expected]
    mtp_prefixes = tuple(f"model.layers.{cfg.num_hidden_layers + k}." for k in range(cfg.num_nextn_predict_layers))
    fresh_mtp = bool(mtp_prefixes) and all(k.startswith(mtp_prefixes) for k in missing) and missing
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} tensor(s) not in the model described by config.json, e.g. {unexpected[:3]}")
    if missing and not fresh_mtp:
        raise CheckpointError(f"{path}: {len(missing)} tensor(s) missing from the checkpoint, e.g. {missing[:3]}")
    for k, t in tensors.items():
        if tuple(t.shape) != tuple(expected[k].shape):
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(t.shape)}, config.json implies {tuple(expected[k].shape)}")
        if expected[k].is_floating_point() and not t.is_floating_point():
            raise CheckpointError(f"{path}: tensor {k} has dtype {t.dtype}; a floating-point weight is expected")
    target_dtype = dtype
    state = {}
    for k, t in tensors.items():
        want = torch.float32 if k.endswith("e_score_correction_bias") else (target_dtype or t.dtype)
        state[k] = t.to(device=device, dtype=want if t.is_floating_point() else t.dtype)
    model.load_state_dict(state, strict=False, assign=True)
    if cfg.tie_word_embeddings:
        model.lm_head.weight = model.model.embed_tokens.weight
    if fresh_mtp:
        log.warning("%s has no MTP weights (transformers drops them); MTP layers initialised randomly", path)
        from .model.deepseek import MTPLayer

        for k in range(cfg.num_nextn_predict_layers):
            idx = cfg.num_hidden_layers + k
            with torch.device(device):
                layer = MTPLayer(cfg, idx)
            init_weights(layer, cfg.initializer_range)
            model.model.layers[idx] = layer.to(target_dtype) if target_dtype else layer
    _materialize_buffers(model, device)
    return model


def _materialize_buffers(model: torch.nn.Module, device) -> None:
    """Non-persistent buffers (RoPE frequencies, expert-load counters) are not in the
    checkpoint; rebuild them on the target device."""
    cfg = model.config
    for m in model.modules():
        if isinstance(m, Rotary) and m.inv_freq.is_meta:
            dim = cfg.qk_rope_head_dim if cfg.is_moe_model else cfg.dense_head_dim
            m.inv_freq = Rotary(cfg, dim, m.interleave).inv_freq.to(device)
        for name, buf in list(m.named_buffers(recurse=False)):
            if buf.is_meta:
                setattr(m, name, torch.zeros(buf.shape, dtype=buf.dtype, device=device))


__all__ = ["CheckpointError", "ConfigError", "load_model", "save_model", "load_config", "read_tensors"]
