"""Where tensors run: one rule for every entry point (``--device``, a recipe's ``device``)."""

from __future__ import annotations

import torch


def resolve_device(spec: str, what: str = "device", error: type[Exception] = ValueError) -> torch.device:
    """``auto`` = CUDA when present, else CPU; otherwise ``spec`` itself, which must name a
    device torch knows and, for CUDA, one that is there. ``what`` names the setting in the
    one-line ``error``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(spec)
    except RuntimeError:
        raise error(f"{what}: unknown device {spec!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise error(f"{what} {spec}: no CUDA GPU is available here; use cpu")
    return dev
