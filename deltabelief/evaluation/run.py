"""The evaluation stage: every suite of a config played by one policy, then metrics, plots and a report.

:func:`evaluate` runs every suite of an :class:`~deltabelief.config.EvalConfig` with one
policy and writes, under ``out_dir``:

- ``results.parquet``: one row per game and budget (the ``eval`` data contract);
- ``per_target.parquet``, ``summary.parquet`` and, for Twenty Questions, ``beliefs.parquet``;
- ``information.parquet`` for games judged from a knowledge base (bits gained per question);
- ``games.jsonl``: every game at each suite's largest budget, move by move;
- ``belief_curves.png``, ``pass_at_k.png``, ``interaction_scaling.png``, ``information_per_turn.png``;
- ``report.md`` with the tables and plots.

It returns an :class:`EvalResult` with those paths and a flat metrics dict for MLflow
(``twenty_questions/success_mean``, ``twenty_questions/pass@1``, ...; docs/evaluation.md
lists every name). Logging is the caller's job.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from deltabelief.config import BeliefConfig, Config, DataConfig, EvalConfig, GameConfig
from deltabelief.data.contracts import validate_dataset
from deltabelief.evaluation import plots as plotting
from deltabelief.evaluation.metrics import belief_curves, pass_at_k, per_target_table, summarize
from deltabelief.evaluation.report import write_report
from deltabelief.evaluation.scaling import results_frame
from deltabelief.evaluation.suites import (
    BeliefFn,
    PlayFn,
    SuiteRun,
    get_suite,
    load_suite_targets,
    parse_sources,
    run_rated_suite,
    run_success_suite,
    select_targets,
    suite_game,
    suite_judge_config,
)
from deltabelief.games.personalization import AnswerFn
from deltabelief.information import information_per_turn
from deltabelief.trajectory import transcript
from deltabelief.types import Judge, Target

log = logging.getLogger(__name__)


@dataclass
class EvalResult:
    out_dir: Path
    results_path: Path
    """results.parquet: one row per game and budget (``eval`` contract)."""
    summary_path: Path
    per_target_path: Path
    report_path: Path
    plots: dict[str, Path]
    """'belief_curves' (when beliefs were scored), 'pass_at_k', 'interaction_scaling'."""
    metrics: dict[str, float]
    results: pd.DataFrame
    beliefs_path: Path | None = None
    notes: dict[str, dict[str, Any]] = field(default_factory=dict)


def _check(config: EvalConfig) -> None:
    if not config.suites:
        raise ValueError("eval.suites is empty: name at least one suite")
    for name in config.suites:
        get_suite(name)
    if config.k < 1:
        raise ValueError(f"eval.k must be at least 1, got {config.k}")
    if not config.budgets or min(config.budgets) < 1:
        raise ValueError(f"eval.budgets must be positive turn counts, got {config.budgets}")
    if config.personalization_turns < 1:
        raise ValueError(f"eval.personalization_turns must be at least 1, got {config.personalization_turns}")


def _default_play_fn() -> PlayFn:
    from deltabelief.rollout import rollout

    return rollout


def _policy_answer_fn(policy, config: EvalConfig) -> AnswerFn:
    from deltabelief.judges.local import generate_chat

    def answer(conversations):
        if policy.model is None:  # a served policy (deltabelief/policy/remote.py)
            replies = policy.chat(conversations, temperature=policy.config.eval_temperature,
                                  max_tokens=config.answer_max_new_tokens, seed=config.seed)
            return [reply.strip() for reply in replies]
        completions = generate_chat(
            policy.model, policy.tokenizer, conversations, temperature=policy.config.eval_temperature,
            max_tokens=config.answer_max_new_tokens, batch_size=policy.config.batch_size, seed=config.seed,
        )
        return [c.text.strip() for c in completions]

    return answer


def _policy_belief_fn(policy, belief: BeliefConfig) -> BeliefFn | None:
    """Belief curves from the policy's weights; None for a served policy, which has none here.
    Scored on prefix trees, so games that share the suite's prompt share its tokens."""
    from deltabelief.training.step_scoring import score_step

    if policy.model is None:
        return None

    def score(trajectories):
        scores, _ = score_step(policy.model, policy.tokenizer, trajectories, belief.template,
                               on_unlocatable="exclude", old_logprobs=False)
        return [row.numpy() for row in scores.per_trajectory()]

    return score


