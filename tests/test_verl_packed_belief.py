"""The packed belief pass on verl: one row per rollout, equal to the per-prefix pass, through verl's dispatch.

The actor workers are :class:`DeltaBeliefActorRolloutRefWorker` instances in this process with a
tiny random Llama standing in for the FSDP engine's module; their methods are bound to a worker
group by verl's own ``WorkerGroup._bind_worker_method`` and the Ray worker group's
``func_generator``, so the data goes through verl's real dispatch (split per data-parallel rank)
and collect (concat). Only Ray's object store is replaced: ``ray.put``/``ray.get`` are the identity.
"""

from __future__ import annotations

from contextlib import contextmanager
from types import SimpleNamespace

import numpy as np
import pytest
import ray
import torch
from verl.protocol import DataProto
from verl.single_controller.base.decorator import MAGIC_ATTR
from verl.single_controller.base.worker_group import WorkerGroup
from verl.single_controller.ray.base import func_generator
from verl.utils.model import compute_position_id_with_mask
from verl.workers.engine_workers import ActorRolloutRefWorker

from deltabelief.integrations.verl.belief import score_batch_beliefs
from deltabelief.integrations.verl.belief_worker import DeltaBeliefActorRolloutRefWorker, masked_attention
from deltabelief.integrations.verl.packed_belief import layout_tokens, packed_payload, score_beliefs_packed
from deltabelief.integrations.verl.runner import DeltaBeliefTrainer
from deltabelief.policy.chat import encode, observation_ids, prompt_ids
from deltabelief.policy.loading import tiny_causal_lm
from test_verl_reward_manager import cpu_log_probs

TEMPLATE = "Is it '{target}'?"
QUESTIONS = ["Is it alive?", "Is it an animal?", "Is it bigger than a person?", "Does it live in water?",
             "Is it a mammal?", "Can people keep it as a pet?", "Does it have four legs?", "Is it found in Africa?"]


def rollout_batch(tokenizer, games: list[tuple[str, str, int, int]]) -> DataProto:
    """A rollout batch in verl's layout, rendered with the chat template as the agent loop renders it.

    ``games``: (system prompt, target, turns, extra response tokens after h_N). Prompts are
    left-padded, responses right-padded; ``db_turn_ends`` in response coordinates (e_0 = 0).
    """
    prompts, responses, ends, targets = [], [], [], []
    for system, target, num_turns, extra in games:
        prompt = prompt_ids(tokenizer, [{"role": "system", "content": system},
                                        {"role": "user", "content": "Ask your first question."}])
        response, turn_ends = [], [0]
        for t in range(num_turns):
            response += encode(tokenizer, QUESTIONS[t % len(QUESTIONS)])
            response += observation_ids(tokenizer, "Yes." if t % 2 == 0 else "No.")
            turn_ends.append(len(response))
        response += encode(tokenizer, " trailing words")[:extra]  # after h_N: in no prefix
        prompts.append(prompt), responses.append(response), ends.append(turn_ends), targets.append(target)
    pad = tokenizer.pad_token_id
    width, length = max(map(len, prompts)), max(1, max(map(len, responses)))
    prompt_ids_ = torch.full((len(games), width), pad)  # [B, P]
    response_ids = torch.full((len(games), length), pad)  # [B, R]
    attention = torch.zeros((len(games), width + length), dtype=torch.long)  # [B, P + R]
    for row, (prompt, response) in enumerate(zip(prompts, responses)):
        prompt_ids_[row, width - len(prompt):] = torch.tensor(prompt)
        response_ids[row, : len(response)] = torch.tensor(response, dtype=torch.long)
        attention[row, width - len(prompt): width + len(response)] = 1
    non_tensors = {"db_turn_ends": np.empty(len(games), dtype=object), "db_target": np.array(targets, dtype=object)}
    for row, e in enumerate(ends):
        non_tensors["db_turn_ends"][row] = e
    return DataProto.from_dict(
        tensors={"prompts": prompt_ids_, "responses": response_ids, "attention_mask": attention,
                 "input_ids": torch.cat([prompt_ids_, response_ids], dim=1),
                 "position_ids": compute_position_id_with_mask(attention)},
        non_tensors=non_tensors)


# ---------------------------------------------------------------- verl's worker group, in this process


class CpuEngine:
    """Stands in for verl's FSDP engine: what ``compute_packed_beliefs`` reads."""

    def __init__(self, model):
        self.module = model
        self.engine_config = SimpleNamespace(ulysses_sequence_parallel_size=1, use_fused_kernels=False)
        self._autocast_dtype = torch.float32  # fp32 compute: no autocast, as the engine does
        self.eval_calls = 0

    @contextmanager
    def eval_mode(self):
        self.eval_calls += 1
        self.module.eval()
        yield


class CpuTrainingWorker:
    """Stands in for verl's inner TrainingWorker: its engine and ``infer_batch`` (the log-prob pass)."""

    def __init__(self, model):
        self.engine = CpuEngine(model)

    def infer_batch(self, data):
        return cpu_log_probs(self.engine.module, data)


