"""Tests for r1lab.train.grpo_loss: hand-computed GRPO losses and gradients (SPEC §3)."""

from __future__ import annotations

import math

import pytest
import torch

from r1lab.train.grpo_loss import (
    grpo_loss,
    group_advantages,
    masked_entropy,
    token_logprobs,
    zero_variance_groups,
)

AGGS = ("seq_mean", "token_mean", "constant")
MAX_TOKENS = 6

# ---------------------------------------------------------------------------------------
# A tiny hand-made batch: 2 groups x G=2, T=4, lengths 3, 4, 2, 1.
# Clip range [0.8, 1.3] (eps_low 0.2, eps_high 0.3). Ratios chosen so that some tokens are
# clipped (ratio outside the range on the side where the sign of A makes the clip active)
# and others are not (inside the range, or outside on the harmless side).
# ---------------------------------------------------------------------------------------
EPS_LOW, EPS_HIGH, BETA = 0.2, 0.3, 0.1
ADV = [1.0, -1.0, 0.5, -0.5]
RATIOS = [
    [1.1, 1.5, 0.5, None],  # A>0: in range | clipped high | below range but unclipped (A>0)
    [0.7, 1.5, 0.9, 1.0],  # A<0: clipped low | above range but unclipped (A<0) | in | in
    [1.2, 2.0, None, None],  # A>0: in range | clipped high
    [0.6, None, None, None],  # A<0: clipped low
]
EXPECTED_CLIPPED = {(0, 1), (1, 0), (2, 1), (3, 0)}
OLD = [
    [-1.3, -0.7, -2.1, -0.4],
    [-0.9, -1.6, -0.2, -1.1],
    [-0.5, -2.4, -0.8, -1.9],
    [-1.2, -0.3, -1.5, -0.6],
]
REF_DELTA = [  # ref - logpi on real tokens
    [0.3, -0.2, 0.1, 0.0],
    [-0.4, 0.25, 0.05, -0.1],
    [0.15, -0.3, 0.0, 0.0],
    [0.2, 0.0, 0.0, 0.0],
]


def _batch(dtype=torch.float32, pad_value=0.0):
    mask = [[r is not None for r in row] for row in RATIOS]
    lp = [
        [math.log(r) + o if r is not None else pad_value for r, o in zip(row, orow)]
        for row, orow in zip(RATIOS, OLD)
    ]
    ref = [
        [lp[i][t] + REF_DELTA[i][t] if mask[i][t] else pad_value for t in range(4)] for i in range(4)
    ]
    return (
        torch.tensor(lp, dtype=dtype, requires_grad=True),
        torch.tensor(OLD, dtype=dtype),
        torch.tensor(ADV, dtype=dtype),
        torch.tensor(mask),
        torch.tensor(ref, dtype=dtype),
    )


def _hand_reference(lp, old, adv, mask, ref, *, beta, eps_low, eps_high, agg, max_tokens=None):
    """Plain-Python loss and d(loss)/d(logprobs), written token by token."""
    B, T = len(lp), len(lp[0])
    lo, hi = max(1.0 - eps_low, 0.0), 1.0 + eps_high
    lengths = [sum(1 for t in range(T) if mask[i][t]) for i in range(B)]
    n_tokens = sum(lengths)
    loss = 0.0
    grad = [[0.0] * T for _ in range(B)]
    clipped = set()
    for i in range(B):
        a = adv[i]
        for t in range(T):
            if not mask[i][t]:
                continue
            rho = math.exp(lp[i][t] - old[i][t])
            rho_c = min(max(rho, lo), hi)
            if rho * a > rho_c * a:  # the clipped term is the (strict) minimum
                surrogate, d_surrogate = rho_c * a, 0.0
                clipped.add((i, t))
            else:
                surrogate, d_surrogate = rho * a, rho * a  # d/dlogpi (rho A) = rho A
            d = ref[i][t] - lp[i][t]
            kl = math.exp(d) - d - 1.0
            d_kl = -math.exp(d) + 1.0  # d/dlogpi [e^d - d - 1] with d = ref - logpi
            objective = surrogate - beta * kl
            d_objective = d_surrogate - beta * d_kl
            if agg == "seq_mean":
                w = 1.0 / (B * lengths[i])
            elif agg == "token_mean":
                w = 1.0 / n_tokens
            else:
                w = 1.0 / (B * max_tokens)
            loss -= w * objective
            grad[i][t] = -w * d_objective
    return loss, grad, clipped