class _Judges:
    """Builds each distinct judge config once (the local judge loads a model)."""

    def __init__(self, config: EvalConfig, game: GameConfig, given: dict[str, Judge] | None):
        self.config, self.game, self.given, self.built = config.judge, game, given or {}, {}

    def for_suite(self, spec) -> tuple[Judge, str]:
        if spec.name in self.given:
            judge = self.given[spec.name]
            return judge, getattr(judge, "name", type(judge).__name__)
        config = suite_judge_config(spec, self.config)
        key = repr(config)
        if key not in self.built:
            from deltabelief.session import build_judge

            self.built[key] = build_judge(config, self.game)
        return self.built[key], f"{config.backend} ({config.model})" if config.backend != "kb" else "kb"


def _suite_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """Flat metric names: headline at each suite's largest budget, then one block per budget."""
    skip = {"suite", "budget", "rated", "k", "pass@k"}
    metrics: dict[str, float] = {}
    for suite, rows in summary.groupby("suite", sort=False):
        rows = rows.sort_values("budget")
        rated = bool(rows["rated"].iloc[0])
        not_applicable = {"success_mean", "success_std", "turns_solved_mean"} if rated else {
            "rating_mean", "rating_std", "rating_missing"}
        for key, value in rows.iloc[-1].items():
            if key not in skip and key not in not_applicable and not (rated and key.startswith("pass@")):
                metrics[f"{suite}/{key}"] = float(value)
        keys = ("rating_mean", "rating_std", "turns_mean") if rated else ("success_mean", "success_std", "turns_mean")
        for _, row in rows.iterrows():
            for key in keys:
                metrics[f"{suite}/budget_{int(row['budget'])}/{key}"] = float(row[key])
    return metrics


def _belief_metrics(beliefs: pd.DataFrame) -> dict[str, float]:
    metrics: dict[str, float] = {}
    for suite, part in beliefs.groupby("suite"):
        per_game = part.sort_values("turn").groupby(["target_id", "sample"])["log_belief"]
        first, last = per_game.first(), per_game.last()
        metrics[f"{suite}/log_belief_first_mean"] = float(first.mean())
        metrics[f"{suite}/log_belief_last_mean"] = float(last.mean())
        metrics[f"{suite}/belief_gain_mean"] = float((last - first).mean())
    return metrics


def _run_suites(config, policy, *, data, game, targets, judges, play_fn, answer_fn,
                belief_fn, progress) -> tuple[list[SuiteRun], dict[str, dict], dict[str, float]]:
    """Every suite played: its :class:`SuiteRun`, the report's notes and wall seconds per suite."""
    sources = parse_sources(config.sources)
    runs, notes, seconds = [], {}, {}
    for name in config.suites:
        spec = get_suite(name)
        began = time.perf_counter()
        if targets and name in targets:
            candidates, split, source = list(targets[name]), "given", "given by the caller"
        else:
            source = sources.get(name, spec.default_source)
            candidates, split = load_suite_targets(spec, source, data, game)
        chosen = select_targets(candidates, config.num_targets, config.seed)
        judge, judge_name = judges.for_suite(spec)
        played = suite_game(spec, config, game)
        if spec.rated:
            run = run_rated_suite(spec, played, judge, chosen, config, policy, play_fn, answer_fn(), progress)
        else:
            scorer = belief_fn() if spec.beliefs and config.belief_curves else None
            run = run_success_suite(spec, played, judge, chosen, config, policy, play_fn, scorer, progress)
            if scorer is None and spec.beliefs and config.belief_curves:
                run.notes["belief curves"] = "skipped: the policy is served, its weights are not here"
        runs.append(run)
        seconds[name] = time.perf_counter() - began
        notes[name] = {"source": source, "split": split, "targets": f"{len(chosen)} of {len(candidates)}",
                       "judge": judge_name, **run.notes, "wall time": f"{seconds[name]:.1f}s"}
        log.info("suite %s done in %.1fs", name, seconds[name])
    return runs, notes, seconds


