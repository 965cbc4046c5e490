"""r1lab.model.fast: the optimized training path gives the plain model's loss and gradients."""

import pytest
import torch
import torch.nn.functional as F

from r1lab import build_model, preset
from r1lab.model.deepseek import MLA, Experts
from r1lab.model.fast import FastExperts, FusedInputMLA, PermuteRows, grouped_mm, optimize_for_training

REL = 1e-5


def tiny(**kw):
    return preset("tiny").replace(vocab_size=256, **kw)


CONFIGS = {
    "tiny": tiny(),
    "groups+k3+no_norm": tiny(n_group=4, topk_group=2, num_experts_per_tok=3, norm_topk_prob=False,
                              routed_scaling_factor=2.5, n_shared_experts=2),
    "q_lora_null+halves+bias": tiny(q_lora_rank=None, rope_interleave=False, attention_bias=True),
}


def loss_and_grads(model, ids, targets):
    model.zero_grad(set_to_none=True)
    out = model(ids, targets=targets)
    loss = out.loss + out.mtp_loss + 0.01 * out.balance_loss  # every output the trainer uses
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def assert_same(ref, got):
    (loss_r, grads_r), (loss_g, grads_g) = ref, got
    assert abs(loss_r.item() - loss_g.item()) <= REL * abs(loss_r.item())
    assert grads_r.keys() == grads_g.keys()
    for name, g in grads_r.items():
        err = (g - grads_g[name]).abs().max().item()
        assert err <= REL * max(g.abs().max().item(), 1e-3), f"{name}: max |diff| {err:.2e}"


def batch(cfg, b=3, t=40, seed=0):
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, cfg.vocab_size, (b, t + 1), generator=gen)
    return ids[:, :-1], ids[:, 1:]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_swapped_modules_match_plain_model(name):
    cfg = CONFIGS[name]
    plain = build_model(cfg, seed=0).train()
    fast = optimize_for_training(build_model(cfg, seed=0).train(), compile=False)
    assert any(isinstance(m, FastExperts) for m in fast.modules())
    assert any(isinstance(m, FusedInputMLA) for m in fast.modules())
    assert fast.state_dict().keys() == plain.state_dict().keys()
    ids, targets = batch(cfg)
    assert_same(loss_and_grads(plain, ids, targets), loss_and_grads(fast, ids, targets))
    # the expert-load counters that drive the bias update are the same too
    assert torch.equal(plain.expert_load(), fast.expert_load())
    with torch.no_grad():  # and inference-only forwards (absorbed form included)
        for absorbed in (False, True):
            diff = (plain(ids, absorbed=absorbed).logits - fast(ids, absorbed=absorbed).logits).abs().max()
            assert diff.item() < 1e-5


def test_experts_with_an_unused_expert():
    cfg = tiny()
    torch.manual_seed(0)
    plain = Experts(cfg)
    plain.init_weights(0.02)
    fast = Experts(cfg)
    fast.load_state_dict(plain.state_dict())
    fast.__class__ = FastExperts
    x = torch.randn(20, cfg.hidden_size)
    indices = torch.randint(1, cfg.n_routed_experts, (20, cfg.num_experts_per_tok))  # expert 0 gets nothing
    weights = torch.rand(20, cfg.num_experts_per_tok)
    outs = []
    for m in (plain, fast):
        xi = x.clone().requires_grad_()
        y = m(xi, weights, indices)
        y.backward(torch.ones_like(y))
        outs.append((y.detach(), xi.grad, m.gate_up_proj.grad, m.down_proj.grad))
    for a, b in zip(*outs):
        assert (a - b).abs().max().item() <= 1e-6 * max(a.abs().max().item(), 1.0)


def test_grouped_mm_and_permutation_gradients():
    torch.manual_seed(0)
    a = torch.randn(10, 8, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, 8, 4, dtype=torch.float64, requires_grad=True)
    offs = torch.tensor([3, 3, 10], dtype=torch.int32)  # middle group empty
    ref = torch.cat([a[:3] @ b[0], a[3:3] @ b[1], a[3:] @ b[2]])
    got = grouped_mm(a.float(), b.float(), offs)
    assert (ref.float() - got).abs().max() < 1e-5
    perm = torch.randperm(10)
    inverse = perm.argsort()
    torch.autograd.gradcheck(lambda x: PermuteRows.apply(x, perm, inverse), (a,))
    af, bf = a.detach().float().requires_grad_(), b.detach().float().requires_grad_()
    g = torch.randn(10, 4)
    grouped_mm(af, bf, offs).backward(g)
    ref = torch.cat([a[:3] @ b[0], a[3:3] @ b[1], a[3:] @ b[2]])
    ga, gb = torch.autograd.grad(ref, (a, b), g.double())
    assert (ga.float() - af.grad).abs().max() < 1e-5 and (gb.float() - bf.grad).abs().max() < 1e-5


def test_rejects_other_models():
    with pytest.raises(TypeError):
        optimize_for_training(build_model(preset("qwen2-1.5b").replace(
            vocab_size=64, hidden_size=32, intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
            num_key_value_heads=1)), compile=False)


@pytest.mark.slow
def test_compiled_model_matches_plain_model():
    """torch.compile of the whole model (two graphs, 1-4 minutes of compiling on a 2-core CPU, cold cache)."""
    cfg = tiny()
    plain = build_model(cfg, seed=0).train()
    fast = optimize_for_training(build_model(cfg, seed=0).train(), compile=True)
    ids, targets = batch(cfg, b=2, t=32)
    assert_same(loss_and_grads(plain, ids, targets), loss_and_grads(fast, ids, targets))
    # the optimizer sees the same parameter objects through the compiled wrapper
    opt = torch.optim.AdamW(fast.parameters(), lr=1e-3)
    opt.step()
    loss = F.cross_entropy(fast(ids).logits.flatten(0, 1), targets.flatten())
    assert torch.isfinite(loss)