def actor_worker(model, dp_rank: int) -> DeltaBeliefActorRolloutRefWorker:
    """Our worker class without Ray or a process group: the dispatch info the actor engine registers."""
    worker = object.__new__(DeltaBeliefActorRolloutRefWorker)
    worker._Worker__dispatch_dp_rank, worker._Worker__collect_dp_rank = {}, {}
    worker._register_dispatch_collect_info("actor", dp_rank=dp_rank, is_collect=True)
    worker.actor = CpuTrainingWorker(model)
    worker.enable_routing_replay = False  # a dense model (read by verl's compute_log_prob wrapper)
    return worker


class InProcessWorkerGroup(WorkerGroup):
    """verl's WorkerGroup over workers in this process, methods bound by verl's own machinery."""

    def __init__(self, workers):
        super().__init__(resource_pool=None)
        self._workers = workers
        self.calls: list[tuple[str, list[int]]] = []  # (method, rows per rank)
        self._bind_worker_method(type(workers[0]), func_generator)

    def execute_all(self, method_name: str, *args, **kwargs):
        """As RayWorkerGroup.execute_all_async: per-rank lists are split, anything else is broadcast."""
        n = len(self._workers)
        split = all(isinstance(a, list) and len(a) == n for a in (*args, *kwargs.values()))
        pick = (lambda value, i: value[i]) if split else (lambda value, i: value)  # noqa: E731
        if method_name in ("compute_packed_beliefs", "compute_log_prob"):
            self.calls.append((method_name, [len(pick(args[0], i)) for i in range(n)]))
        return [getattr(worker, method_name)(*(pick(a, i) for a in args), **{k: pick(v, i) for k, v in kwargs.items()})
                for i, worker in enumerate(self._workers)]

    def execute_rank_zero(self, method_name: str, *args, **kwargs):
        return getattr(self._workers[0], method_name)(*args, **kwargs)


@pytest.fixture
def local_object_store(monkeypatch):
    """verl's dispatch puts each rank's share into Ray's object store and gets the results back."""
    monkeypatch.setattr(ray, "put", lambda value: value)
    monkeypatch.setattr(ray, "get", lambda value: value)


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm(seed=3)


@pytest.fixture(scope="module")
def batch(tiny):
    _, tokenizer = tiny
    # 0, 1, 3 and 6 turns; prompts of different lengths (left padding); responses of different
    # lengths (right padding), one with tokens after h_N
    return rollout_batch(tokenizer, [("Find the word.", "dog", 3, 0),
                                     ("You play Twenty Questions; ask one yes-or-no question a turn.",
                                      "ice cream", 6, 2),
                                     ("Guess.", "apple", 1, 0),
                                     ("You play Twenty Questions.", "cat", 0, 0)])


def trainer_with(model, tokenizer, num_ranks: int = 2) -> DeltaBeliefTrainer:
    trainer = DeltaBeliefTrainer.__new__(DeltaBeliefTrainer)  # no Ray: what the belief passes read
    trainer.tokenizer = tokenizer
    trainer.actor_rollout_wg = InProcessWorkerGroup([actor_worker(model, rank) for rank in range(num_ranks)])
    return trainer


# ---------------------------------------------------------------- (c) registration and dispatch


def test_compute_packed_beliefs_is_registered_like_compute_log_prob():
    ours = getattr(DeltaBeliefActorRolloutRefWorker.compute_packed_beliefs, MAGIC_ATTR)
    verls = getattr(ActorRolloutRefWorker.compute_log_prob, MAGIC_ATTR)
    for key in ("dispatch_fn", "collect_fn"):  # the nd dispatch on the actor mesh, as the trainer uses it
        mine, theirs = ours["dispatch_mode"][key], verls["dispatch_mode"][key]
        assert (mine.func, mine.args) == (theirs.func, theirs.args) and theirs.args == ("actor",)
    assert (ours["execute_mode"], ours["blocking"]) == (verls["execute_mode"], verls["blocking"])
    assert issubclass(DeltaBeliefActorRolloutRefWorker, ActorRolloutRefWorker)


def test_the_task_runner_puts_our_worker_on_the_actor_role():
    from omegaconf import OmegaConf
    from verl.trainer.ppo.ray_trainer import Role

    from deltabelief.integrations.verl.runner import DeltaBeliefTaskRunner

    runner = DeltaBeliefTaskRunner.__ray_actor_class__.__new__(DeltaBeliefTaskRunner.__ray_actor_class__)
    runner.role_worker_mapping, runner.mapping = {}, {}
    config = OmegaConf.create({"actor_rollout_ref": {"model": {"lora_rank": 0}, "actor": {"use_kl_loss": False}},
                               "algorithm": {"use_kl_in_reward": False}})
    cls, _ = runner.add_actor_rollout_worker(config)
    assert cls is DeltaBeliefActorRolloutRefWorker
    assert runner.role_worker_mapping[Role.ActorRollout].__ray_actor_class__ is DeltaBeliefActorRolloutRefWorker


