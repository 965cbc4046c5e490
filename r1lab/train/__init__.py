"""Training: one loop (loop.py) shared by pre-training, SFT and GRPO; recipes (config.py).

    from r1lab.train import PretrainConfig, load_recipe
    from r1lab.train.pretrain import pretrain
    cfg = load_recipe("recipes/pretrain_tiny.yaml", PretrainConfig, ["steps=50"])
    summary = pretrain(cfg)        # likewise r1lab.train.sft.sft(SFTConfig)

The stage functions live in their submodules (``r1lab.train.pretrain.pretrain``,
``r1lab.train.sft.sft``): a package attribute of the same name would be shadowed by the
submodule once it is imported. ``Trainer`` and friends are imported lazily so
``import r1lab.train`` stays light.
"""

from __future__ import annotations

from .config import (BaseTrainConfig, CheckpointConfig, EvalConfig, LogConfig, ModelSpec, OptimConfig,
                     PretrainConfig, PretrainData, ScheduleConfig, SFTConfig, SFTData, TrainConfigError, TrainError,
                     load_recipe)

_LOOP_NAMES = ("Trainer", "Algorithm", "lr_factor", "latest_checkpoint", "list_checkpoints", "load_start")


def __getattr__(name):
    if name in _LOOP_NAMES:
        from . import loop

        return getattr(loop, name)
    if name == "DataError":
        from .data import DataError

        return DataError
    raise AttributeError(f"module 'r1lab.train' has no attribute {name!r}")


__all__ = [
    "Algorithm", "BaseTrainConfig", "CheckpointConfig", "DataError", "EvalConfig", "LogConfig", "ModelSpec",
    "OptimConfig", "PretrainConfig", "PretrainData", "SFTConfig", "SFTData", "ScheduleConfig", "TrainConfigError",
    "TrainError", "Trainer", "latest_checkpoint", "list_checkpoints", "load_recipe", "load_start", "lr_factor",
]