def _write_games(runs: list[SuiteRun], path: Path) -> None:
    """games.jsonl: every game played at a suite's largest budget, move by move (to read, or grep)."""
    with open(path, "w") as handle:
        for run in runs:
            for game in run.trajectories[max(run.trajectories)]:
                row = {"suite": run.name, "target_id": game.target.id, "sample": game.sample_index}
                handle.write(json.dumps({**row, **transcript(game)}) + "\n")


def _write_plots(out_dir: Path, summary: pd.DataFrame, curves: pd.DataFrame | None,
                 information: pd.DataFrame | None) -> dict[str, Path]:
    plots: dict[str, Path] = {}
    if curves is not None and not curves.empty:
        plots["belief_curves"] = plotting.plot_belief_curves(curves, out_dir / "belief_curves.png")
    pass_table = _pass_table(summary)
    if not pass_table.empty:
        plots["pass_at_k"] = plotting.plot_pass_at_k(pass_table, out_dir / "pass_at_k.png")
    plots["interaction_scaling"] = plotting.plot_scaling(summary, out_dir / "interaction_scaling.png")
    if information is not None and not information.empty:
        plots["information_per_turn"] = plotting.plot_information(information, out_dir / "information_per_turn.png")
    return plots


def evaluate(
    config: EvalConfig,
    policy: Any,
    out_dir: str | Path,
    *,
    data: DataConfig | None = None,
    game: GameConfig | None = None,
    belief: BeliefConfig | None = None,
    targets: dict[str, list[Target]] | None = None,
    judges: dict[str, Judge] | None = None,
    play_fn: PlayFn | None = None,
    answer_fn: AnswerFn | None = None,
    belief_fn: BeliefFn | None = None,
    progress: bool = True,
) -> EvalResult:
    """Run every suite in ``config.suites`` with ``policy`` and write tables, plots and a report.

    Args:
        config: suites, k, budgets, number of targets, judge, sources (see EvalConfig).
        policy: a :class:`~deltabelief.policy.policy.Policy` (anything ``play_fn`` accepts).
        out_dir: created if missing; every output goes there.
        data, game: the run's DataConfig / GameConfig (seed and split fractions of the KB test
            split, KB nouns for the KB judge); defaults when None.
        belief: elicitation template and batch size for belief curves (default BeliefConfig()).
        targets: per-suite targets that override ``config.sources`` (e.g. a synthesized test split).
        judges: per-suite judges that override ``config.judge`` (tests pass scripted judges).
        play_fn: plays games, with :func:`deltabelief.rollout.rollout`'s signature (the default).
        answer_fn: writes Personalization final answers (default: the policy, eval temperature).
        belief_fn: log beliefs per trajectory (default: :func:`deltabelief.training.step_scoring.score_step`).
    """
    _check(config)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    began = time.perf_counter()
    runs, notes, seconds = _run_suites(
        config, policy, data=data or DataConfig(), game=game or GameConfig(), targets=targets,
        judges=_Judges(config, game or GameConfig(), judges), play_fn=play_fn or _default_play_fn(),
        answer_fn=(lambda: answer_fn) if answer_fn else (lambda: _policy_answer_fn(policy, config)),
        belief_fn=(lambda: belief_fn) if belief_fn else (lambda: _policy_belief_fn(policy, belief or BeliefConfig())),
        progress=progress,
    )
    belief_rows = [row for run in runs for row in run.beliefs]
    info_rows = [row for run in runs for row in run.information]
    info_metrics = {name: value for run in runs for name, value in run.metrics.items()}
    _write_games(runs, out_dir / "games.jsonl")
    results = results_frame([row for run in runs for row in run.rows])
    results_path = out_dir / "results.parquet"
    results.to_parquet(results_path, index=False)
    validate_dataset("eval", results_path)  # raises ContractError naming the broken rules and rows
    rated = {name for name in config.suites if get_suite(name).rated}
    summary = summarize(results, rated)
    summary_path = out_dir / "summary.parquet"
    summary.to_parquet(summary_path, index=False)
    largest = results.groupby("suite")["budget"].transform("max") == results["budget"]
    per_target = per_target_table(results[largest])
    per_target_path = out_dir / "per_target.parquet"
    per_target.to_parquet(per_target_path, index=False)
    metrics = _suite_metrics(summary)
    beliefs_path, curves = None, None
    if belief_rows:
        beliefs = pd.DataFrame(belief_rows)
        beliefs_path = out_dir / "beliefs.parquet"
        beliefs.to_parquet(beliefs_path, index=False)
        metrics.update(_belief_metrics(beliefs))
        curves = _curves(beliefs)
    information = None
    if info_rows:
        questions = pd.DataFrame(info_rows)
        questions.to_parquet(out_dir / "information.parquet", index=False)
        information = information_per_turn(questions)
        metrics.update(info_metrics)
    for name, value in seconds.items():
        metrics[f"perf/eval_{name}_seconds"] = value
    plots = _write_plots(out_dir, summary, curves, information)
    metrics["perf/eval_seconds"] = time.perf_counter() - began
    header = {"suites": ", ".join(config.suites), "k (samples per target)": config.k,
              "budgets": ", ".join(str(b) for b in sorted(set(config.budgets))),
              "policy": getattr(getattr(policy, "config", None), "model", type(policy).__name__),
              "wall time": f"{metrics['perf/eval_seconds']:.1f}s"}
    report_path = write_report(
        out_dir / "report.md", summary=summary, scaling=summary, pass_table=_pass_table(summary),
        per_target=per_target, curves=curves, plots=plots, notes=notes, header=header,
        information=information, information_metrics=info_metrics,
    )
    log.info("evaluation written to %s", out_dir)
    return EvalResult(out_dir, results_path, summary_path, per_target_path, report_path, plots, metrics,
                      results, beliefs_path, notes)