def test_packed_rows_round_trip_through_verls_dispatch(tiny, batch, local_object_store):
    model, tokenizer = tiny
    trainer = trainer_with(model, tokenizer, num_ranks=2)
    scored = score_beliefs_packed(batch, tokenizer, TEMPLATE, trainer._actor_packed_beliefs, micro_batch_size=1)
    # 4 rollouts, one row each, split 2 + 2 over the ranks; each rank one forward per row
    assert trainer.actor_rollout_wg.calls == [("compute_packed_beliefs", [2, 2])]
    assert [w.actor.engine.eval_calls for w in trainer.actor_rollout_wg._workers] == [1, 1]
    assert scored.mask.sum(dim=1).tolist() == [4, 7, 2, 1]  # N+1 values per rollout


def test_an_odd_number_of_rollouts_is_padded_for_the_ranks_and_trimmed(tiny, batch, local_object_store):
    model, tokenizer = tiny
    three = batch[:3]
    trainer = trainer_with(model, tokenizer, num_ranks=2)
    scored = score_beliefs_packed(three, tokenizer, TEMPLATE, trainer._actor_packed_beliefs, micro_batch_size=2)
    assert trainer.actor_rollout_wg.calls == [("compute_packed_beliefs", [2, 2])]  # 3 rows + 1 repeated
    full = score_beliefs_packed(batch, tokenizer, TEMPLATE, trainer._actor_packed_beliefs, micro_batch_size=2)
    torch.testing.assert_close(scored.log_beliefs, full.log_beliefs[:3, : scored.log_beliefs.shape[1]])


# ---------------------------------------------------------------- (a) packed == per-prefix


def test_packed_verl_path_equals_the_per_prefix_verl_path(tiny, batch, local_object_store):
    model, tokenizer = tiny
    trainer = trainer_with(model, tokenizer, num_ranks=2)
    per_prefix, per_prefix_mask = score_batch_beliefs(batch, tokenizer, TEMPLATE, trainer._actor_log_probs, chunk_size=5)
    packed = score_beliefs_packed(batch, tokenizer, TEMPLATE, trainer._actor_packed_beliefs, micro_batch_size=3)
    methods = [name for name, _ in trainer.actor_rollout_wg.calls]
    assert set(methods) == {"compute_log_prob", "compute_packed_beliefs"}  # both through verl's dispatch
    assert torch.equal(packed.mask, per_prefix_mask)
    assert (packed.log_beliefs - per_prefix).abs().max().item() <= 1e-3
    torch.testing.assert_close(packed.log_beliefs, per_prefix, rtol=0, atol=1e-4)  # fp32: far inside 1e-3
    assert (packed.log_beliefs[packed.mask] < 0).all()


def test_unlocatable_targets_are_left_out_of_the_payload(tiny, batch):
    _, tokenizer = tiny
    blank = batch[:2]
    blank.non_tensor_batch["db_target"] = np.array(["dog", "   "], dtype=object)
    plan = packed_payload(blank, tokenizer, TEMPLATE, micro_batch_size=1, on_unlocatable="exclude")
    assert plan.excluded == [1] and plan.payload.batch["db_row"].tolist() == [0]
    assert plan.shape == (2, 7)


def test_the_pass_switches_to_an_attention_that_takes_4d_masks_and_back(tiny):
    model, _ = tiny
    model.set_attn_implementation("flex_attention")  # stands in for verl's flash_attention_2 (no GPU here)
    try:
        with masked_attention(model):
            assert model.config._attn_implementation == "sdpa"
        assert model.config._attn_implementation == "flex_attention"
    finally:
        model.set_attn_implementation("sdpa")


def test_the_packed_pass_refuses_sequence_parallel_engines(tiny, batch, local_object_store):
    model, tokenizer = tiny
    trainer = trainer_with(model, tokenizer, num_ranks=1)
    trainer.actor_rollout_wg._workers[0].actor.engine.engine_config.ulysses_sequence_parallel_size = 2
    with pytest.raises(ValueError, match="ulysses_sequence_parallel_size=1"):
        score_beliefs_packed(batch, tokenizer, TEMPLATE, trainer._actor_packed_beliefs, micro_batch_size=1)


# ---------------------------------------------------------------- (b) tokens per trajectory token


def test_packed_layout_costs_at_most_1_3_tokens_per_trajectory_token_at_20_turns(tiny):
    _, tokenizer = tiny
    games = rollout_batch(tokenizer, [("You are playing Twenty Questions. Ask one yes-or-no question per turn.",
                                       "elephant", 20, 0)])
    tokens = layout_tokens(games, tokenizer, TEMPLATE)
    assert tokens["packed"] / tokens["trajectory"] <= 1.3
    assert tokens["per_prefix"] / tokens["trajectory"] > 10  # what the per-prefix rows re-encode
