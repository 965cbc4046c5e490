"""Model accounting: parameters (total / active), KV-cache bytes, FLOPs and training cost.

Everything here answers the questions of SPEC §1-§2 for any ``ModelConfig``:

* **Parameters** (SPEC §1: "671B parameters, 37B active per token"). Counted from the
  actual parameter shapes of the model built on the ``meta`` device (no memory is
  allocated), so the numbers always agree with ``r1lab.model``. Every parameter is
  classified by its Hugging Face name into a category. The MTP module (SPEC §2, stored
  as layers ``num_hidden_layers, …``) is reported separately: the published 671B is
  the main model; its shared embedding and output head are not counted again.
  *Active* parameters per token = everything in the main model except the routed
  experts, plus routed experts × ``num_experts_per_tok / n_routed_experts``.
* **KV cache** (SPEC §2, absorbed MLA): (kv_lora_rank + qk_rope_head_dim) numbers per
  token and layer (576 for V3) instead of 2·heads·v_head_dim = 2·128·128 = 32768 for
  plain multi-head attention (57× less). Dense students: grouped-query attention.
* **FLOPs per token**: 2 × active matmul parameters (the embedding lookup is free, the
  output head is not) plus attention scores/values against ``context`` positions.
  Training = 3 × forward (forward + backward ≈ 6N per token).
* **Training cost** (SPEC §1: 2.788M H800 GPU-hours ≈ $5.576M at $2/GPU-hour, of which
  2.664M pre-training on 14.8T tokens): hours = training FLOPs / (dense peak × MFU).

Conventions, stated once:
  - Attention FLOPs are counted for a token attending all ``context`` positions (the
    PaLM/Chinchilla MFU convention); causal training does about half of that work.
  - The cost estimate includes the MTP module's extra forward/backward when the config
    has one (DeepSeek-V3 was pre-trained with MTP depth 1); it adds about 4%.
  - Peak FLOP/s are dense (no 2:4 sparsity) tensor-core numbers.
  - Default MFU: 40% of the bf16 peak (Llama 3 reports 38-43% bf16 MFU on 16K H100s),
    20% of the fp8 peak (FP8 mixed precision runs only the GEMMs in FP8). DeepSeek-V3's
    own figures imply ≈45% of the H800 bf16 peak (≈23% of its fp8 peak): see
    ``training_cost(...)["reference"]``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import re

from .config import ConfigError, ModelConfig

__all__ = [
    "CATEGORIES", "GPUS", "DEFAULT_MFU", "DEEPSEEK_V3_REPORT",
    "count_parameters", "kv_cache_bytes_per_token", "flops_per_token", "training_cost",
    "report", "format_report",
]

# Order used in breakdowns and tables. `mtp` holds every parameter of layers with
# index >= num_hidden_layers; `other` catches anything unrecognised (normally 0).
CATEGORIES = (
    "embeddings", "attention", "dense_ffn", "shared_experts", "routed_experts", "router",
    "norms", "head", "mtp", "other",
)
MAIN_CATEGORIES = tuple(c for c in CATEGORIES if c != "mtp")
# Inside the MTP module: the block's parts as above, plus its own norms and eh_proj.
MTP_CATEGORIES = ("attention", "dense_ffn", "shared_experts", "routed_experts", "router", "norms", "projection", "other")

# Dense (no sparsity) tensor-core peak FLOP/s per GPU. H800 = H100 SXM compute with
# export-limited interconnect; H200 = H100 compute with more/faster memory.
GPUS: dict[str, dict[str, float]] = {
    "h800": {"bf16": 989e12, "fp8": 1979e12},
    "h100": {"bf16": 989e12, "fp8": 1979e12},
    "h200": {"bf16": 989e12, "fp8": 1979e12},
    "a100": {"bf16": 312e12},
    "b200": {"bf16": 2250e12, "fp8": 4500e12},
    "rtx4090": {"bf16": 165e12},
}
DEFAULT_MFU = {"bf16": 0.40, "fp8": 0.20}
_MFU_WHY = {
    "bf16": "40% of the dense bf16 peak (Llama 3 reports 38-43% bf16 MFU on 16K H100s)",
    "fp8": "20% of the dense fp8 peak (FP8 mixed precision runs only the GEMMs in fp8)",
}

# SPEC §1: the DeepSeek-V3 technical report's training cost.
DEEPSEEK_V3_REPORT = {
    "source": "DeepSeek-V3 technical report (SPEC §1)",
    "gpu": "h800",
    "tokens": 14.8e12,
    "gpu_hours": 2.788e6,
    "pretraining_gpu_hours": 2.664e6,
    "context_extension_gpu_hours": 0.119e6,
    "post_training_gpu_hours": 0.005e6,
    "usd": 5.576e6,
    "usd_per_hour": 2.0,
    "pretraining_context": 4096,
}
# Fields that make a config "DeepSeek-V3-shaped" (R1 included) for the comparison.
_V3_SHAPE = dict(
    model_type="deepseek_v3", vocab_size=129280, hidden_size=7168, intermediate_size=18432,
    num_hidden_layers=61, num_attention_heads=128, q_lora_rank=1536, kv_lora_rank=512,
    qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128, n_routed_experts=256,
    n_shared_experts=1, num_experts_per_tok=8, moe_intermediate_size=2048, first_k_dense_replace=3,
)

_LAYER = re.compile(r"^model\.layers\.(\d+)\.(.+)$")


# ------------------------------------------------------------------------ parameters
def _classify_layer_param(rest: str) -> str:
    """Category of a parameter inside a transformer block (name after ``layers.{i}.``)."""
    if rest.startswith("self_attn."):
        return "attention"  # includes q_a_layernorm / kv_a_layernorm
    if rest.startswith("mlp.experts."):
        return "routed_experts"
    if rest.startswith("mlp.shared_experts."):
        return "shared_experts"
    if rest.startswith("mlp.gate."):
        return "router"  # mlp.gate.weight (dense layers use mlp.gate_proj: no dot after 'gate')
    if rest.startswith("mlp."):
        return "dense_ffn"
    if rest.startswith(("input_layernorm.", "post_attention_layernorm.")):
        return "norms"
    return "other"


def _classify_mtp_param(rest: str) -> str:
    if rest.startswith(("enorm.", "hnorm.", "shared_head.norm.")):
        return "norms"
    if rest.startswith("eh_proj."):
        return "projection"
    return _classify_layer_param(rest)


def _cache_key(cfg: ModelConfig) -> str:
    return json.dumps(dataclasses.asdict(cfg), sort_keys=True, default=repr)


_COUNT_CACHE: dict[str, dict] = {}


def count_parameters(cfg: ModelConfig) -> dict:
    """Parameters of ``cfg``'s model by category, from the meta-device model's shapes.

    Returns (all ints unless noted):
      breakdown          {category: count} over CATEGORIES (``mtp`` = MTP module, unique params)
      total              main model (everything but ``mtp``)
      mtp                MTP module params, not counting the shared embedding / head
      total_with_mtp     total + mtp (= sum of numel over model.parameters())
      active             per token: main model with routed experts × K/E
      active_breakdown   {category: active count} (no ``mtp``)
      mtp_breakdown      the MTP module by MTP_CATEGORIES; mtp_active likewise with K/E
      matmul_active      active weights used in matmuls (no embedding lookup, no norms,
                         no biases), plus the output head even when tied: for FLOPs
      mtp_matmul_active  the same for the MTP module, including its (shared) head matmul
      per_expert         parameters of one routed expert (0 for dense models)
      routed_fraction    K/E (float; 1.0 for dense models)
      layers             {"dense", "moe", "mtp"} layer counts
      tied_embeddings    bool
      buffers            persistent buffers saved in checkpoints (router biases), not counted
    """
    key = _cache_key(cfg)
    if key not in _COUNT_CACHE:
        if len(_COUNT_CACHE) > 32:
            _COUNT_CACHE.clear()
        _COUNT_CACHE[key] = _count_parameters(cfg)
    return copy.deepcopy(_COUNT_CACHE[key])


def _count_parameters(cfg: ModelConfig) -> dict:
    from .model import build_model

    model = build_model(cfg, device="meta")
    L = cfg.num_hidden_layers
    moe_layers = [i for i in range(L) if cfg.is_moe_layer(i)]
    E = cfg.n_routed_experts or 0
    K = cfg.num_experts_per_tok or 0
    routed_fraction = (K / E) if (moe_layers and E) else 1.0

    def active_share(cat: str, n: int) -> int:
        # Every routed expert has the same shape, so n·K/E is an integer in practice.
        return round(n * K / E) if (cat == "routed_experts" and E) else n

    breakdown = dict.fromkeys(CATEGORIES, 0)
    mtp_breakdown = dict.fromkeys(MTP_CATEGORIES, 0)
    matmul_active = 0
    mtp_matmul_active = 0
    # named_parameters() drops duplicates, so a tied lm_head appears only as embed_tokens.
    for name, p in model.named_parameters():
        n = p.numel()
        m = _LAYER.match(name)
        if m is not None and int(m.group(1)) >= L:
            cat = _classify_mtp_param(m.group(2))
            mtp_breakdown[cat] += n
            breakdown["mtp"] += n
            if p.ndim >= 2:
                mtp_matmul_active += active_share(cat, n)
            continue
        if m is not None:
            cat = _classify_layer_param(m.group(2))
        elif name.startswith("model.embed_tokens."):
            cat = "embeddings"
        elif name.startswith("lm_head."):
            cat = "head"
        elif name.startswith("model.norm."):
            cat = "norms"
        else:
            cat = "other"
        breakdown[cat] += n
        if p.ndim >= 2 and cat != "embeddings":
            matmul_active += active_share(cat, n)

    head_matmul = cfg.vocab_size * cfg.hidden_size  # the output projection, tied or not
    if cfg.tie_word_embeddings:
        matmul_active += head_matmul
    n_mtp = len(model.model.layers) - L
    mtp_matmul_active += n_mtp * head_matmul  # each MTP depth applies the shared head

    total = sum(breakdown[c] for c in MAIN_CATEGORIES)
    active_breakdown = {c: active_share(c, breakdown[c]) for c in MAIN_CATEGORIES}
    mtp_active = sum(active_share(c, n) for c, n in mtp_breakdown.items())
    state_keys = set(model.state_dict().keys())
    buffers = sum(b.numel() for name, b in model.named_buffers() if name in state_keys)
    per_expert = breakdown["routed_experts"] // (E * len(moe_layers)) if (moe_layers and E) else 0
    return {
        "breakdown": breakdown,
        "total": total,
        "mtp": breakdown["mtp"],
        "total_with_mtp": total + breakdown["mtp"],
        "active": sum(active_breakdown.values()),
        "active_breakdown": active_breakdown,
        "mtp_breakdown": mtp_breakdown,
        "mtp_active": mtp_active,
        "matmul_active": matmul_active,
        "mtp_matmul_active": mtp_matmul_active,
        "per_expert": per_expert,
        "routed_fraction": routed_fraction,
        "layers": {"dense": L - len(moe_layers), "moe": len(moe_layers), "mtp": n_mtp},
        "tied_embeddings": bool(cfg.tie_word_embeddings),
        "buffers": buffers,
    }


# -------------------------------------------------------------------------- KV cache
def kv_cache_bytes_per_token(cfg: ModelConfig, dtype_bytes: float = 2) -> dict:
    """KV-cache bytes per token (all main layers; the MTP module is not included).

    deepseek_v3 (SPEC §2):
      absorbed_mla_bytes     (kv_lora_rank + qk_rope_head_dim) × layers × bytes: what the
                             absorbed-form cache stores (c_kv and the shared k_rope)
      mha_equivalent_bytes   2 × heads × v_head_dim × layers × bytes: a plain MHA model
                             of the same width (SPEC's 2·128·128 = 32768 per layer)
      expanded_bytes         heads × (qk_nope + qk_rope + v_head_dim) × layers × bytes:
                             caching the training form's per-head keys and values
      ratio                  mha_equivalent / absorbed (57× for V3); expanded_ratio likewise
    dense (qwen2/llama):
      gqa_bytes              2 × kv_heads × head_dim × layers × bytes
      mha_equivalent_bytes   2 × heads × head_dim × layers × bytes; ratio = mha / gqa
    ``bytes_per_token`` is always the cache this model actually keeps.
    """
    if not (isinstance(dtype_bytes, (int, float)) and dtype_bytes > 0):
        raise ConfigError(f"dtype_bytes must be a positive number, got {dtype_bytes!r}")
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads

    def b(numbers_per_layer: int):
        v = numbers_per_layer * L * dtype_bytes
        return int(v) if float(v).is_integer() else v

    if cfg.is_moe_model:
        latent = cfg.kv_lora_rank + cfg.qk_rope_head_dim
        mha = 2 * H * cfg.v_head_dim
        expanded = H * (cfg.qk_nope_head_dim + cfg.qk_rope_head_dim + cfg.v_head_dim)
        return {
            "kind": "mla",
            "dtype_bytes": dtype_bytes,
            "layers": L,
            "numbers_per_layer": latent,
            "absorbed_mla_bytes": b(latent),
            "mha_numbers_per_layer": mha,
            "mha_equivalent_bytes": b(mha),
            "expanded_numbers_per_layer": expanded,
            "expanded_bytes": b(expanded),
            "bytes_per_token": b(latent),
            "ratio": mha / latent,
            "expanded_ratio": expanded / latent,
        }
    d, kv = cfg.dense_head_dim, cfg.kv_heads
    gqa, mha = 2 * kv * d, 2 * H * d
    return {
        "kind": "gqa" if kv < H else "mha",
        "dtype_bytes": dtype_bytes,
        "layers": L,
        "numbers_per_layer": gqa,
        "gqa_bytes": b(gqa),
        "mha_numbers_per_layer": mha,
        "mha_equivalent_bytes": b(mha),
        "bytes_per_token": b(gqa),
        "ratio": mha / gqa,
    }


# ----------------------------------------------------------------------------- FLOPs
def _attention_flops_per_layer(cfg: ModelConfig, context: int) -> int:
    """QK^T and PV for one token against ``context`` positions, all heads."""
    H = cfg.num_attention_heads
    if cfg.is_moe_model:  # training (expanded) form of MLA
        return 2 * H * context * (cfg.qk_head_dim + cfg.v_head_dim)
    return 2 * H * context * 2 * cfg.dense_head_dim


def flops_per_token(cfg: ModelConfig, context: int) -> dict:
    """Forward FLOPs per token at ``context`` (see the module docstring's conventions).

    forward   = matmul + attention, with matmul = 2 × active matmul weights (lm_head
                included, embedding lookup excluded) and attention = layers × 2·H·context·
                (qk_head_dim + v_head_dim) for MLA, 2·H·context·2·head_dim for dense.
    training  = 3 × forward.
    mtp_forward / forward_with_mtp / training_with_mtp: the MTP module's extra work
    (its block, eh_proj and the shared head), 0 without MTP.
    """
    if not isinstance(context, int) or isinstance(context, bool) or context <= 0:
        raise ConfigError(f"context must be a positive integer, got {context!r}")
    p = count_parameters(cfg)
    per_layer = _attention_flops_per_layer(cfg, context)
    matmul = 2 * p["matmul_active"]
    attention = cfg.num_hidden_layers * per_layer
    forward = matmul + attention
    mtp_forward = 2 * p["mtp_matmul_active"] + p["layers"]["mtp"] * per_layer
    return {
        "context": context,
        "matmul_params": p["matmul_active"],
        "matmul": matmul,
        "attention_per_layer": per_layer,
        "attention": attention,
        "forward": forward,
        "training": 3 * forward,
        "mtp_forward": mtp_forward,
        "forward_with_mtp": forward + mtp_forward,
        "training_with_mtp": 3 * (forward + mtp_forward),
    }


# ------------------------------------------------------------------------------ cost
def _is_v3_shaped(cfg: ModelConfig) -> bool:
    return all(getattr(cfg, k) == v for k, v in _V3_SHAPE.items())


def _peak(gpu: str, precision: str) -> tuple[str, float]:
    g = str(gpu).lower()
    if g not in GPUS:
        raise ConfigError(f"unknown gpu {gpu!r}; choose one of: {', '.join(GPUS)}")
    p = str(precision).lower()
    if p not in GPUS[g]:
        raise ConfigError(f"gpu {g!r} has no {precision!r} peak in the table; available: {', '.join(GPUS[g])}")
    return g, GPUS[g][p]


def training_cost(cfg: ModelConfig, tokens: float, gpu: str = "h800", mfu: float | None = None,
                  usd_per_hour: float = 2.0, context: int = 4096, precision: str = "bf16",
                  include_mtp: bool = True) -> dict:
    """GPU-hours and dollars to train ``cfg`` on ``tokens`` tokens.

    hours = training FLOPs per token × tokens / (dense peak × mfu) / 3600, where training
    FLOPs per token = 3 × forward at ``context`` (including attention, and the MTP module
    when ``include_mtp`` and the config has one). ``mfu=None`` uses DEFAULT_MFU for the
    precision (bf16 0.40, fp8 0.20). For DeepSeek-V3-shaped configs ``reference`` carries
    the report's figures (SPEC §1) and the MFU they imply under the same FLOP count.
    """
    if not (isinstance(tokens, (int, float)) and not isinstance(tokens, bool) and tokens > 0):
        raise ConfigError(f"tokens must be a positive number, got {tokens!r}")
    if not (isinstance(usd_per_hour, (int, float)) and usd_per_hour >= 0):
        raise ConfigError(f"usd_per_hour must be >= 0, got {usd_per_hour!r}")
    precision = str(precision).lower()
    gpu, peak = _peak(gpu, precision)
    if mfu is None:
        mfu = DEFAULT_MFU[precision]
        mfu_note = _MFU_WHY[precision]
    else:
        if not (isinstance(mfu, (int, float)) and 0 < mfu <= 1):
            raise ConfigError(f"mfu must be in (0, 1], got {mfu!r}")
        mfu_note = f"{mfu:.0%} of the dense {precision} peak (given)"
    f = flops_per_token(cfg, context)
    with_mtp = include_mtp and f["mtp_forward"] > 0
    per_token = f["training_with_mtp"] if with_mtp else f["training"]
    total_flops = per_token * float(tokens)
    hours = total_flops / (peak * mfu) / 3600.0
    usd = hours * usd_per_hour
    assumptions = (
        f"{gpu} dense {precision} peak {peak / 1e12:.0f} TFLOP/s; MFU {mfu_note}; "
        f"{_flops(per_token)}/token = 3 x forward at context {context} "
        f"(attention over the full context{', MTP module included' if with_mtp else ''}); "
        f"${usd_per_hour:.2f}/GPU-hour"
    )
    out = {
        "gpu": gpu,
        "precision": precision,
        "tokens": float(tokens),
        "context": context,
        "peak_flops": peak,
        "mfu": float(mfu),
        "flops_per_token": per_token,
        "includes_mtp": with_mtp,
        "total_flops": total_flops,
        "gpu_hours": hours,
        "usd_per_hour": float(usd_per_hour),
        "usd": usd,
        "assumptions": assumptions,
        "reference": None,
    }
    if _is_v3_shaped(cfg):
        ref = dict(DEEPSEEK_V3_REPORT)
        # MFU implied by the report: pre-training hours for 14.8T tokens at its 4K context.
        f4k = flops_per_token(cfg, ref["pretraining_context"])
        ref_flops = (f4k["training_with_mtp"] if cfg.num_nextn_predict_layers else f4k["training"]) * ref["tokens"]
        ref["implied_mfu_bf16"] = ref_flops / (ref["pretraining_gpu_hours"] * 3600 * GPUS["h800"]["bf16"])
        ref["implied_mfu_fp8"] = ref_flops / (ref["pretraining_gpu_hours"] * 3600 * GPUS["h800"]["fp8"])
        if gpu in ("h800", "h100", "h200") and math.isclose(float(tokens), ref["tokens"], rel_tol=0.01):
            ref["estimate_vs_report"] = hours / ref["gpu_hours"]
        out["reference"] = ref
    return out


# ---------------------------------------------------------------------------- report
def _config_summary(cfg: ModelConfig) -> dict:
    s = {
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.hidden_size,
        "num_hidden_layers": cfg.num_hidden_layers,
        "num_attention_heads": cfg.num_attention_heads,
        "tie_word_embeddings": bool(cfg.tie_word_embeddings),
    }
    if cfg.is_moe_model:
        s.update(
            kv_lora_rank=cfg.kv_lora_rank, qk_rope_head_dim=cfg.qk_rope_head_dim,
            n_routed_experts=cfg.n_routed_experts, n_shared_experts=cfg.n_shared_experts,
            num_experts_per_tok=cfg.num_experts_per_tok, first_k_dense_replace=cfg.first_k_dense_replace,
            num_nextn_predict_layers=cfg.num_nextn_predict_layers, deepseek_v3_shaped=_is_v3_shaped(cfg),
        )
    else:
        s.update(num_key_value_heads=cfg.kv_heads, head_dim=cfg.dense_head_dim)
    return s


def report(cfg: ModelConfig, context: int = 4096, tokens: float | None = None, gpu: str = "h800",
           mfu: float | None = None, usd_per_hour: float = 2.0, precision: str = "bf16") -> dict:
    """All of the above as one JSON-serialisable dict:
    {"config", "parameters", "kv_cache" (bf16), "flops", "cost" (None without ``tokens``)}."""
    rep = {
        "config": _config_summary(cfg),
        "parameters": count_parameters(cfg),
        "kv_cache": kv_cache_bytes_per_token(cfg, dtype_bytes=2),
        "flops": flops_per_token(cfg, context),
        "cost": None,
    }
    if tokens is not None:
        rep["cost"] = training_cost(cfg, tokens, gpu=gpu, mfu=mfu, usd_per_hour=usd_per_hour, context=context,
                                    precision=precision)
    return rep


# ------------------------------------------------------------------------ formatting
def _h(x: float, digits: int = 1, unit: str = "") -> str:
    """Counts: 671.0B, 37.5B, 4.8M, 12.3K. With a unit, SI prefixes: 640B, 2.0kB, 70.3kB, 4.0MB, 1.2GB."""
    prefixes = (((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")) if unit
                else ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")))
    for div, suf in prefixes:
        if abs(x) >= div:
            return f"{x / div:.{digits}f}{suf}{unit}"
    return (f"{x:.0f}" if float(x).is_integer() else f"{x:.{digits}f}") + unit


def _bytes(x: float) -> str:
    for div, suf in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if x >= div:
            return f"{x:,.0f} B ({x / div:.1f} {suf})"
    return f"{x:,.0f} B"


def _flops(x: float) -> str:
    for div, suf in ((1e15, "PFLOP"), (1e12, "TFLOP"), (1e9, "GFLOP"), (1e6, "MFLOP"), (1e3, "KFLOP")):
        if x >= div:
            return f"{x / div:.2f} {suf}"
    return f"{x:.0f} FLOP"


def format_report(rep: dict, name: str) -> str:
    """A plain-text, aligned table of a ``report()`` dict."""
    c, p, kv, f, cost = rep["config"], rep["parameters"], rep["kv_cache"], rep["flops"], rep.get("cost")
    lines: list[str] = []
    layers = p["layers"]
    desc = f"{c['model_type']}, {c['num_hidden_layers']} layers"
    if c["model_type"] == "deepseek_v3":
        desc += (f" ({layers['dense']} dense + {layers['moe']} MoE), {c['n_routed_experts']} routed experts"
                 f" top-{c['num_experts_per_tok']}, {c['n_shared_experts']} shared")
        if layers["mtp"]:
            desc += f", MTP depth {layers['mtp']}"
    else:
        desc += f", {c['num_attention_heads']} heads / {c['num_key_value_heads']} KV heads"
    if c["tie_word_embeddings"]:
        desc += ", tied embeddings"
    lines.append(f"{name}: {desc}")
    lines.append("")

    w = 22
    lines.append(f"{'parameters':<{w}}{'total':>10}{'active':>10}{'share':>8}")
    total, active = p["total"], p["active"]
    for cat in MAIN_CATEGORIES:
        n, a = p["breakdown"][cat], p["active_breakdown"][cat]
        if n == 0 and cat in ("other", "router", "routed_experts", "shared_experts", "dense_ffn"):
            continue
        if cat == "head" and n == 0:
            lines.append(f"  {'head':<{w - 2}}{'tied':>10}{'tied':>10}")
            continue
        note = ""
        if cat == "routed_experts" and n:
            note = f"  ({c['num_experts_per_tok']}/{c['n_routed_experts']} per token, {_h(p['per_expert'])} each)"
        lines.append(f"  {cat:<{w - 2}}{_h(n):>10}{_h(a):>10}{a / active:>8.1%}{note}")
    lines.append("  " + "-" * (w - 2 + 28))
    lines.append(f"  {'main model':<{w - 2}}{_h(total):>10}{_h(active):>10}{'':>8}  active/total {active / total:.1%}")
    if p["mtp"]:
        lines.append(f"  {'MTP module (unique)':<{w - 2}}{_h(p['mtp']):>10}{_h(p['mtp_active']):>10}"
                     f"{'':>8}  embedding and head shared with the main model")
        lines.append(f"  {'total with MTP':<{w - 2}}{_h(p['total_with_mtp']):>10}")
    lines.append("")

    lines.append(f"KV cache per token (bf16, {kv['layers']} layers, main model)")
    if kv["kind"] == "mla":
        rows = [
            (f"absorbed MLA ({c['kv_lora_rank']}+{c['qk_rope_head_dim']} per layer)", kv["absorbed_mla_bytes"], ""),
            (f"MHA equivalent ({kv['mha_numbers_per_layer']} per layer)", kv["mha_equivalent_bytes"],
             f"{kv['ratio']:.1f}x the MLA cache"),
            (f"expanded MLA keys+values ({kv['expanded_numbers_per_layer']})", kv["expanded_bytes"],
             f"{kv['expanded_ratio']:.1f}x"),
        ]
    else:
        rows = [
            (f"{kv['kind'].upper()} ({c['num_key_value_heads']} KV heads, {kv['numbers_per_layer']} per layer)",
             kv["gqa_bytes"], ""),
            (f"MHA equivalent ({c['num_attention_heads']} heads, {kv['mha_numbers_per_layer']} per layer)",
             kv["mha_equivalent_bytes"], f"{kv['ratio']:.1f}x"),
        ]
    kw = max(len(r[0]) for r in rows) + 2
    for label, nbytes, note in rows:
        lines.append(f"  {label:<{kw}}{_bytes(nbytes):>26}  {note}".rstrip())
    lines.append("")

    lines.append(f"FLOPs per token (context {f['context']:,})")
    fw = 36
    lines.append(f"  {'matmul (2 x ' + _h(f['matmul_params']) + ' weights)':<{fw}}{_flops(f['matmul']):>14}")
    lines.append(f"  {'attention':<{fw}}{_flops(f['attention']):>14}")
    lines.append(f"  {'forward':<{fw}}{_flops(f['forward']):>14}")
    lines.append(f"  {'training (3 x forward)':<{fw}}{_flops(f['training']):>14}")
    if f["mtp_forward"]:
        lines.append(f"  {'MTP module, extra forward':<{fw}}{_flops(f['mtp_forward']):>14}")
        lines.append(f"  {'training with MTP':<{fw}}{_flops(f['training_with_mtp']):>14}")

    if cost:
        lines.append("")
        lines.append(f"training cost: {_h(cost['tokens'])} tokens on {cost['gpu']} ({cost['precision']})")
        lines.append(f"  {'GPU-hours':<{fw}}{_h(cost['gpu_hours'], 2)} GPU-hours")
        lines.append(f"  {'cost':<{fw}}${_h(cost['usd'], 2)} at ${cost['usd_per_hour']:.2f}/GPU-hour")
        lines.append(f"  {'training FLOPs':<{fw}}{cost['total_flops']:.3g} ({_flops(cost['flops_per_token'])}/token)")
        lines.append(f"  assumptions: {cost['assumptions']}")
        ref = cost.get("reference")
        if ref:
            line = (f"  DeepSeek-V3 report: {_h(ref['gpu_hours'], 3)} H800 GPU-hours, ${_h(ref['usd'], 3)} "
                    f"(pre-training {_h(ref['pretraining_gpu_hours'], 3)} on {_h(ref['tokens'])} tokens); "
                    f"implied MFU {ref['implied_mfu_bf16']:.0%} of bf16 peak ({ref['implied_mfu_fp8']:.0%} of fp8)")
            lines.append(line)
            if "estimate_vs_report" in ref:
                lines.append(f"  this estimate / report: {ref['estimate_vs_report']:.2f}x")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m r1lab.accounting PRESET [--tokens N] [--context C] [--gpu G] [--mfu M]``."""
    import argparse

    from .config import preset

    ap = argparse.ArgumentParser(prog="python -m r1lab.accounting")
    ap.add_argument("preset")
    ap.add_argument("--context", type=int, default=4096)
    ap.add_argument("--tokens", type=float)
    ap.add_argument("--gpu", default="h800")
    ap.add_argument("--mfu", type=float)
    ap.add_argument("--usd-per-hour", type=float, default=2.0)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args(argv)
    rep = report(preset(a.preset), context=a.context, tokens=a.tokens, gpu=a.gpu, mfu=a.mfu,
                 usd_per_hour=a.usd_per_hour)
    print(json.dumps(rep, indent=2) if a.json else format_report(rep, a.preset))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
