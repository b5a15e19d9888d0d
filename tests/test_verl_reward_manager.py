"""Per-turn rewards in verl's layout, and the trainer hook that scores beliefs with the actor.

The hook test plays two games with verl's AgentLoopWorker (see test_verl_agent_loop.py), then runs
``DeltaBeliefTrainer._compute_old_log_prob`` with a CPU stand-in for the FSDP actor worker group:
a tiny causal LM answering ``compute_log_prob`` in verl's no-padding format. verl's own padding
conversions, ``extract_reward`` and ``compute_advantage`` run unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from verl.protocol import DataProto
from verl.trainer.ppo.ray_trainer import compute_advantage
from verl.trainer.ppo.reward import extract_reward
from verl.utils import tensordict_utils as tu
from verl.workers.reward_manager import get_reward_manager_cls

from deltabelief.belief import delta_beliefs, score_beliefs_per_prefix
from deltabelief.config import RewardConfig
from deltabelief.integrations.verl.belief import score_batch_beliefs
from deltabelief.integrations.verl.packed_belief import score_payload
from deltabelief.integrations.verl.reward_manager import (
    BELIEF_KEY, BELIEF_MASK_KEY, DeltaBeliefRewardManager, place_turn_rewards,
)
from deltabelief.integrations.verl.runner import DeltaBeliefTrainer
from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.rewards import turn_rewards
from deltabelief.trajectory import PolicyTurn, Trajectory
from deltabelief.types import Target
from test_verl_agent_loop import play_games


def test_registered_in_verls_reward_manager_registry():
    assert get_reward_manager_cls("delta_belief") is DeltaBeliefRewardManager


def test_place_turn_rewards_puts_r_t_on_each_turns_last_token():
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 1, 1, 0], [0, 1, 0, 0, 0, 0, 0, 0, 0]])
    rewards = torch.tensor([[0.5, -1.0, 2.0], [3.0, 0.0, 0.0]])
    expected = torch.tensor([[0, 0.5, 0, 0, -1.0, 0, 0, 2.0, 0], [0, 3.0, 0, 0, 0, 0, 0, 0, 0]])
    assert torch.equal(place_turn_rewards(rewards, mask), expected)
    with pytest.raises(ValueError, match="row 0: 3 policy turns but only 2 rewards"):
        place_turn_rewards(rewards[:, :2], mask)


def hand_batch() -> DataProto:
    """Two rollouts: solved in 2 turns; unsolved with an invalid and a repeated turn."""
    mask = torch.tensor([[1, 1, 0, 0, 1, 0, 0, 0], [1, 0, 1, 0, 1, 1, 0, 1]])
    log_beliefs = torch.tensor([[-4.0, -3.0, -1.0, 0.0, 0.0], [-5.0, -5.5, -4.5, -4.0, -6.0]])
    return DataProto.from_dict(
        tensors={"response_mask": mask, BELIEF_KEY: log_beliefs,
                 BELIEF_MASK_KEY: torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)},
        non_tensors={"db_statuses": np.array([["yes", "finished"], ["no", "invalid", "repeated", "no"]], dtype=object),
                     "db_solved": np.array([True, False], dtype=object)})


def test_reward_tensor_hand_computed():
    out = DeltaBeliefRewardManager(reward=RewardConfig())(hand_batch(), return_dict=True)
    # row 0: r_eog = 2.0 − 0.05·2 = 1.9 on every turn (turn-level estimator);
    #   turn 1: ΔB = −3 − (−4) = 1 -> +0.1·1; turn 2 wins: no belief term
    # row 1: r_eog = −0.05·4 = −0.2; ΔB = −0.5, 1.0, 0.5, −2.0 -> belief terms 0, 0.1, 0.05, 0
    #   penalties: invalid −5 (turn 2), repeated −1 (turn 3)
    expected = torch.zeros(2, 8)
    expected[0, 1], expected[0, 4] = 1.9 + 0.1, 1.9
    expected[1, 0], expected[1, 2], expected[1, 5], expected[1, 7] = -0.2, -0.2 + 0.1 - 5.0, -0.2 + 0.05 - 1.0, -0.2
    torch.testing.assert_close(out["reward_tensor"], expected)
    metrics = out["metrics"]  # names and definitions of docs/metrics.md
    assert metrics["rollout/success_rate"] == 0.5 and metrics["rollout/invalid_rate"] == 1 / 6
    assert metrics["reward/rollout_sum_mean"] == pytest.approx((2.0 + 1.9 + (-0.2 - 5.1 - 1.15 - 0.2)) / 2)
    assert metrics["belief/log_belief_initial_mean"] == pytest.approx(-4.5)
    assert metrics["belief/log_belief_final_mean"] == pytest.approx((-1.0 - 6.0) / 2)  # log b_N of each row
    assert out["reward_extra_info"]["turn_rewards"][0] == pytest.approx([2.0, 1.9])


def test_trajectory_estimators_get_the_outcome_on_the_last_turn_only():
    out = DeltaBeliefRewardManager(reward=RewardConfig(), estimator_name="grpo")(hand_batch())
    assert out[0, 1].item() == pytest.approx(0.1) and out[0, 4].item() == pytest.approx(1.9)


def test_unanswerable_moves_cost_the_invalid_penalty_unless_told_otherwise():
    batch = hand_batch()
    batch.non_tensor_batch["db_statuses"][1] = ["no", "unanswerable", "repeated", "no"]
    reward = RewardConfig(unanswerable_penalty=-2.0)
    as_invalid = DeltaBeliefRewardManager(reward=reward)(batch)
    own = DeltaBeliefRewardManager(reward=reward, unanswerable_as_invalid=False)(batch)
    assert as_invalid[1, 2].item() == pytest.approx(-0.2 + 0.1 - 5.0)
    assert own[1, 2].item() == pytest.approx(-0.2 + 0.1 - 2.0)


def test_statuses_must_match_the_policy_turns():
    batch = hand_batch()
    batch.non_tensor_batch["db_statuses"] = np.array([["yes"], ["no", "invalid", "repeated", "no"]], dtype=object)
    with pytest.raises(ValueError, match="row 0: 1 statuses but 2 runs"):
        DeltaBeliefRewardManager()(batch)


# ---------------------------------------------------------------- the trainer hook


class CpuActorWorkerGroup:
    """Stands in for verl's actor worker group: ``compute_log_prob`` on a no-padding TensorDict.

    Returns what verl's engine returns: nested ``log_probs``/``entropy`` where position i holds
    log π(x_{i+1} | x_≤i) at the batch's temperature, and ``metrics``. Two data-parallel ranks,
    so the trainer must pad the rows to an even count.
    """

    def __init__(self, model):
        self.model = model
        self._dispatch_info = {"actor": [0, 1]}
        self.num_rows: list[int] = []
        self.packed_rows: list[int] = []

    def compute_log_prob(self, data):
        assert len(data) % 2 == 0, "rows must divide evenly over the data-parallel ranks"
        self.num_rows.append(len(data))
        return cpu_log_probs(self.model, data)

    def compute_packed_beliefs(self, data: DataProto) -> DataProto:
        assert len(data) % 2 == 0, "rows must divide evenly over the data-parallel ranks"
        self.packed_rows.append(len(data))
        with torch.no_grad():
            return score_payload(self.model, data)


def cpu_log_probs(model, data):
    """verl's engine output for a no-padding TensorDict: nested ``log_probs``/``entropy``, ``metrics``."""
    temperature = tu.get(data, "temperature")
    log_probs, entropy = [], []
    with torch.no_grad():
        for ids, positions in zip(data["input_ids"].unbind(), data["position_ids"].unbind()):
            logits = model(input_ids=ids[None], position_ids=positions[None]).logits[0].float()
            logp = torch.log_softmax(logits / temperature, dim=-1)  # [n, V]
            picked = logp[:-1].gather(1, ids[1:, None])[:, 0]  # [n−1] log π(x_{i+1} | x_≤i)
            log_probs.append(torch.cat([picked, picked.new_zeros(1)]))
            entropy.append(-(logp.exp() * logp).sum(-1))
    nested = lambda rows: torch.nested.as_nested_tensor(rows, layout=torch.jagged)  # noqa: E731
    return tu.get_tensordict({"log_probs": nested(log_probs), "entropy": nested(entropy)},
                             non_tensor_dict={"metrics": {"mfu": 0.0}})


