"""Evaluation suites: which game, which targets, which judge, and how one suite is run.

A suite is a game plus its targets plus a success rule: the game's 'finished' status.
User Personalization has no success: its final answers are rated 1-10 after each turn.
Targets come from a source string (``EvalConfig.sources`` entries ``suite=SOURCE``):

- ``examples``: the project's own small examples (``deltabelief/data/builtin/examples``);
- ``kb`` for ``guess_my_city``: every city of the city knowledge base (``deltabelief.data.cities``);
- ``kb``, ``words:PATH``, ``reference:PATH``, ``paprika:PATH``: read with
  :func:`deltabelief.data.targets.build_targets`; the ``test`` split is used (when the
  source has no test targets, its own split is used and the report says which);
- ``stargate:DIR``: STaR-GATE persona × task pairs (User Personalization).

Judges: every suite runs with any judge backend. The knowledge-base judge knows Twenty
Questions and Guess My City (its targets must be cities of the city knowledge base), so with
``judge.backend = 'kb'`` the other suites use the ``local`` judge (same config otherwise).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from deltabelief.config import DataConfig, EvalConfig, GameConfig, JudgeConfig
from deltabelief.data.loaders import resolve_data_path
from deltabelief.evaluation.scaling import game_row, play_budgets, scaling_rows
from deltabelief.games.base import Game, build_game, get_game
from deltabelief.games.personalization import AnswerFn, load_star_gate, rate_final_answers
from deltabelief.information import exact_knowledge_base, information_rows, suite_information_metrics
from deltabelief.trajectory import Trajectory
from deltabelief.types import Judge, Target

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parent.parent / "data" / "builtin" / "examples"

PlayFn = Callable[..., list[Trajectory]]
"""``rollout``'s signature: (policy, game, judge, targets, n_per_target, max_turns, seed, *, eval_mode, progress)."""
BeliefFn = Callable[[list[Trajectory]], list[np.ndarray]]
"""log b_0..log b_N per trajectory (an empty array for a trajectory that could not be scored)."""


@dataclass(frozen=True)
class SuiteSpec:
    name: str
    game: str
    default_source: str
    rated: bool = False
    """Games are scored by a rater's 1-10 rating after each turn (User Personalization), not solved."""
    beliefs: bool = False
    """Score belief curves for this suite."""
    needs_llm_judge: bool = True
    """The knowledge-base judge cannot play it."""


SUITES: dict[str, SuiteSpec] = {
    spec.name: spec
    for spec in (
        SuiteSpec("twenty_questions", "twenty_questions", "kb", beliefs=True, needs_llm_judge=False),
        SuiteSpec("guess_my_city", "guess_my_city", "examples", needs_llm_judge=False),
        SuiteSpec("murder_mystery", "murder_mystery", "examples"),
        SuiteSpec("customer_service", "customer_service", "examples"),
        SuiteSpec("personalization", "personalization", "examples", rated=True),
    )
}


def get_suite(name: str) -> SuiteSpec:
    if name not in SUITES:
        raise KeyError(f"unknown suite {name!r}; suites: {sorted(SUITES)}")
    return SUITES[name]


def parse_sources(entries: list[str]) -> dict[str, str]:
    """``['guess_my_city=reference:/x.parquet']`` -> ``{'guess_my_city': 'reference:/x.parquet'}``."""
    sources: dict[str, str] = {}
    for entry in entries:
        suite, sep, source = entry.partition("=")
        suite, source = suite.strip(), source.strip()
        if not sep or not source:
            raise ValueError(f"eval source {entry!r} must look like 'suite=SOURCE'")
        get_suite(suite)
        if suite in sources:
            raise ValueError(f"eval source for suite {suite!r} given twice")
        sources[suite] = source
    return sources


# ---------------------------------------------------------------- targets