@pytest.mark.parametrize("agg", AGGS)
def test_loss_and_gradient_match_hand_computation(agg):
    lp, old, adv, mask, ref = _batch()
    loss, stats = grpo_loss(
        lp, old, adv, mask, ref_logprobs=ref, beta=BETA, eps_low=EPS_LOW, eps_high=EPS_HIGH,
        loss_agg=agg, max_tokens=MAX_TOKENS,
    )
    loss.backward()
    want_loss, want_grad, clipped = _hand_reference(
        lp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), ref.tolist(),
        beta=BETA, eps_low=EPS_LOW, eps_high=EPS_HIGH, agg=agg, max_tokens=MAX_TOKENS,
    )
    assert clipped == EXPECTED_CLIPPED  # the batch really mixes clipped and unclipped tokens
    assert loss.dtype == torch.float32 and loss.dim() == 0
    assert abs(loss.item() - want_loss) < 1e-6
    got = lp.grad.tolist()
    for i in range(4):
        for t in range(4):
            assert abs(got[i][t] - want_grad[i][t]) < 1e-6, (i, t, got[i][t], want_grad[i][t])
            if (i, t) in EXPECTED_CLIPPED:  # only the KL term pushes a clipped token
                w = {"seq_mean": 1 / (4 * sum(mask[i].tolist())), "token_mean": 1 / 10,
                     "constant": 1 / (4 * MAX_TOKENS)}[agg]
                d = REF_DELTA[i][t]
                assert abs(got[i][t] - (-w * (-BETA * (1 - math.exp(d))))) < 1e-6
    # stats agree with the hand count / hand KL
    assert stats["clip_frac"] == pytest.approx(4 / 10)
    assert stats["clip_low_frac"] == pytest.approx(2 / 10)
    assert stats["clip_high_frac"] == pytest.approx(2 / 10)
    want_kl = sum(
        math.exp(REF_DELTA[i][t]) - REF_DELTA[i][t] - 1 for i in range(4) for t in range(4) if mask[i][t]
    ) / 10
    assert stats["kl"] == pytest.approx(want_kl, abs=1e-6)
    assert stats["loss"] == pytest.approx(loss.item())
    assert stats["tokens"] == 10 and stats["seq_len_mean"] == pytest.approx(2.5)
    assert stats["ratio_max"] == pytest.approx(2.0, rel=1e-5)
    assert stats["ratio_min"] == pytest.approx(0.5, rel=1e-5)
    assert stats["policy_loss"] + BETA * stats["kl_loss"] == pytest.approx(stats["loss"], abs=1e-6)
    assert all(isinstance(v, float) for v in stats.values())


def test_float64_inputs_match_hand_computation_tightly():
    lp, old, adv, mask, ref = _batch(torch.float64)
    loss, _ = grpo_loss(lp, old, adv, mask, ref_logprobs=ref, beta=BETA, eps_low=EPS_LOW,
                        eps_high=EPS_HIGH, loss_agg="seq_mean")
    loss.backward()
    want_loss, want_grad, _ = _hand_reference(
        lp.tolist(), old.tolist(), adv.tolist(), mask.tolist(), ref.tolist(),
        beta=BETA, eps_low=EPS_LOW, eps_high=EPS_HIGH, agg="seq_mean",
    )
    assert loss.dtype == torch.float64
    assert abs(loss.item() - want_loss) < 1e-12
    assert torch.allclose(lp.grad, torch.tensor(want_grad, dtype=torch.float64), atol=1e-12, rtol=0)


def test_bf16_inputs_are_computed_in_float32():
    lp, old, adv, mask, ref = _batch()
    lp16 = lp.detach().bfloat16().requires_grad_(True)
    loss, _ = grpo_loss(lp16, old.bfloat16(), adv, mask, ref_logprobs=ref.bfloat16(), beta=BETA,
                        loss_agg="token_mean")
    assert loss.dtype == torch.float32
    want, _ = grpo_loss(lp16.detach().float(), old.bfloat16().float(), adv, mask,
                        ref_logprobs=ref.bfloat16().float(), beta=BETA, loss_agg="token_mean")
    assert loss.item() == want.item()
    loss.backward()
    assert lp16.grad.dtype == torch.bfloat16


