"""ΔBelief-RL on verl (FSDP actor, vLLM rollouts) on a Ray cluster.

Modules, each importable on its own:

- :mod:`.config_gen`: our :class:`~deltabelief.config.Config` -> verl's Hydra ``ppo_trainer`` config
  (``to_verl_overrides``, ``compose_verl_config``); reads verl's yaml without importing verl.
- :mod:`.estimator`: ``delta_belief_turn_grpo`` (and ``_grpo``, ``_rloo``) in verl's estimator registry.
- :mod:`.agent_loop`: ``deltabelief_game``, a verl agent loop playing a game against the judge.
- :mod:`.belief`: elicitation rows in verl's layout and log b_t from the actor's log-probs.
- :mod:`.packed_belief`: one packed row per rollout (``cluster.belief_layout=packed``), log b_0..log b_N
  from one forward per row.
- :mod:`.belief_worker`: verl's actor worker plus ``compute_packed_beliefs`` (runs on the GPUs).
- :mod:`.reward_manager`: ``delta_belief``, per-turn rewards at each turn's last token.
- :mod:`.runner`: the trainer hook, the Ray task runner and :func:`run_verl`.

The package itself imports nothing heavy: ``from deltabelief.integrations.verl import run_verl``
loads verl only when the name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "run_verl": "runner",
    "prepare_verl_run": "runner",
    "write_verl_dataset": "runner",
    "DeltaBeliefTaskRunner": "runner",
    "DeltaBeliefTrainer": "runner",
    "to_verl_overrides": "config_gen",
    "compose_verl_config": "config_gen",
    "DeltaBeliefGameLoop": "agent_loop",
    "DeltaBeliefRewardManager": "reward_manager",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = importlib.import_module(f"{__name__}.{_EXPORTS[name]}")
    return getattr(module, name)
