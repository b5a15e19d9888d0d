"""A verl agent loop that plays one game turn by turn: the policy asks, the judge answers.

verl's agent-loop workers create one :class:`DeltaBeliefGameLoop` per rollout (through
``hydra.utils.instantiate`` of the registry entry, see ``config_gen.write_agent_loop_config``) and
call :meth:`~DeltaBeliefGameLoop.run` with the sampling parameters and one dataset row. Each turn:

1. the policy's move is sampled from the rollout server (vLLM, over verl's server manager,
   ``server_manager.generate(prompt_ids=…)``), at most ``policy.max_new_tokens`` tokens;
2. if the move did not end with the end-of-turn token (it hit the token budget) that token is
   appended as a template token;
3. the game checks the move and asks the judge (``judge.backend``: 'openai' for a vLLM-served
   judge, or 'kb') on the worker's event loop (:mod:`deltabelief.judges.async_client`: at most
   ``judge.max_concurrency`` requests in flight per worker, no thread pool);
4. the answer is appended as a user message followed by the next assistant header, with verl's
   continuous-token builder (``ct_merge_context_msg``), so the model-family boundary rules are verl's.
   An observation longer than ``cluster.observation_token_reserve`` tokens has its answer cut to fit.

A game whose judge call still fails after its retries is not an error of the step: the game stops,
``db_judge_failed`` holds the error, its ``response_mask`` is all 0 and it has no statuses, and the
trainer hook takes it out of its group (:mod:`.runner`), so it gets zero advantage.

Token layout of the output (response coordinates, after the prompt h_0)::

    move_1 | obs_1 | move_2 | obs_2 | … | move_N | obs_N
    response_mask: 1 on move_t (the sampled ids exactly), 0 on obs_t

``extra_fields`` (they become non-tensor batch keys): ``db_judge_failed`` ('' or the error);
``db_turn_ends`` [e_0 = 0, e_1 … e_N], where
h_t ends (after obs_t, so an elicitation can be appended there); ``db_statuses`` and ``db_moves``
per turn; ``db_solved``; ``db_truncated`` (the game stopped because ``rollout.response_length`` had
no room for another turn); ``db_target`` and ``db_target_id``.

``reward_score`` is ``1.0`` for a solved game and ``0.0`` otherwise: verl puts it on the last response
token, where validation reads it as the success rate. Training replaces the whole reward tensor
with per-turn ΔBelief rewards (the trainer hook in :mod:`.runner`); the estimator refuses a reward
left on a non-policy token, so a run without the hook fails instead of training on it.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any
from uuid import uuid4

from verl.experimental.agent_loop.agent_loop import AgentLoopBase, AgentLoopOutput, register

from deltabelief.config import Config
from deltabelief.games.base import Game, GameState, build_game, play_move_async
from deltabelief.integrations.verl.config_gen import AGENT_LOOP_NAME, CONFIG_SECTION, config_from_section
from deltabelief.judges.async_client import AsyncJudge, build_async_judge
from deltabelief.judges.openai_compat import JudgeResponseError, JudgeUnavailableError
from deltabelief.session import build_judge
from deltabelief.types import Target

log = logging.getLogger(__name__)


@functools.lru_cache(maxsize=8)
def _session(section_json: str) -> tuple[Config, Game, AsyncJudge]:
    """Config, game and judge for one config, built once per worker process (loops are per rollout),
    so every game of a worker shares the judge's connection pool and concurrency bound."""
    config = config_from_section(json.loads(section_json))
    judge = build_async_judge(config.judge, lambda: build_judge(config.judge, config.game))
    return config, build_game(config.game), judge


def target_from_row(row: dict[str, Any]) -> Target:
    """The hidden target of a dataset row (``extra_info`` written by ``runner.write_verl_dataset``)."""
    info = row.get("extra_info")
    if not isinstance(info, dict) or "target" not in info:
        raise ValueError(f"dataset row has no extra_info.target (index {row.get('index')!r}); "
                         "write the dataset with deltabelief.integrations.verl.runner.write_verl_dataset")
    messages = tuple({"role": m["role"], "content": m["content"]} for m in row["raw_prompt"])
    return Target(id=str(info["target_id"]), task=str(info["task"]), answer=str(info["target"]),
                  extra=json.loads(info["extra_json"]), messages=messages)


