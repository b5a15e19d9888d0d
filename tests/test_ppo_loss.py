"""The PPO clip loss: hand-computed values, gradients, masking and token-mean aggregation."""

import math

import pytest
import torch

from deltabelief.training.ppo_loss import ppo_clip_loss


def _five_tokens():
    """One row, six tokens; the last is masked out (an observation/template token).

    token  A    ρ     −A·ρ   −A·clip(ρ,0.8,1.28)  PPO max   dual (A<0) min(·, −3A)   loss
    0      +1   1.5   −1.5   −1.28                −1.28     -                        −1.28   (ε clip)
    1      +1   0.5   −0.5   −0.8                 −0.5      -                        −0.5
    2      −1   0.5   +0.5   +0.8                 +0.8      min(0.8, 3) = 0.8        +0.8    (ε clip)
    3      −1   5.0   +5.0   +1.28                +5.0      min(5, 3) = 3            +3.0    (dual clip)
    4      +2   1.0   −2.0   −2.0                 −2.0      -                        −2.0
    5      masked: ρ = 100, A = 7 -> ignored
    token mean = (−1.28 − 0.5 + 0.8 + 3.0 − 2.0) / 5 = 0.02 / 5 = 0.004
    """
    ratios = torch.tensor([[1.5, 0.5, 0.5, 5.0, 1.0, 100.0]])
    old = torch.full_like(ratios, -2.0)
    new = (old + ratios.log()).requires_grad_(True)
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, 2.0, 7.0]])
    mask = torch.tensor([[1, 1, 1, 1, 1, 0]])
    return new, old, adv, mask


def test_hand_computed_loss_and_stats():
    new, old, adv, mask = _five_tokens()
    loss, stats = ppo_clip_loss(new, old, adv, mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    assert loss.item() == pytest.approx(0.004, abs=1e-6)
    assert stats.policy_loss.item() == pytest.approx(0.004, abs=1e-6)
    assert stats.clip_fraction.item() == pytest.approx(2 / 5)  # tokens 0 and 2
    assert stats.dual_clip_fraction.item() == pytest.approx(1 / 5)  # token 3
    assert stats.num_tokens.item() == 5
    assert stats.ratio_max.item() == pytest.approx(5.0)  # the masked ρ = 100 is not seen
    assert stats.ratio_mean.item() == pytest.approx((1.5 + 0.5 + 0.5 + 5.0 + 1.0) / 5)
    # k3: (ρ − 1) − log ρ per token, averaged
    k3 = [(r - 1) - math.log(r) for r in (1.5, 0.5, 0.5, 5.0, 1.0)]
    assert stats.approx_kl.item() == pytest.approx(sum(k3) / 5, rel=1e-5)


def test_gradients_flow_only_through_unclipped_policy_tokens():
    new, old, adv, mask = _five_tokens()
    loss, _ = ppo_clip_loss(new, old, adv, mask)
    loss.backward()
    grad = new.grad[0]
    # d(−A·ρ)/d logπ = −A·ρ; divided by the 5 tokens of the mean.
    assert grad[1].item() == pytest.approx(-1.0 * 0.5 / 5)  # A>0, ρ below the clip: pushes logπ up
    assert grad[4].item() == pytest.approx(-2.0 * 1.0 / 5)
    assert grad[0].item() == 0.0  # ε-clipped
    assert grad[2].item() == 0.0  # ε-clipped (A<0, ρ<1−ε_low)
    assert grad[3].item() == 0.0  # dual-clipped: constant −A·c
    assert grad[5].item() == 0.0  # masked token: no gradient at all


def test_positive_advantage_step_raises_logprob_and_masked_tokens_get_no_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 7, 11, requires_grad=True)  # [B, L, V] a stand-in policy
    tokens = torch.randint(0, 11, (2, 7))
    mask = torch.tensor([[0, 0, 1, 1, 0, 0, 0], [0, 0, 0, 0, 1, 1, 1]])  # policy tokens of one turn each
    adv = torch.tensor([[0.0, 0.0, 1.5, 1.5, 0.0, 0.0, 0.0], [0.0] * 4 + [-0.5] * 3])

    def logp():
        return torch.log_softmax(logits, -1).gather(-1, tokens[..., None])[..., 0]  # [B, L]

    before = logp().detach()
    loss, _ = ppo_clip_loss(logp(), before, adv, mask)
    loss.backward()
    masked_rows = (mask == 0)
    assert torch.all(logits.grad[masked_rows] == 0)  # answer/template positions: exactly no gradient
    with torch.no_grad():
        logits -= 0.5 * logits.grad
    after = logp().detach()
    assert torch.all(after[0, 2:4] > before[0, 2:4])  # positive advantage: more likely
    assert torch.all(after[1, 4:7] < before[1, 4:7])  # negative advantage: less likely
    assert torch.equal(after[masked_rows], before[masked_rows])


def test_micro_batches_with_shared_denominator_equal_the_whole_batch():
    torch.manual_seed(1)
    old = torch.randn(4, 9)
    new_full = (old + 0.3 * torch.randn(4, 9)).requires_grad_(True)
    adv = torch.randn(4, 9)
    mask = (torch.rand(4, 9) > 0.4).long()
    whole, _ = ppo_clip_loss(new_full, old, adv, mask)
    whole.backward()
    new_split = new_full.detach().clone().requires_grad_(True)
    total = int(mask.sum())
    parts = [ppo_clip_loss(new_split[r], old[r], adv[r], mask[r], num_tokens=total)[0] for r in (slice(0, 1), slice(1, 4))]
    for part in parts:
        part.backward()
    assert sum(p.item() for p in parts) == pytest.approx(whole.item(), abs=1e-6)
    torch.testing.assert_close(new_split.grad, new_full.grad)


def test_identical_policies_and_zero_advantage_give_zero_loss():
    old = torch.randn(3, 5)
    loss, stats = ppo_clip_loss(old.clone(), old, torch.zeros(3, 5), torch.ones(3, 5))
    assert loss.item() == 0.0
    assert stats.approx_kl.item() == pytest.approx(0.0, abs=1e-7)
    assert stats.clip_fraction.item() == 0.0


def test_empty_mask_and_bad_shapes():
    loss, stats = ppo_clip_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), torch.zeros(1, 3))
    assert loss.item() == 0.0 and stats.num_tokens.item() == 0
    with pytest.raises(ValueError, match=r"\[B, L\]"):
        ppo_clip_loss(torch.zeros(1, 3), torch.zeros(1, 4), torch.zeros(1, 3), torch.zeros(1, 3))
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_clip_loss(torch.zeros(1, 3), torch.zeros(1, 3), torch.zeros(1, 3), torch.ones(1, 3), dual_clip=1.0)