@pytest.mark.parametrize("agg", AGGS)
def test_all_equal_reward_group_gets_exactly_zero_gradient(agg):
    torch.manual_seed(0)
    rewards = torch.tensor([1.0, 1.0, 1.0, 0.0, 1.0, 0.0])  # G=3: group 0 all equal
    adv = group_advantages(rewards, 3, "group_std")
    assert torch.equal(adv[:3], torch.zeros(3))
    lp = (torch.randn(6, 5) * 0.5 - 1).requires_grad_(True)
    old = lp.detach() + torch.randn(6, 5) * 0.4  # plenty of clipped and unclipped tokens
    mask = torch.ones(6, 5, dtype=torch.bool)
    mask[1, 3:] = False
    mask[4, 2:] = False
    loss, _ = grpo_loss(lp, old, adv, mask, beta=0.0, loss_agg=agg, max_tokens=5)
    loss.backward()
    assert torch.equal(lp.grad[:3], torch.zeros(3, 5))
    assert lp.grad[3:].abs().sum() > 0


@pytest.mark.parametrize("agg", AGGS)
def test_only_completion_tokens_get_gradient_even_with_garbage_padding(agg):
    lp, old, adv, mask, ref = _batch()
    pad = ~mask
    with torch.no_grad():  # garbage (inf / nan / huge) at every padding position
        lp[pad] = float("-inf")
    old = old.clone()
    old[pad] = float("nan")
    ref = ref.clone()
    ref[pad] = float("inf")
    loss, stats = grpo_loss(lp, old, adv, mask, ref_logprobs=ref, beta=BETA, eps_low=EPS_LOW,
                            eps_high=EPS_HIGH, loss_agg=agg, max_tokens=MAX_TOKENS)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(math.isfinite(v) for v in stats.values())
    assert torch.equal(lp.grad[pad], torch.zeros(int(pad.sum())))
    assert (lp.grad[mask] != 0).all()
    # and the value equals the clean-padding loss
    clean = _batch()
    want, _ = grpo_loss(clean[0], clean[1], clean[2], clean[3], ref_logprobs=clean[4], beta=BETA,
                        eps_low=EPS_LOW, eps_high=EPS_HIGH, loss_agg=agg, max_tokens=MAX_TOKENS)
    assert loss.item() == pytest.approx(want.item(), abs=1e-7)


def test_beta_zero_needs_no_reference():
    lp, old, adv, mask, ref = _batch()
    loss, stats = grpo_loss(lp, old, adv, mask, ref_logprobs=None, beta=0.0, loss_agg="seq_mean")
    assert "kl" not in stats and "kl_loss" not in stats
    with_ref, stats_ref = grpo_loss(lp, old, adv, mask, ref_logprobs=ref, beta=0.0, loss_agg="seq_mean")
    assert loss.item() == with_ref.item()
    assert stats_ref["kl"] > 0  # KL is still reported when a reference is given
    with pytest.raises(ValueError, match="ref_logprobs"):
        grpo_loss(lp, old, adv, mask, beta=0.01, loss_agg="seq_mean")


def _single_token(ratio, adv, **kw):
    lp = torch.tensor([[math.log(ratio)]], requires_grad=True)
    old = torch.zeros(1, 1)
    loss, stats = grpo_loss(lp, old, torch.tensor([adv]), torch.ones(1, 1), loss_agg="token_mean", **kw)
    loss.backward()
    return loss.item(), lp.grad.item(), stats