@pytest.fixture(scope="module")
def hooked(tmp_path_factory):
    verl_config, tokenizer, batch, rollout, _ = play_games(tmp_path_factory.mktemp("verl-hook"))
    model, _ = tiny_causal_lm(seed=3)
    batch = batch.union(rollout)  # as fit() does
    batch.meta_info["temperature"] = 1.0
    batch.meta_info["global_token_num"] = batch.batch["attention_mask"].sum(dim=1).tolist()
    reward_tensor, _ = extract_reward(batch)  # fit() takes the step's reward here, before the hook
    before = reward_tensor.clone()
    trainer = DeltaBeliefTrainer.__new__(DeltaBeliefTrainer)  # no Ray workers: set what the hook reads
    trainer.config, trainer.tokenizer = verl_config, tokenizer
    trainer.actor_rollout_wg = CpuActorWorkerGroup(model)
    old_log_prob, _ = trainer._compute_old_log_prob(batch)
    return trainer, model, tokenizer, batch, reward_tensor, before, old_log_prob


def trajectories(batch: DataProto) -> list[Trajectory]:
    """The same rollouts as our own Trajectory records (for the single-machine belief scorer)."""
    out = []
    width = batch.batch["prompts"].shape[1]
    for row in range(len(batch)):
        attention = batch.batch["attention_mask"][row].bool()
        ids = batch.batch["input_ids"][row][attention].tolist()
        prompt_length = int(attention[:width].sum())
        ends = list(batch.non_tensor_batch["db_turn_ends"][row])
        turns = [PolicyTurn(token_ids=[], span=(0, 0), logprobs=[], move="", answer="", status=s,
                            end_of_turn=prompt_length + e) for s, e in zip(batch.non_tensor_batch["db_statuses"][row],
                                                                           ends[1:])]
        target = str(batch.non_tensor_batch["db_target"][row])
        out.append(Trajectory(target=Target(target, "twenty_questions", target), group_id=row, sample_index=0,
                              input_ids=ids, prompt_length=prompt_length, turns=turns))
    return out


