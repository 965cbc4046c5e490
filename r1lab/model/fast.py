"""A faster training path for ``DeepseekV3ForCausalLM``: the same math, fewer kernels.

deepseek.py is the readable reference; this module only swaps in equivalent
implementations, in place, and keeps every parameter, buffer and module name:

1. Routed experts (``FastExperts``): the expert-sorted token buffer goes through two
   grouped matmuls (``torch._grouped_mm``, one call for all experts, no ``.tolist()``
   sync), and dispatch/combine are row permutations whose backward is the inverse
   permutation (gathers both ways: no scatter-add / accumulating index_put).
2. MLA's two projections of its input (q_a_proj, kv_a_proj_with_mqa) run as one
   matmul over the concatenated weight (``FusedInputMLA``).
3. ``torch.compile(dynamic=False)`` of the whole model: one graph, forward and backward,
   every element-wise op (norms, RoPE, SiLU, residuals, cat/pad copies) fused.

    model = optimize_for_training(build_model(cfg, seed=0))            # 1 + 2 + 3
    model = optimize_for_training(model, compile=False)                 # 1 + 2, eager

Results equal the plain model up to float rounding (tests/test_fast.py). Compiling
takes about a minute on a laptop CPU (cached by inductor afterwards); shapes are
static, so a new batch shape or a switch between train/eval recompiles once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .deepseek import MLA, DeepseekV3ForCausalLM, Experts


# ----------------------------------------------------------------- grouped matmul
# torch._grouped_mm runs on the CPU, but its shape function insists on CUDA's bf16, so
# torch.compile cannot trace it. Wrapped as custom ops (forward and weight gradient)
# it is opaque to the compiler and runs the real kernel.
@torch.library.custom_op("r1lab::grouped_mm", mutates_args=())
def grouped_mm(a: torch.Tensor, b: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """a (M, K) rows grouped by ``offs`` (G,) cumulative ends, b (G, K, N) -> (M, N)."""
    return torch._grouped_mm(a, b, offs=offs)


@grouped_mm.register_fake
def _(a, b, offs):
    return a.new_empty(a.shape[0], b.shape[-1])


@torch.library.custom_op("r1lab::grouped_mm_weight_grad", mutates_args=())
def grouped_mm_weight_grad(a: torch.Tensor, grad: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """Per group g: a[rows_g].T @ grad[rows_g] -> (G, K, N)."""
    return torch._grouped_mm(a.t(), grad, offs=offs)


@grouped_mm_weight_grad.register_fake
def _(a, grad, offs):
    return a.new_empty(offs.shape[0], a.shape[1], grad.shape[1])


def _grouped_mm_setup(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _grouped_mm_backward(ctx, grad):
    a, b, offs = ctx.saved_tensors
    grad_a = grouped_mm(grad, b.transpose(1, 2), offs) if ctx.needs_input_grad[0] else None
    grad_b = grouped_mm_weight_grad(a, grad, offs) if ctx.needs_input_grad[1] else None
    return grad_a, grad_b, None


grouped_mm.register_autograd(_grouped_mm_backward, setup_context=_grouped_mm_setup)


def grouped_mm_supported(*tensors: torch.Tensor) -> bool:
    """The CPU kernel wants every stride but the unit one to be a multiple of 16 bytes."""
    return all(t.dtype == torch.float32 and all((s * 4) % 16 == 0 for s, n in zip(t.stride(), t.shape) if s != 1)
               for t in tensors)


# ------------------------------------------------------------- row permutations
class PermuteRows(torch.autograd.Function):
    """y = x[perm]; the gradient is g[inverse] (a gather, where indexing's is a scatter)."""

    @staticmethod
    def forward(x, perm, inverse):
        return x.index_select(0, perm)

    @staticmethod
    def setup_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[2])

    @staticmethod
    def backward(ctx, grad):
        (inverse,) = ctx.saved_tensors
        return grad.index_select(0, inverse), None, None


# ------------------------------------------------------------------------ experts
class FastExperts(Experts):
    """Experts.forward with grouped matmuls and permutation dispatch (same result)."""

    def forward(self, x: torch.Tensor, weights: torch.Tensor, indices: torch.Tensor) -> torch.Tensor:
        N, K = indices.shape
        E, D = self.gate_up_proj.shape[0], x.shape[-1]
        flat = indices.flatten()                                                 # (N·K,) pair -> expert
        order = flat.argsort(stable=True)                                        # sorted slot -> pair
        inverse = torch.empty_like(order).scatter_(0, order, torch.arange(N * K, device=x.device))
        counts = torch.zeros(E, dtype=torch.int32, device=x.device).scatter_add_(
            0, flat, torch.ones_like(flat, dtype=torch.int32))
        offs = counts.cumsum(0, dtype=torch.int32)                               # (E,) group ends
        pairs = x.unsqueeze(1).expand(N, K, D).reshape(N * K, D)                 # row n·K+k = x[n]
        xs = PermuteRows.apply(pairs, order, inverse)                            # grouped by expert
        gate, up = grouped_mm(xs, self.gate_up_proj.transpose(1, 2), offs).chunk(2, dim=-1)
        ys = grouped_mm(F.silu(gate) * up, self.down_proj.transpose(1, 2), offs)
        ys = PermuteRows.apply(ys, inverse, order).view(N, K, D)                 # back to pair order
        return (ys * weights.unsqueeze(-1).to(ys.dtype)).sum(1)


# -------------------------------------------------------------------------- MLA
class FusedInputMLA(MLA):
    """MLA with its two input projections computed by one matmul."""

    def project_inputs(self, x):
        q_in, kv_in = self.q_input, self.kv_a_proj_with_mqa
        bias = None
        if q_in.bias is not None or kv_in.bias is not None:
            zeros = [torch.zeros(m.out_features, device=x.device, dtype=x.dtype) for m in (q_in, kv_in)]
            bias = torch.cat([m.bias if m.bias is not None else z for m, z in zip((q_in, kv_in), zeros)])
        qkv = F.linear(x, torch.cat([q_in.weight, kv_in.weight]), bias)
        return qkv.split([q_in.out_features, kv_in.out_features], dim=-1)


# ---------------------------------------------------------------------------- API
def optimize_for_training(model: nn.Module, compile: bool = True) -> nn.Module:
    """Swap in the fast implementations (in place) and optionally torch.compile the model.

    Returns the model to use: ``model`` itself, or its compiled wrapper (which shares
    the parameters, so optimizers and state dicts work on either)."""
    if not isinstance(model, DeepseekV3ForCausalLM):
        raise TypeError(f"optimize_for_training expects a DeepseekV3ForCausalLM, got {type(model).__name__}")
    for m in model.modules():
        if type(m) is Experts and grouped_mm_supported(m.gate_up_proj.transpose(1, 2), m.down_proj.transpose(1, 2)):
            m.__class__ = FastExperts
        elif type(m) is MLA:
            m.__class__ = FusedInputMLA
    if compile:
        model.compile(dynamic=False)
    return model