def test_asymmetric_clip_higher():
    # ratio 1.25 lies between 1 + eps_low = 1.2 and 1 + eps_high = 1.28
    loss, grad, stats = _single_token(1.25, 2.0, eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx(-2.5) and grad == pytest.approx(-2.5)  # unclipped: -rho*A
    assert stats["clip_frac"] == 0.0
    loss, grad, stats = _single_token(1.25, 2.0, eps_low=0.2)  # eps_high defaults to eps_low
    assert loss == pytest.approx(-2.4) and grad == 0.0
    assert stats["clip_frac"] == 1.0 and stats["clip_high_frac"] == 1.0
    # the low side still uses eps_low: 0.79 < 0.8 with A < 0 is clipped
    loss, grad, stats = _single_token(0.79, -1.0, eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx(0.8) and grad == 0.0 and stats["clip_low_frac"] == 1.0
    loss, grad, _ = _single_token(0.81, -1.0, eps_low=0.2, eps_high=0.28)
    assert loss == pytest.approx(0.81) and grad == pytest.approx(0.81)


def test_r1_very_large_clip():
    # eps = 10: 1 - eps < 0 can never bind (rho > 0); only rho > 11 is clipped (A > 0)
    _, grad, stats = _single_token(0.01, -1.0, eps_low=10.0)
    assert grad == pytest.approx(0.01) and stats["clip_frac"] == 0.0
    _, grad, _ = _single_token(5.0, 1.0, eps_low=10.0)
    assert grad == pytest.approx(-5.0)
    loss, grad, stats = _single_token(12.0, 1.0, eps_low=10.0)
    assert loss == pytest.approx(-11.0) and grad == 0.0 and stats["clip_high_frac"] == 1.0


def test_extreme_log_ratio_is_clamped_not_inf():
    lp = torch.tensor([[200.0, -200.0]], requires_grad=True)
    ref = torch.tensor([[-300.0, 300.0]])
    loss, stats = grpo_loss(lp, torch.zeros(1, 2), torch.tensor([1.0]), torch.ones(1, 2),
                            ref_logprobs=ref, beta=0.5, eps_low=10.0, loss_agg="token_mean")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(lp.grad).all()
    assert all(math.isfinite(v) for v in stats.values())


@pytest.mark.parametrize("agg", AGGS)
def test_denominator_makes_micro_batches_sum_to_full_batch(agg):
    lp, old, adv, mask, ref = _batch()
    kw = dict(ref_logprobs=ref, beta=BETA, eps_low=EPS_LOW, eps_high=EPS_HIGH, loss_agg=agg,
              max_tokens=MAX_TOKENS)
    full, _ = grpo_loss(lp, old, adv, mask, **kw)
    denom = {"seq_mean": 4, "token_mean": int(mask.sum()), "constant": 4 * MAX_TOKENS}[agg]
    parts = [
        grpo_loss(lp[s], old[s], adv[s], mask[s], denominator=denom,
                  **{**kw, "ref_logprobs": ref[s]})[0]
        for s in (slice(0, 1), slice(1, 4))
    ]
    assert (parts[0] + parts[1]).item() == pytest.approx(full.item(), abs=1e-7)


def test_loss_argument_validation():
    lp, old, adv, mask, _ = _batch()
    with pytest.raises(ValueError, match="max_tokens"):
        grpo_loss(lp, old, adv, mask, loss_agg="constant")
    with pytest.raises(ValueError, match="loss_agg"):
        grpo_loss(lp, old, adv, mask, loss_agg="sum")
    with pytest.raises(ValueError, match="advantages"):
        grpo_loss(lp, old, adv[:3], mask, loss_agg="seq_mean")
    with pytest.raises(ValueError, match="old_logprobs"):
        grpo_loss(lp, old[:, :3], adv, mask, loss_agg="seq_mean")


# --------------------------------------------------------------------------------------
# advantages and zero-variance groups
# --------------------------------------------------------------------------------------
REWARDS = [1.0, 0.0, 0.0, 0.0, 1.0, 1.0, 1.0, 1.0, 0.0, 1.0, 2.0, 3.0]  # G = 4


def test_group_std_advantages_known_numbers():
    adv = group_advantages(torch.tensor(REWARDS), 4, "group_std", eps=1e-4).tolist()
    # group 0: mean 0.25, sample std sqrt((0.75^2 + 3*0.25^2)/3) = 0.5
    want = [0.75 / 0.5001] + [-0.25 / 0.5001] * 3
    want += [0.0] * 4  # all-equal group
    s = math.sqrt(5 / 3)  # [0,1,2,3]: mean 1.5, sample std sqrt(5/3)
    want += [(r - 1.5) / (s + 1e-4) for r in (0.0, 1.0, 2.0, 3.0)]
    assert adv == pytest.approx(want, abs=1e-6)


def test_group_mean_advantages_known_numbers():
    adv = group_advantages(torch.tensor(REWARDS), 4, "group_mean").tolist()
    assert adv == pytest.approx([0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0, -1.5, -0.5, 0.5, 1.5], abs=1e-7)


def test_batch_std_advantages_known_numbers():
    adv = group_advantages(torch.tensor(REWARDS), 4, "batch_std", eps=1e-4).tolist()
    centred = [0.75, -0.25, -0.25, -0.25, 0, 0, 0, 0, -1.5, -0.5, 0.5, 1.5]
    std = math.sqrt(sum(c * c for c in centred) / 11)  # sample std of the centred batch (mean 0)
    assert adv == pytest.approx([c / (std + 1e-4) for c in centred], abs=1e-6)


@pytest.mark.parametrize("mode", ["group_std", "group_mean", "batch_std"])
def test_all_equal_groups_give_exact_zero_in_every_mode(mode):
    r = torch.tensor([0.1, 0.1, 0.1, 1 / 3, 1 / 3, 1 / 3, 0.7, 0.2, 0.1], dtype=torch.float32)
    adv = group_advantages(r, 3, mode)
    assert torch.equal(adv[:6], torch.zeros(6))
    assert (adv[6:] != 0).all()
    flat = group_advantages(torch.full((6,), 0.3), 3, mode)  # whole batch flat: no nan
    assert torch.equal(flat, torch.zeros(6))


def test_advantages_edge_cases():
    assert torch.equal(group_advantages(torch.tensor([1.0, 0.0]), 1, "group_std"), torch.zeros(2))
    assert group_advantages(torch.tensor([1, 0, 0, 0]), 2, "group_std").dtype == torch.float32
    assert group_advantages(torch.tensor([1.0, 0.0], dtype=torch.float64), 2).dtype == torch.float64
    with pytest.raises(ValueError):
        group_advantages(torch.tensor([1.0, 0.0, 1.0]), 2, "group_std")
    with pytest.raises(ValueError, match="mode"):
        group_advantages(torch.tensor([1.0, 0.0]), 2, "none")


def test_zero_variance_groups():
    zv = zero_variance_groups(torch.tensor(REWARDS), 4)
    assert zv.dtype == torch.bool and zv.tolist() == [False, True, False]
    assert zero_variance_groups(torch.tensor([0.0, 0.0, 1.0, 1.0, 0.5, 0.2]), 2).tolist() == [True, True, False]


# --------------------------------------------------------------------------------------
# token_logprobs and masked_entropy
# --------------------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
@pytest.mark.parametrize("chunk", [None, 1, 3])
def test_token_logprobs_equals_log_softmax_gather_exactly(dtype, chunk):
    torch.manual_seed(1)
    logits = (torch.randn(3, 7, 11) * 3).to(dtype)
    tokens = torch.randint(0, 11, (3, 7))
    want = torch.log_softmax(logits.float() if dtype != torch.float64 else logits, -1)
    want = want.gather(-1, tokens[..., None]).squeeze(-1)
    got = token_logprobs(logits, tokens, chunk_size=chunk)
    assert got.dtype == want.dtype and torch.equal(got, want)
    # with grad: same values, gradient equal to autograd's
    leaf = logits.clone().requires_grad_(True)
    got = token_logprobs(leaf, tokens, chunk_size=chunk)
    assert torch.equal(got.detach(), want)
    g = torch.randn(3, 7, dtype=got.dtype)
    (got * g).sum().backward()
    ref_leaf = logits.clone().requires_grad_(True)
    ref = torch.log_softmax(ref_leaf.float() if dtype != torch.float64 else ref_leaf, -1)
    (ref.gather(-1, tokens[..., None]).squeeze(-1) * g).sum().backward()
    assert leaf.grad.dtype == dtype
    tol = {torch.float32: 1e-6, torch.bfloat16: 1e-2, torch.float64: 1e-12}[dtype]
    assert torch.allclose(leaf.grad.double(), ref_leaf.grad.double(), atol=tol, rtol=0)


def test_token_logprobs_gradcheck():
    torch.manual_seed(2)
    logits = torch.randn(2, 3, 5, dtype=torch.float64, requires_grad=True)
    tokens = torch.randint(0, 5, (2, 3))
    assert torch.autograd.gradcheck(lambda x: token_logprobs(x, tokens, chunk_size=2), (logits,))


def test_masked_entropy_known_distributions():
    V = 13
    logits = torch.zeros(2, 3, V)  # uniform -> log V
    assert masked_entropy(logits, torch.ones(2, 3)) == pytest.approx(math.log(V), abs=1e-6)
    # masked-out positions are ignored: make them near-deterministic
    logits[1, 2] = 0.0
    logits[1, 2, 0] = 100.0
    mask = torch.ones(2, 3)
    mask[1, 2] = 0
    assert masked_entropy(logits, mask, chunk_size=1) == pytest.approx(math.log(V), abs=1e-6)
    # two equally likely tokens (others ~0) -> log 2; mixed with uniform rows -> average
    two = torch.full((1, 2, 4), -1e4)
    two[..., :2] = 0.0
    assert masked_entropy(two, torch.ones(1, 2)) == pytest.approx(math.log(2), abs=1e-6)
    mixed = torch.cat([two, torch.zeros(1, 2, 4)], dim=1).bfloat16()
    assert masked_entropy(mixed, torch.ones(1, 4), chunk_size=3) == pytest.approx(
        (math.log(2) + math.log(4)) / 2, abs=1e-5
    )
    assert masked_entropy(logits, torch.zeros(2, 3)) == 0.0