def test_hook_scores_beliefs_like_the_single_machine_scorer(hooked):
    trainer, model, tokenizer, batch, *_ = hooked
    reference = score_beliefs_per_prefix(model, tokenizer, trajectories(batch), "Is it '{target}'?")
    log_beliefs, mask = trainer.last_beliefs  # [2, 5]
    torch.testing.assert_close(log_beliefs, reference.log_beliefs, rtol=1e-4, atol=1e-4)
    assert torch.equal(mask, reference.mask)
    assert BELIEF_KEY not in batch.batch.keys()  # not shipped to the workers
    # the packed layout (the default): one row per game, then the rollouts' old-log-prob pass
    assert trainer.actor_rollout_wg.packed_rows == [2]
    assert trainer.actor_rollout_wg.num_rows == [2]


def test_hook_rewrites_the_reward_fit_already_holds(hooked):
    trainer, _, _, batch, reward_tensor, before, old_log_prob = hooked
    delta = delta_beliefs(*trainer.last_beliefs).delta  # [2, 4]
    turn_mask = torch.tensor([[True, True, False, False], [True, True, True, True]])
    expected_turns = turn_rewards(delta, [["yes", "finished"], ["no", "no", "invalid", "repeated"]], turn_mask,
                                  [True, False])
    expected = place_turn_rewards(expected_turns, batch.batch["response_mask"])
    torch.testing.assert_close(batch.batch["rm_scores"], expected)
    assert reward_tensor is batch.batch["rm_scores"]  # the contract the in-place write relies on
    assert not torch.equal(before, expected)  # the success score on the last token is gone
    assert old_log_prob.batch["old_log_probs"].shape == batch.batch["responses"].shape
    metrics = hooked[0]._delta_belief_metrics  # merged into verl's actor metrics by _update_actor
    assert metrics["rollout/success_rate"] == 0.5 and metrics["rollout/truncated_rate"] == 0.0


def test_a_step_without_belief_metrics_is_refused(hooked):
    trainer, _, _, batch, *_ = hooked
    assert any(name.startswith("belief/") for name in trainer._delta_belief_metrics)  # what the hook leaves
    bare = DeltaBeliefTrainer.__new__(DeltaBeliefTrainer)  # a step where the hook never ran
    with pytest.raises(RuntimeError, match="no ΔBelief metrics for this step"):
        bare._update_actor(batch)


def test_estimator_accepts_the_hooked_rewards(hooked):
    _, _, _, batch, reward_tensor, *_ = hooked
    data = DataProto.from_dict(tensors={"token_level_rewards": reward_tensor,
                                        "response_mask": batch.batch["response_mask"]},
                               non_tensors={"uid": batch.non_tensor_batch["uid"]})
    out = compute_advantage(data, adv_estimator="delta_belief_turn_grpo", config=None)
    mask = batch.batch["response_mask"].bool()
    assert bool((out.batch["advantages"][~mask] == 0).all())
    # each game is its own group here (a group of one): A = r_t / (1 + eps) on every token of turn t
    first_turn_end = int(batch.non_tensor_batch["db_turn_ends"][0][1])
    ends_of_turn_one = mask[0, :first_turn_end].nonzero().flatten()
    expected = reward_tensor[0, ends_of_turn_one[-1]] / (1 + 1e-6)
    torch.testing.assert_close(out.batch["advantages"][0, ends_of_turn_one], expected.expand(len(ends_of_turn_one)))


def test_belief_scoring_in_chunks_gives_the_same_table(hooked):
    trainer, _, tokenizer, batch, *_ = hooked
    calls_before = len(trainer.actor_rollout_wg.num_rows)
    log_beliefs, mask = score_batch_beliefs(batch, tokenizer, "Is it '{target}'?", trainer._actor_log_probs, chunk_size=3)
    torch.testing.assert_close(log_beliefs, trainer.last_beliefs[0], rtol=1e-5, atol=1e-5)
    assert torch.equal(mask, trainer.last_beliefs[1])
    assert trainer.actor_rollout_wg.num_rows[calls_before:] == [4, 4, 2]  # 3, 3, 2 rows, each padded to even