def _curves(beliefs: pd.DataFrame) -> pd.DataFrame:
    frames = []
    for suite, part in beliefs.groupby("suite"):
        games = part.sort_values("turn").groupby(["target_id", "sample"])
        values = [g["log_belief"].to_numpy() for _, g in games]
        solved = [bool(g["solved"].iloc[0]) for _, g in games]
        frames.append(belief_curves(values, solved).assign(suite=suite))
    return pd.concat(frames, ignore_index=True)


def _pass_table(summary: pd.DataFrame) -> pd.DataFrame:
    headline = summary[~summary["rated"]].sort_values("budget").groupby("suite").tail(1)
    rows = [{"suite": r["suite"], "k": k, "pass_at_k": r[f"pass@{k}"]}
            for _, r in headline.iterrows() for k in range(1, int(r["k"]) + 1)]
    return pd.DataFrame(rows, columns=["suite", "k", "pass_at_k"])


def evaluate_model(config: Config, out_dir: str | Path, progress: bool = True):
    """Load ``config.policy`` and run :func:`evaluate` with the run's data,
    game and belief settings (what ``deltabelief eval`` does)."""
    from deltabelief.policy.remote import load_policy

    policy = load_policy(config.policy, seed=config.eval.seed)
    return evaluate(config.eval, policy, out_dir, data=config.data, game=config.game, belief=config.belief,
                    progress=progress)