def load_examples(task: str, directory: Path = EXAMPLES_DIR) -> list[Target]:
    """The project's own examples for ``task``; a malformed entry raises an error naming its id."""
    path = Path(directory) / f"{task}.json"
    if not path.exists():
        raise FileNotFoundError(f"no built-in examples for task {task!r} ({path})")
    data = json.loads(path.read_text(encoding="utf-8"))
    if not isinstance(data, dict) or data.get("task") != task or not isinstance(data.get("targets"), list):
        raise ValueError(f"{path}: expected {{'task': {task!r}, 'targets': [...]}}")
    targets, seen = [], set()
    for index, item in enumerate(data["targets"]):
        name = item.get("id") if isinstance(item, dict) else None
        where = f"{path.name}: target {name!r}" if name else f"{path.name}: targets[{index}]"
        if not isinstance(name, str) or not name or name in seen:
            raise ValueError(f"{where}: needs a unique non-empty string 'id'")
        if not isinstance(item.get("target"), str) or not item["target"].strip():
            raise ValueError(f"{where}: 'target' must be a non-empty string")
        if not isinstance(item.get("extra", {}), dict):
            raise ValueError(f"{where}: 'extra' must be an object")
        seen.add(name)
        targets.append(Target(id=name, task=task, answer=item["target"].strip(), extra=dict(item.get("extra", {}))))
    return targets


def _test_split(source: str, task: str, data: DataConfig, game: GameConfig) -> tuple[list[Target], str]:
    from deltabelief.data.targets import build_targets

    table = build_targets(dataclasses.replace(data, source=source, task=task), game)
    by_split: dict[str, list[Target]] = {}
    for target, split in zip(table.targets, table.splits):
        if target.task == task:
            by_split.setdefault(split, []).append(target)
    if by_split.get("test"):
        return by_split["test"], "test"
    if not by_split:
        raise ValueError(f"source {source!r} has no targets for task {task!r}")
    split = sorted(by_split, key=lambda s: ("val", "train").index(s) if s in ("val", "train") else 2)[0]
    log.warning("source %r has no test targets for %s; using its %r split", source, task, split)
    return by_split[split], split


def load_suite_targets(
    spec: SuiteSpec, source: str, data: DataConfig | None = None, game: GameConfig | None = None
) -> tuple[list[Target], str]:
    """All candidate targets of a suite and the split they come from, each checked by the game.

    A target the game cannot play raises a ValueError naming it (and its row in the source).
    """
    if source == "examples":
        targets, split = load_examples(spec.game), "examples"
    elif source == "kb" and spec.game == "guess_my_city":
        from deltabelief.data.cities import city_targets

        targets, split = city_targets(), "kb"
    elif source.startswith("stargate:"):
        if not spec.rated:
            raise ValueError(f"source {source!r} holds personalization pairs, not {spec.name} targets")
        targets, split = load_star_gate(resolve_data_path(source.partition(":")[2])), "test"
    else:
        targets, split = _test_split(source, spec.game, data or DataConfig(), game or GameConfig())
    checker = get_game(spec.game)
    for target in targets:
        try:
            checker.new_state(target)
        except ValueError as err:
            row = target.extra.get("source_id")
            raise ValueError(f"{source}: row {row!r}: {err}" if row else f"{source}: {err}") from err
    return targets, split


def select_targets(targets: list[Target], num_targets: int, seed: int) -> list[Target]:
    """A seeded sample of ``num_targets`` targets (all when 0 or more than available), in source order."""
    if num_targets < 0:
        raise ValueError(f"num_targets must be >= 0, got {num_targets}")
    if num_targets == 0 or num_targets >= len(targets):
        return list(targets)
    keep = sorted(random.Random(seed).sample(range(len(targets)), num_targets))
    return [targets[i] for i in keep]


# ---------------------------------------------------------------- judges


def suite_judge_config(spec: SuiteSpec, judge: JudgeConfig) -> JudgeConfig:
    """The judge config a suite runs with: 'kb' becomes 'local' for suites the KB cannot play."""
    if judge.backend == "kb" and spec.needs_llm_judge:
        return dataclasses.replace(judge, backend="local")
    return judge


# ---------------------------------------------------------------- running one suite


