"""The verl estimator ``delta_belief_turn_grpo``: found through verl's registry, equal to our core.

Per-turn rewards are encoded as verl sees them: r_t at the last token of the policy's t-th message
(the t-th run of 1s in ``response_mask``), 0 on every other token.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import pytest
import torch
from verl.protocol import DataProto
from verl.trainer.ppo.core_algos import get_adv_estimator_fn
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.utils.config import omega_conf_to_dataclass

from deltabelief.advantages import grpo, to_token_level, turn_grpo
from deltabelief.config import EstimatorConfig, load_config
from deltabelief.integrations.verl.config_gen import compose_verl_config
from deltabelief.integrations.verl.estimator import ESTIMATOR_FNS, decode_turn_rewards, use_estimator_options

EPS = 1e-6


def encode(turn_rewards: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """Test-side encoder (a plain loop): r_t on the last token of the t-th run of 1s."""
    out = torch.zeros(response_mask.shape)
    for i in range(response_mask.shape[0]):
        k = -1
        for pos in range(response_mask.shape[1]):
            inside = bool(response_mask[i, pos])
            if inside and (pos == 0 or not response_mask[i, pos - 1]):
                k += 1
            if inside and (pos + 1 == response_mask.shape[1] or not response_mask[i, pos + 1]):
                out[i, pos] = turn_rewards[i, k]
    return out


def hand_batch():
    """Three rollouts: two of target 'a' (one finishes after 1 turn), one of target 'b' (a group of one)."""
    mask = torch.tensor([
        [1, 1, 0, 1, 0, 0, 0, 0],  # turns: tokens 0-1, token 3
        [1, 1, 1, 0, 0, 0, 0, 0],  # one turn: tokens 0-2 (finished)
        [1, 0, 1, 0, 1, 0, 0, 0],  # three turns: tokens 0, 2, 4
    ])
    rewards = torch.zeros(3, 8)
    rewards[0, 1], rewards[0, 3] = 1.0, 3.0
    rewards[1, 2] = 3.0
    rewards[2, 0], rewards[2, 2], rewards[2, 4] = 2.0, -1.0, 0.5
    index = np.array(["a", "a", "b"], dtype=object)
    return rewards, mask, index


def test_verl_registry_returns_our_estimator():
    assert get_adv_estimator_fn("delta_belief_turn_grpo") is ESTIMATOR_FNS["turn_grpo"]
    assert get_adv_estimator_fn("delta_belief_grpo") is ESTIMATOR_FNS["grpo"]


def test_hand_computed_turn_grpo_with_a_finished_rollout_and_a_group_of_one():
    rewards, mask, index = hand_batch()
    adv, returns = get_adv_estimator_fn("delta_belief_turn_grpo")(
        token_level_rewards=rewards, response_mask=mask, index=index, config=None)
    # group a, turn 1: rewards [1, 3], mean 2, unbiased std sqrt(2)
    a1 = 1.0 / (math.sqrt(2.0) + EPS)
    # group a, turn 2: row 1 finished and counts as 0 (reference default): [3, 0], mean 1.5, std sqrt(4.5)
    a2 = 1.5 / (math.sqrt(4.5) + EPS)
    single = 1.0 / (1.0 + EPS)  # group b has one member: mean 0, std 1
    expected = torch.tensor([
        [-a1, -a1, 0, a2, 0, 0, 0, 0],
        [a1, a1, a1, 0, 0, 0, 0, 0],
        [2 * single, 0, -1 * single, 0, 0.5 * single, 0, 0, 0],
    ])
    torch.testing.assert_close(adv, expected, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(returns, adv)


@contextlib.contextmanager
def options(**values):
    """Estimator options as DeltaBeliefTrainer sets them, restored to the defaults afterwards."""
    use_estimator_options(EstimatorConfig(**values))
    try:
        yield
    finally:
        use_estimator_options(EstimatorConfig())


def test_finished_rollouts_leave_later_statistics_when_the_option_is_off():
    rewards, mask, index = hand_batch()
    with options(include_finished=False):
        adv, _ = get_adv_estimator_fn("delta_belief_turn_grpo")(
            token_level_rewards=rewards, response_mask=mask, index=index, config=None)
    # group a, turn 2: only row 0 still plays -> a group of one: 3 / (1 + eps)
    assert adv[0, 3].item() == pytest.approx(3.0 / (1.0 + EPS), abs=1e-6)
    assert adv[1, 3].item() == 0.0


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("include_finished", [True, False])
def test_matches_core_on_random_batches(seed, include_finished):
    gen = torch.Generator().manual_seed(seed)
    batch, length, max_turns = 12, 40, 5
    mask = torch.zeros(batch, length, dtype=torch.long)
    num_turns = torch.randint(0, max_turns + 1, (batch,), generator=gen)  # 0 turns: an empty response
    for i in range(batch):
        pos = 0
        for _ in range(int(num_turns[i])):
            run = int(torch.randint(1, 4, (1,), generator=gen))
            mask[i, pos:pos + run] = 1
            pos += run + int(torch.randint(1, 3, (1,), generator=gen))  # observation tokens
    width = int(num_turns.max())
    turn_mask = torch.arange(width)[None, :] < num_turns[:, None]
    turn_rewards = torch.randn(batch, width, generator=gen) * turn_mask
    groups = torch.randint(0, 4, (batch,), generator=gen)
    groups[0] = 99  # a group of one
    index = np.array([f"uid-{g}" for g in groups.tolist()], dtype=object)
    with options(include_finished=include_finished):
        adv, _ = get_adv_estimator_fn("delta_belief_turn_grpo")(
            token_level_rewards=encode(turn_rewards, mask), response_mask=mask, index=index, config=None)

    core = turn_grpo(turn_rewards, turn_mask, groups, include_finished=include_finished)
    torch.testing.assert_close(adv, to_token_level(core, mask), rtol=1e-6, atol=1e-6)
    decoded, decoded_mask = decode_turn_rewards(encode(turn_rewards, mask), mask)
    torch.testing.assert_close(decoded, turn_rewards)
    assert torch.equal(decoded_mask, turn_mask)


def test_trajectory_estimator_matches_core_grpo():
    rewards, mask, index = hand_batch()
    turn_rewards, turn_mask = decode_turn_rewards(rewards, mask)
    adv, _ = get_adv_estimator_fn("delta_belief_grpo")(
        token_level_rewards=rewards, response_mask=mask, index=index, config=None)
    expected = to_token_level(grpo(turn_rewards, turn_mask, torch.tensor([0, 0, 1])), mask)
    torch.testing.assert_close(adv, expected)


def test_verl_compute_advantage_dispatches_to_it_with_the_composed_algorithm_config():
    rewards, mask, index = hand_batch()
    config = load_config(None, ["estimator.include_finished=false", "train.targets_per_step=4", "ppo.mini_batch_size=16", "train.rollouts_per_target=4"])
    algorithm = compose_verl_config(config).algorithm
    data = DataProto.from_dict(tensors={"token_level_rewards": rewards, "response_mask": mask},
                               non_tensors={"uid": index})
    with options(include_finished=config.estimator.include_finished):  # as DeltaBeliefTrainer sets them
        typed = omega_conf_to_dataclass(algorithm)  # verl's AlgoConfig works as the estimator's config too
        out = compute_advantage(data, adv_estimator=algorithm.adv_estimator, config=typed)
        direct, _ = ESTIMATOR_FNS["turn_grpo"](rewards, mask, index=index, config=algorithm)
    default, _ = ESTIMATOR_FNS["turn_grpo"](rewards, mask, index=index, config=algorithm)
    torch.testing.assert_close(out.batch["advantages"], direct)
    assert out.batch["advantages"][0, 3].item() == pytest.approx(3.0 / (1.0 + EPS), abs=1e-6)
    assert not torch.equal(default, direct)  # include_finished=false took effect


def test_reward_off_a_turn_end_is_refused():
    rewards, mask, index = hand_batch()
    rewards[1, 7] = 1.0  # where verl puts an outcome reward: the last response token (not a policy token)
    with pytest.raises(ValueError, match="row 1, token 7"):
        ESTIMATOR_FNS["turn_grpo"](rewards, mask, index=index)


def test_missing_index_is_refused():
    rewards, mask, index = hand_batch()
    with pytest.raises(ValueError, match="uid"):
        ESTIMATOR_FNS["turn_grpo"](rewards, mask, index=None)