@register(AGENT_LOOP_NAME)
class DeltaBeliefGameLoop(AgentLoopBase):
    """Plays one game against the judge; see the module docstring for the token layout."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.pop("tools", None)  # verl passes its tool list to every loop; games use none
        super().__init__(*args, **kwargs)
        from omegaconf import OmegaConf

        if CONFIG_SECTION not in self.config:
            raise KeyError(f"the verl config has no '{CONFIG_SECTION}' section; build it with "
                           "deltabelief.integrations.verl.config_gen.compose_verl_config")
        section = OmegaConf.to_container(self.config[CONFIG_SECTION], resolve=True)
        self.settings, self.game, self.judge = _session(json.dumps(section, sort_keys=True))
        self.response_length = self.rollout_config.response_length
        self.max_new_tokens = self.settings.policy.max_new_tokens
        self.reserve = self.settings.cluster.observation_token_reserve
        self.end_of_turn = self.tokenizer.eos_token_id
        if self.end_of_turn is None:
            raise ValueError("the tokenizer has no eos token to close a move cut at max_new_tokens")

    async def run(self, sampling_params: dict[str, Any], **kwargs: Any) -> AgentLoopOutput:
        target = target_from_row(kwargs)
        state = self.game.new_state(target)
        messages = [dict(m) for m in kwargs["raw_prompt"]]
        prompt_ids = await self.ct_build_initial_tokens(messages)
        episode = _Episode(prompt_ids)
        params = {**sampling_params, "max_tokens": self.max_new_tokens}
        request_id = uuid4().hex
        while not state.done:
            if len(episode.mask) + self.max_new_tokens + 1 + self.reserve > self.response_length:
                episode.truncated = True
                log.warning("target %s: stopped after %d turns, rollout.response_length=%d is full",
                            target.id, state.num_turns, self.response_length)
                break
            move = await self._sample_move(episode, request_id, params)
            try:
                await self._answer(episode, state, messages, move)
            except (JudgeUnavailableError, JudgeResponseError) as err:
                episode.judge_failed = f"{type(err).__name__}: {err}"
                log.warning("target %s: judge failed on turn %d, game left out of the update: %s",
                            target.id, state.num_turns + 1, err)
                break
        return self._output(episode, state, target)

    async def _sample_move(self, episode: "_Episode", request_id: str, params: dict[str, Any]) -> str:
        """Sample one move; its ids get mask 1, an added end-of-turn token mask 0."""
        out = await self.server_manager.generate(request_id=request_id, prompt_ids=episode.ids, sampling_params=params)
        if not out.token_ids:
            raise RuntimeError(f"the rollout server returned no tokens for request {request_id}")
        logprobs = episode.logprobs if (episode.logprobs or out.log_probs) else None
        merged, episode.mask, aligned = await self.ct_merge_assistant_token(
            episode.ids, out.token_ids, episode.mask, logprobs, assistant_logprobs=out.log_probs or None)
        episode.ids = list(merged.token_ids)
        if aligned is not None:
            episode.logprobs = aligned
        if out.token_ids[-1] != self.end_of_turn:  # cut at max_new_tokens: close the message
            episode.append_template([self.end_of_turn])
        return self.tokenizer.decode(out.token_ids, skip_special_tokens=True).strip()

    async def _answer(self, episode: "_Episode", state: GameState, messages: list[dict], move: str) -> None:
        """Judge the move and append the answer plus the next assistant header (mask 0)."""
        result = await play_move_async(self.game, self.judge.answer, state, move)
        messages.append({"role": "assistant", "content": move})
        previous = list(messages)
        answer_ids = self.tokenizer.encode(result.text, add_special_tokens=False)
        keep = len(answer_ids)
        while True:  # cut the answer until the observation fits the reserve (template tokens included)
            text = result.text if keep == len(answer_ids) else self.tokenizer.decode(answer_ids[:keep])
            merged, mask, aligned = await self.ct_merge_context_msg(
                previous, previous + [{"role": "user", "content": text}], episode.ids, episode.mask,
                episode.logprobs or None)
            overflow = len(mask) - len(episode.mask) - self.reserve
            if overflow <= 0 or keep == 0:
                break
            keep = max(keep - overflow, 0)
        if overflow > 0:
            raise ValueError(f"cluster.observation_token_reserve={self.reserve} is smaller than the chat template's "
                             f"{overflow + self.reserve} tokens around an empty answer")
        messages.append({"role": "user", "content": text})
        episode.ids, episode.mask = list(merged.token_ids), mask
        if aligned is not None:
            episode.logprobs = aligned
        episode.turn_ends.append(len(episode.mask))  # h_t ends after obs_t
        episode.moves.append(move)

    def _output(self, episode: "_Episode", state: GameState, target: Target) -> AgentLoopOutput:
        response_ids = episode.ids[len(episode.prompt_ids):]
        failed = bool(episode.judge_failed)
        if len(response_ids) != len(episode.mask) or len(response_ids) > self.response_length:
            raise RuntimeError(f"target {target.id}: {len(response_ids)} response ids, {len(episode.mask)} mask "
                               f"entries, rollout.response_length={self.response_length}")
        return AgentLoopOutput(
            prompt_ids=episode.prompt_ids,
            response_ids=response_ids,
            response_mask=[0] * len(episode.mask) if failed else episode.mask,  # a failed game trains nothing
            response_logprobs=episode.logprobs or None,
            reward_score=1.0 if state.solved and not failed else 0.0,
            num_turns=2 * state.num_turns + 1,
            metrics={},
            extra_fields={
                "db_judge_failed": episode.judge_failed,
                "db_turn_ends": [0] if failed else list(episode.turn_ends),
                "db_statuses": [] if failed else [t.status for t in state.turns],
                "db_moves": list(episode.moves),
                "db_solved": bool(state.solved),
                "db_truncated": episode.truncated,
                "db_target": target.answer,
                "db_target_id": target.id,
            },
        )


class _Episode:
    """The growing token sequence of one game: ids (prompt + response), mask, log-probs, turn ends."""

    def __init__(self, prompt_ids: list[int]):
        self.prompt_ids = list(prompt_ids)
        self.ids = list(prompt_ids)
        self.mask: list[int] = []
        self.logprobs: list[float] = []
        self.turn_ends = [0]  # e_0: h_0 is the prompt
        self.moves: list[str] = []
        self.truncated = False
        self.judge_failed = ""  # the judge's error when it failed after its retries

    def append_template(self, token_ids: list[int]) -> None:
        self.ids += token_ids
        self.mask += [0] * len(token_ids)
        if self.logprobs:
            self.logprobs += [0.0] * len(token_ids)
