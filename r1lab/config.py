"""Model configuration: one dataclass whose fields are Hugging Face ``config.json`` keys.

A published ``config.json`` (DeepSeek-V3/R1, Qwen2, Llama) loads as is; anything we do
not understand is rejected with a one-line error naming the key. Architecture facts:
SPEC §2. Presets at the bottom of the file.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """A configuration value is wrong. The message is one line and names the field."""


MODEL_TYPES = ("deepseek_v3", "qwen2", "llama")
ARCHITECTURES = {
    "deepseek_v3": "DeepseekV3ForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
}
# RoPE scaling types we implement (see model/common.py). Others get a clear error.
ROPE_TYPES = ("default", "linear", "yarn", "llama3")

# Keys found in published or transformers-written config.json files that carry no
# architecture information for us (bookkeeping, or fixed choices we implement).
# They are accepted and dropped; everything else must be a field below.
METADATA_KEYS = frozenset(
    {
        "architectures", "auto_map", "transformers_version", "torch_dtype", "dtype",
        "use_cache", "pretraining_tp", "output_router_logits", "router_aux_loss_coef",
        "_name_or_path", "output_attentions", "output_hidden_states", "return_dict",
        "ep_size", "layer_types", "tokenizer_class", "chunk_size_feed_forward",
        "is_encoder_decoder", "tie_encoder_decoder", "problem_type", "id2label",
        "label2id", "generation_config",
    }
)


@dataclass
class ModelConfig:
    """Architecture of a DeepSeek-V3-style MoE model or a dense Qwen2/Llama student.

    Field names and defaults follow the Hugging Face config classes, so that
    ``ModelConfig.from_dict(json.load(open("config.json")))`` works on published files.
    """

    model_type: str = "deepseek_v3"
    vocab_size: int = 129280
    hidden_size: int = 7168
    intermediate_size: int = 18432          # dense FFN width (dense layers, students)
    num_hidden_layers: int = 61
    num_attention_heads: int = 128
    num_key_value_heads: int | None = None  # GQA for students; MLA ignores it
    head_dim: int | None = None             # students: per-head width (default hidden/heads)
    hidden_act: str = "silu"
    max_position_embeddings: int = 4096
    initializer_range: float = 0.02
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: dict | None = None
    tie_word_embeddings: bool = False
    attention_bias: bool = False            # Llama: bias on q/k/v/o; Qwen2 always has q/k/v bias
    attention_dropout: float = 0.0
    mlp_bias: bool = False
    bos_token_id: int | None = 0
    eos_token_id: int | list[int] | None = 1
    pad_token_id: int | None = None

    # --- Multi-head Latent Attention (SPEC §2) ---
    q_lora_rank: int | None = 1536          # None: plain q_proj (DeepSeek-V2-Lite)
    kv_lora_rank: int = 512
    qk_nope_head_dim: int = 128
    qk_rope_head_dim: int = 64
    v_head_dim: int = 128
    rope_interleave: bool = True            # official checkpoints rotate interleaved pairs

    # --- DeepSeekMoE (SPEC §2) ---
    n_routed_experts: int | None = 256
    n_shared_experts: int | None = 1
    num_experts_per_tok: int | None = 8
    moe_intermediate_size: int = 2048
    n_group: int | None = 8
    topk_group: int | None = 4
    routed_scaling_factor: float = 2.5
    norm_topk_prob: bool = True
    first_k_dense_replace: int = 3
    moe_layer_freq: int = 1
    scoring_func: str = "sigmoid"
    topk_method: str = "noaux_tc"
    seq_aux: bool = True
    aux_loss_alpha: float = 0.0001          # α of the sequence-wise balance loss

    # --- Multi-Token Prediction (SPEC §2) ---
    num_nextn_predict_layers: int = 0

    # --- Qwen2 sliding window (accepted only when disabled) ---
    use_sliding_window: bool = False
    sliding_window: int | None = None
    max_window_layers: int | None = None

    quantization_config: dict | None = None  # published FP8 checkpoints (dequantised on load)

    def __post_init__(self) -> None:
        self.validate()
        if not self.is_moe_model:  # make the derived sizes explicit, as transformers writes them
            self.num_key_value_heads = self.kv_heads
            self.head_dim = self.dense_head_dim

    # ------------------------------------------------------------------ derived
    @property
    def is_moe_model(self) -> bool:
        return self.model_type == "deepseek_v3"

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def kv_heads(self) -> int:
        return self.num_key_value_heads or self.num_attention_heads

    @property
    def dense_head_dim(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def rope_type(self) -> str:
        if not self.rope_scaling:
            return "default"
        return self.rope_scaling.get("rope_type", self.rope_scaling.get("type", "default"))

    def is_moe_layer(self, layer_idx: int) -> bool:
        """DeepSeek layout: the first ``first_k_dense_replace`` layers are dense (SPEC §2)."""
        return (
            self.is_moe_model
            and bool(self.n_routed_experts)
            and layer_idx >= self.first_k_dense_replace
            and layer_idx % self.moe_layer_freq == 0
        )

    # --------------------------------------------------------------- validation
    def validate(self) -> None:
        def err(name: str, msg: str) -> ConfigError:
            return ConfigError(f"config field '{name}': {msg}")

        self._check_types()
        if self.model_type not in MODEL_TYPES:
            raise err("model_type", f"unsupported value {self.model_type!r}; expected one of {', '.join(MODEL_TYPES)}")
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                     "num_attention_heads", "max_position_embeddings"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise err(name, f"must be a positive integer, got {value!r}")
        if not (isinstance(self.rms_norm_eps, (int, float)) and self.rms_norm_eps > 0):
            raise err("rms_norm_eps", f"must be a positive number, got {self.rms_norm_eps!r}")
        if not (isinstance(self.rope_theta, (int, float)) and self.rope_theta > 0):
            raise err("rope_theta", f"must be a positive number, got {self.rope_theta!r}")
        if self.hidden_act not in ("silu", "swish"):
            raise err("hidden_act", f"only 'silu' (SwiGLU) is supported, got {self.hidden_act!r}")
        self._validate_rope_scaling()
        if self.is_moe_model:
            self._validate_deepseek(err)
        else:
            self._validate_dense(err)

    def _check_types(self) -> None:
        """Every field against its annotation (JSON gives strings, bools and nulls anywhere)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed = [t.strip() for t in str(f.type).split("|")]
            if value is None and "None" in allowed:
                continue
            ok = (
                ("bool" in allowed and isinstance(value, bool))
                or ("int" in allowed and isinstance(value, int) and not isinstance(value, bool))
                or ("float" in allowed and isinstance(value, (int, float)) and not isinstance(value, bool))
                or ("str" in allowed and isinstance(value, str))
                or ("dict" in allowed and isinstance(value, dict))
                or ("list[int]" in allowed and isinstance(value, list)
                    and all(isinstance(v, int) and not isinstance(v, bool) for v in value))
            )
            if not ok:
                want = " or ".join("null" if t == "None" else t for t in allowed)
                raise ConfigError(f"config field '{f.name}': expected {want}, got {value!r}")

    def _validate_rope_scaling(self) -> None:
        rs = self.rope_scaling
        if rs is None:
            return
        if not isinstance(rs, dict):
            raise ConfigError(f"config field 'rope_scaling': must be an object or null, got {rs!r}")
        rtype = self.rope_type
        if rtype not in ROPE_TYPES:
            raise ConfigError(
                f"config field 'rope_scaling': unsupported type {rtype!r}; supported: {', '.join(ROPE_TYPES)}"
            )
        if rtype != "default":
            factor = rs.get("factor")
            if not isinstance(factor, (int, float)) or isinstance(factor, bool) or factor <= 0:
                raise ConfigError(f"config field 'rope_scaling.factor': must be a positive number, got {factor!r}")
        if rtype in ("yarn", "llama3") and "original_max_position_embeddings" in rs:
            omp = rs["original_max_position_embeddings"]
            if not isinstance(omp, int) or omp <= 0:
                raise ConfigError(
                    f"config field 'rope_scaling.original_max_position_embeddings': must be a positive integer, got {omp!r}"
                )
        if rtype == "llama3":
            for key in ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings"):
                if key not in rs:
                    raise ConfigError(f"config field 'rope_scaling.{key}': required for rope type 'llama3'")

    def _validate_deepseek(self, err) -> None:
        positive = ["kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "moe_intermediate_size"]
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise err(name, f"must be a positive integer, got {value!r}")
        if self.qk_rope_head_dim % 2:
            raise err("qk_rope_head_dim", f"must be even for rotary embeddings, got {self.qk_rope_head_dim}")
        if self.q_lora_rank is not None and (not isinstance(self.q_lora_rank, int) or self.q_lora_rank <= 0):
            raise err("q_lora_rank", f"must be a positive integer or null, got {self.q_lora_rank!r}")
        if self.num_nextn_predict_layers < 0:
            raise err("num_nextn_predict_layers", f"must be >= 0, got {self.num_nextn_predict_layers}")
        if not (0 <= self.first_k_dense_replace <= self.num_hidden_layers):
            raise err("first_k_dense_replace",
                      f"must be between 0 and num_hidden_layers ({self.num_hidden_layers}), got {self.first_k_dense_replace}")
        if self.moe_layer_freq != 1:
            raise err("moe_layer_freq", f"only 1 is supported (every layer after the dense ones is MoE), got {self.moe_layer_freq}")
        if self.scoring_func != "sigmoid":
            raise err("scoring_func", f"only 'sigmoid' (DeepSeek-V3 router) is supported, got {self.scoring_func!r}")
        if self.topk_method not in ("noaux_tc",):
            raise err("topk_method", f"only 'noaux_tc' (bias-corrected group top-k) is supported, got {self.topk_method!r}")
        if self.first_k_dense_replace >= self.num_hidden_layers and not self.num_nextn_predict_layers:
            return  # an all-dense DeepSeek model: expert fields are unused
        e, k = self.n_routed_experts, self.num_experts_per_tok
        if not isinstance(e, int) or e <= 0:
            raise err("n_routed_experts", f"must be a positive integer, got {e!r}")
        if not isinstance(k, int) or k <= 0:
            raise err("num_experts_per_tok", f"must be a positive integer, got {k!r}")
        if k > e:
            raise err("num_experts_per_tok", f"num_experts_per_tok ({k}) > n_routed_experts ({e})")
        if self.n_shared_experts is None or self.n_shared_experts < 0:
            raise err("n_shared_experts", f"must be >= 0, got {self.n_shared_experts!r}")
        g, tg = self.n_group or 1, self.topk_group or 1
        if g <= 0:
            raise err("n_group", f"must be a positive integer, got {g}")
        if tg <= 0:
            raise err("topk_group", f"must be a positive integer, got {tg}")
        if e % g:
            raise err("n_group", f"n_routed_experts % n_group != 0 ({e} % {g} = {e % g})")
        if tg > g:
            raise err("topk_group", f"topk_group > n_group ({tg} > {g})")
        if e // g < 2 and g > 1:
            raise err("n_group", f"each group needs at least 2 experts for the top-2 group score ({e} experts / {g} groups)")
        if tg * (e // g) < k:
            raise err("num_experts_per_tok",
                      f"topk_group × experts per group ({tg} × {e // g}) < num_experts_per_tok ({k}): not enough experts to choose from")
        if not (isinstance(self.routed_scaling_factor, (int, float)) and self.routed_scaling_factor > 0):
            raise err("routed_scaling_factor", f"must be a positive number, got {self.routed_scaling_factor!r}")

    def _validate_dense(self, err) -> None:
        h, kv = self.num_attention_heads, self.kv_heads
        if kv <= 0 or h % kv:
            raise err("num_key_value_heads", f"num_attention_heads ({h}) must be a multiple of num_key_value_heads ({kv})")
        if self.head_dim is None and self.hidden_size % h:
            raise err("hidden_size", f"hidden_size ({self.hidden_size}) must be divisible by num_attention_heads ({h}) or set head_dim")
        if self.dense_head_dim % 2:
            raise err("head_dim", f"must be even for rotary embeddings, got {self.dense_head_dim}")
        if self.use_sliding_window:
            raise err("use_sliding_window", "sliding-window attention is not supported; set it to false")
        if self.num_nextn_predict_layers:
            raise err("num_nextn_predict_layers", "multi-token prediction is only available for deepseek_v3 models")

    # ------------------------------------------------------------ (de)serialise
    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"config must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        model_type = data.get("model_type", "deepseek_v3")
        # transformers >= 5 writes rope settings as `rope_parameters`; published files use
        # `rope_theta` + `rope_scaling`. Normalise to the latter.
        rope_parameters = data.pop("rope_parameters", None)
        if rope_parameters is not None:
            if not isinstance(rope_parameters, dict):
                raise ConfigError(f"config field 'rope_parameters': must be an object, got {rope_parameters!r}")
            rp = dict(rope_parameters)
            if "rope_theta" in rp:
                data.setdefault("rope_theta", rp.pop("rope_theta"))
            rtype = rp.get("rope_type", rp.get("type", "default"))
            if rtype != "default" and "rope_scaling" not in data:
                rp["type"] = rtype
                rp.pop("rope_type", None)
                data["rope_scaling"] = rp
        # Derived keys transformers writes; check they agree rather than trusting them.
        qk_head_dim = data.pop("qk_head_dim", None)
        if model_type == "deepseek_v3":
            data.pop("head_dim", None)  # transformers sets it to qk_rope_head_dim
            data.pop("num_key_value_heads", None)  # MLA: every head has its own key
        known = {f.name for f in dataclasses.fields(cls)}
        for key in list(data):
            if key in METADATA_KEYS:
                data.pop(key)
            elif key not in known:
                raise ConfigError(
                    f"unknown config key {key!r}; remove it or check its spelling (model_type {model_type!r})"
                )
        cfg = cls(**data)
        if qk_head_dim is not None and model_type == "deepseek_v3" and qk_head_dim != cfg.qk_head_dim:
            raise ConfigError(
                f"config field 'qk_head_dim': {qk_head_dim} != qk_nope_head_dim + qk_rope_head_dim ({cfg.qk_head_dim})"
            )
        return cfg

    @classmethod
    def from_json(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as e:
            raise ConfigError(f"cannot read config file {path}: {e.strerror or e}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg})") from None
        try:
            return cls.from_dict(data)
        except TypeError as e:  # wrong value types that the dataclass itself rejects
            raise ConfigError(f"{path}: {e}") from None

    def to_dict(self) -> dict[str, Any]:
        """The ``config.json`` contents, readable by transformers and by us."""
        d: dict[str, Any] = {"architectures": [ARCHITECTURES[self.model_type]]}
        common = [
            "model_type", "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
            "num_attention_heads", "hidden_act", "max_position_embeddings", "initializer_range",
            "rms_norm_eps", "rope_theta", "rope_scaling", "tie_word_embeddings", "attention_dropout",
            "bos_token_id", "eos_token_id", "pad_token_id",
        ]
        if self.is_moe_model:
            keys = common + [
                "attention_bias", "q_lora_rank", "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim",
                "v_head_dim", "rope_interleave", "n_routed_experts", "n_shared_experts",
                "num_experts_per_tok", "moe_intermediate_size", "n_group", "topk_group",
                "routed_scaling_factor", "norm_topk_prob", "first_k_dense_replace", "moe_layer_freq",
                "scoring_func", "topk_method", "seq_aux", "aux_loss_alpha", "num_nextn_predict_layers",
            ]
            d["num_key_value_heads"] = self.num_attention_heads
        else:
            keys = common + ["num_key_value_heads", "head_dim"]
            if self.model_type == "llama":
                keys += ["attention_bias", "mlp_bias"]
            else:
                keys += ["use_sliding_window", "sliding_window", "max_window_layers"]
        for k in keys:
            value = getattr(self, k)
            if value is None and k in ("sliding_window", "max_window_layers", "head_dim", "pad_token_id"):
                continue  # transformers' strict configs reject null for these
            d[k] = value
        if not self.is_moe_model:
            d["num_key_value_heads"] = self.kv_heads
            d["head_dim"] = self.dense_head_dim
        d["torch_dtype"] = "float32"
        return d

    def replace(self, **changes: Any) -> "ModelConfig":
        """A validated copy with some fields changed (unknown names are errors)."""
        known = {f.name for f in dataclasses.fields(self)}
        for k in changes:
            if k not in known:
                raise ConfigError(f"unknown config key {k!r}")
        return dataclasses.replace(self, **changes)


# ---------------------------------------------------------------------- presets
def _tiny() -> ModelConfig:
    # ~4.8M parameters (2.6M active): trains on a laptop CPU in minutes. The shape of
    # the foundation benchmark's reference config, with a vocabulary sized for the
    # shipped tokenizer, slimmer experts and one MTP module.
    return ModelConfig(
        model_type="deepseek_v3", vocab_size=2048, hidden_size=256, intermediate_size=384,
        num_hidden_layers=4, num_attention_heads=4, max_position_embeddings=1024,
        q_lora_rank=128, kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
        n_routed_experts=8, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=96,
        n_group=1, topk_group=1, routed_scaling_factor=1.0, first_k_dense_replace=1,
        num_nextn_predict_layers=1, rope_theta=10000.0,
    )


def _bench() -> ModelConfig:
    # The foundation benchmark's reference config (3.83M parameters, no MTP).
    return _tiny().replace(vocab_size=512, intermediate_size=512, moe_intermediate_size=128, num_nextn_predict_layers=0)


def _small() -> ModelConfig:
    # ~127M total: a real experiment on one GPU.
    return ModelConfig(
        model_type="deepseek_v3", vocab_size=32768, hidden_size=512, intermediate_size=1408,
        num_hidden_layers=12, num_attention_heads=8, max_position_embeddings=4096,
        q_lora_rank=256, kv_lora_rank=128, qk_nope_head_dim=64, qk_rope_head_dim=32, v_head_dim=64,
        n_routed_experts=16, n_shared_experts=1, num_experts_per_tok=4, moe_intermediate_size=256,
        n_group=4, topk_group=2, routed_scaling_factor=2.5, first_k_dense_replace=1,
        num_nextn_predict_layers=1,
    )


_V3_YARN = {
    "type": "yarn", "factor": 40, "original_max_position_embeddings": 4096,
    "beta_fast": 32, "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0,
}


def _deepseek_v3() -> ModelConfig:
    # SPEC §2, as in the published config.json.
    return ModelConfig(
        model_type="deepseek_v3", vocab_size=129280, hidden_size=7168, intermediate_size=18432,
        num_hidden_layers=61, num_attention_heads=128, max_position_embeddings=163840,
        q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128,
        n_routed_experts=256, n_shared_experts=1, num_experts_per_tok=8, moe_intermediate_size=2048,
        n_group=8, topk_group=4, routed_scaling_factor=2.5, first_k_dense_replace=3,
        num_nextn_predict_layers=1, rope_theta=10000.0, rope_scaling=dict(_V3_YARN), aux_loss_alpha=0.0001,
    )


def _qwen2_1_5b() -> ModelConfig:
    # Shape of Qwen2.5-1.5B / DeepSeek-R1-Distill-Qwen-1.5B.
    return ModelConfig(
        model_type="qwen2", vocab_size=151936, hidden_size=1536, intermediate_size=8960,
        num_hidden_layers=28, num_attention_heads=12, num_key_value_heads=2,
        max_position_embeddings=131072, rope_theta=10000.0, tie_word_embeddings=False,
        rms_norm_eps=1e-6, bos_token_id=151643, eos_token_id=151643,
    )


def _qwen2_tiny() -> ModelConfig:
    # A CPU-size dense student (≈ 1.1M parameters) for the shipped 2048-token tokenizer.
    return ModelConfig(
        model_type="qwen2", vocab_size=2048, hidden_size=128, intermediate_size=384, num_hidden_layers=4,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, rope_theta=10000.0,
        tie_word_embeddings=True, rms_norm_eps=1e-6,
    )


def _llama_tiny() -> ModelConfig:
    # The Llama-layout twin of qwen2-tiny (no attention biases, untied head).
    return _qwen2_tiny().replace(model_type="llama", tie_word_embeddings=False, rms_norm_eps=1e-5)


def _llama3_8b() -> ModelConfig:
    # Shape of Llama-3.1-8B / DeepSeek-R1-Distill-Llama-8B.
    return ModelConfig(
        model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336,
        num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
        max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
        rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
        bos_token_id=128000, eos_token_id=128001,
    )


PRESETS = {
    "tiny": _tiny,
    "bench": _bench,
    "small": _small,
    "deepseek-v3": _deepseek_v3,
    "deepseek-r1": _deepseek_v3,  # R1 is V3's architecture with RL-trained weights
    "qwen2-1.5b": _qwen2_1_5b,
    "qwen2-tiny": _qwen2_tiny,
    "llama-tiny": _llama_tiny,
    "llama3-8b": _llama3_8b,
}

# Presets too large to allocate on a laptop; built on the meta device for accounting.
META_PRESETS = frozenset({"deepseek-v3", "deepseek-r1", "llama3-8b"})


def preset(name: str) -> ModelConfig:
    try:
        return PRESETS[name]()
    except KeyError:
        raise ConfigError(f"unknown preset {name!r}; choose one of: {', '.join(PRESETS)}") from None


def yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN attention temperature: 0.1·mscale·ln(scale) + 1 (SPEC §2)."""
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0