@dataclass
class SuiteRun:
    """What one suite produced."""

    name: str
    rows: list[dict]
    """Results-table rows (one per game and budget)."""
    trajectories: dict[int, list[Trajectory]]
    """Played games per budget (the same list for every budget unless budgets were replayed)."""
    beliefs: list[dict] = field(default_factory=list)
    """Long belief table rows: suite, target_id, sample, turn, log_belief, solved."""
    notes: dict[str, Any] = field(default_factory=dict)
    """Where targets came from, which judge played, how budgets were read, exclusions."""
    information: list[dict] = field(default_factory=list)
    """Knowledge-base games: one row per question with its exact information gain (bits)."""
    metrics: dict[str, float] = field(default_factory=dict)
    """Suite-level metrics computed while playing (information gain)."""


def _belief_rows(name: str, games: list[Trajectory], curves: list[np.ndarray]) -> list[dict]:
    rows = []
    for game, values in zip(games, curves):
        for turn, value in enumerate(np.asarray(values, dtype=float)):
            rows.append({"suite": name, "target_id": game.target.id, "sample": int(game.sample_index),
                         "turn": turn, "log_belief": float(value), "solved": bool(game.solved)})
    return rows


def run_success_suite(
    spec: SuiteSpec, game: Game, judge: Judge, targets: list[Target], config: EvalConfig, policy: Any,
    play_fn: PlayFn, belief_fn: BeliefFn | None, progress: bool = True,
) -> SuiteRun:
    """Play a suite whose success is the game's own 'finished', at every budget."""

    def play(budget: int) -> list[Trajectory]:
        log.info("%s: %d targets x %d samples, budget %d", spec.name, len(targets), config.k, budget)
        return play_fn(policy, game, judge, targets, config.k, max_turns=budget, seed=config.seed,
                       eval_mode=True, progress=progress)

    played = play_budgets(play, config.budgets, replay=config.replay_budgets)
    run = SuiteRun(spec.name, scaling_rows(spec.name, played), played)
    run.notes["budgets"] = "replayed per budget" if config.replay_budgets else f"read from games played at {max(played)} turns"
    kb = exact_knowledge_base(judge, spec.game)  # an exact judge knows the consistent sets: measure information
    if kb is not None:
        games = played[max(played)]
        run.information = information_rows(spec.name, kb, games)
        run.metrics = suite_information_metrics(spec.name, pd.DataFrame(run.information), games, kb, max(played))
    if spec.beliefs and belief_fn is not None:
        games = played[max(played)]
        curves = belief_fn(games)
        run.beliefs = _belief_rows(spec.name, games, curves)
        run.notes["belief_excluded"] = sum(1 for c in curves if len(c) == 0)
    return run


def run_rated_suite(
    spec: SuiteSpec, game: Game, judge: Judge, targets: list[Target], config: EvalConfig, policy: Any,
    play_fn: PlayFn, answer_fn: AnswerFn, progress: bool = True,
) -> SuiteRun:
    """User Personalization: N clarifying turns, a final answer after each, rated 1-10.

    Budget b of the results table = b clarifying turns; ``rating`` = the rating of the final
    answer written after b turns (NaN when the rater's reply had no score); ``solved`` stays False.
    """
    turns = config.personalization_turns
    games = play_fn(policy, game, judge, targets, config.k, max_turns=turns, seed=config.seed,
                    eval_mode=True, progress=progress)
    _, ratings = rate_final_answers(game, judge, games, answer_fn)
    rows = []
    for played, game_ratings in zip(games, ratings):
        for budget, rating in enumerate(game_ratings, start=1):
            rows.append(game_row(spec.name, played, budget, rating))
    run = SuiteRun(spec.name, rows, {turns: games})
    run.notes["budgets"] = f"budget b = rating after b of {turns} clarifying turns"
    return run


def suite_game(spec: SuiteSpec, config: EvalConfig, game: GameConfig) -> Game:
    """The suite's game with the turns its budgets need: under the run's rules ``game`` (its
    prompt included) when it is the game the run trains on, else under the default rules."""
    turns = config.personalization_turns if spec.rated else max(config.budgets)
    return build_game(game if spec.game == game.task else GameConfig(), spec.game, max_turns=turns)
