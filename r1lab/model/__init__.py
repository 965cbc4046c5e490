"""Models: the DeepSeek-V3 MoE (deepseek.py) and dense Qwen2/Llama students (dense.py)."""

from __future__ import annotations

import torch

from ..config import ModelConfig
from .common import ModelOutput
from .deepseek import DeepseekV3ForCausalLM
from .dense import DenseForCausalLM

__all__ = ["ModelOutput", "DeepseekV3ForCausalLM", "DenseForCausalLM", "build_model"]


def build_model(cfg: ModelConfig, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
                seed: int | None = None) -> torch.nn.Module:
    """A randomly initialised model for ``cfg``. ``device="meta"`` allocates nothing
    (parameter accounting of 671B-parameter configs on a laptop)."""
    cls = DeepseekV3ForCausalLM if cfg.is_moe_model else DenseForCausalLM
    if seed is not None:
        torch.manual_seed(seed)
    with torch.device(device or "cpu"):
        model = cls(cfg)
    if dtype is not None:
        model = model.to(dtype)
    return model
