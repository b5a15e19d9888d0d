"""The calibration stage: does the policy's belief track the evidence, and which elicitation to use.

``calibrate(config, trajectories_path, out_dir)`` scores held-out games of a
``trajectories.parquet`` under every template of ``calibration.templates`` and measures, per
template (docs/calibration.md):

- the mean log b_t per turn, and the share of games whose belief rises from t = 0 to t = N;
- AUROC of the final-turn log b_N for predicting success;
- the rank of the true target among candidates (the knowledge-base nouns for games with an
  exact posterior, else the targets of the game's split), capped at ``num_candidates``;
- for games with an exact posterior log b*_t (knowledge-base games): Spearman's ρ between log b_t
  and log b*_t over all (game, turn) pairs, and the ECE of the candidate-normalised p_t(target)
  (softmax over candidates of log b_t) against p*_t = 1 / |C_t ∩ candidates|, the exact posterior
  restricted to the same candidates (= exp(log b*_t) when the candidates are all the nouns).

It chooses a template by ``calibration.criterion`` and writes ``calibration.json``,
``reliability.png`` and ``belief_curves.png``. Targets whose tokens cannot be located under a
template are listed; :func:`excluded_target_ids` / :func:`filter_training_targets` keep them out
of training.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Sequence

import numpy as np

from deltabelief.calibration import metrics as M
from deltabelief.calibration.report import (
    CalibrationReport,
    choose_template,
    excluded_target_ids,
    filter_training_targets,
    write_report,
)
from deltabelief.calibration.scoring import (
    BeliefScorer,
    CalibrationGame,
    ModelScorer,
    candidate_lists,
    consistent_sets,
    read_games,
    select_games,
)
from deltabelief.config import Config

log = logging.getLogger(__name__)


def _curve(values: np.ndarray) -> list[float]:
    return [float(v) for v in values]


def _check_shapes(games, true, cand, candidates, template: str) -> None:
    for game, t, c, names in zip(games, true, cand, candidates):
        n = game.num_turns + 1
        if np.shape(t) != (n,) or np.shape(c) != (n, len(names)):
            raise ValueError(f"template {template!r}, game {game.id!r}: scorer returned shapes {np.shape(t)} and "
                             f"{np.shape(c)}, expected ({n},) and ({n}, {len(names)})")


def _posterior_metrics(games, true, probs, candidates, sets: dict, num_bins: int) -> dict:
    """Spearman(log b_t, log b*_t) and ECE(p_t, p*_t) over every (game, turn) of games with C_t."""
    pairs = [(g, t, p, names) for g, t, p, names in zip(games, true, probs, candidates) if g.id in sets]
    if not pairs:
        return {"spearman": float("nan"), "ece": float("nan"), "num_posterior_pairs": 0, "reliability": None}
    log_b = np.concatenate([t for _, t, _, _ in pairs])  # [Σ (N+1)]
    log_b_star = np.concatenate([g.log_posterior for g, _, _, _ in pairs])  # [Σ (N+1)]
    predicted = np.concatenate([p for _, _, p, _ in pairs])  # [Σ (N+1)] p_t(target) over candidates
    # p*_t: the exact posterior restricted to the candidates, uniform over C_t ∩ candidates
    reference = np.array([1.0 / len(set(c_t) & set(names)) for g, _, _, names in pairs for c_t in sets[g.id]])
    bins = M.reliability_bins(predicted, reference, num_bins)
    return {"spearman": M.spearman(log_b, log_b_star), "ece": M.ece(predicted, reference, num_bins),
            "num_posterior_pairs": len(log_b), "reliability": bins.to_dict()}


def _auroc_before_last_move(games: Sequence[CalibrationGame], true: list[np.ndarray]) -> float:
    """AUROC of log b_{N−1} for success: the belief before the final move and its answer (a win's
    answer names the target, so log b_N of a solved game is high for any model that can copy)."""
    pairs = [(t[-2], float(g.solved)) for g, t in zip(games, true) if len(t) >= 2]
    return M.auroc(*zip(*pairs)) if pairs else float("nan")


def template_metrics(scorer: BeliefScorer, games: Sequence[CalibrationGame], candidates: Sequence[Sequence[str]],
                     sets: dict[str, list[list[str]]], template: str, num_bins: int = 10) -> dict:
    """Every per-template figure of the report (docs/calibration.md) for the games given.

    Games whose target cannot be located under ``template`` are left out and counted; candidates
    that cannot be located are dropped from that game's candidate list and counted.
    """
    reasons = {name: scorer.unlocatable_reason(template, name)
               for name in {g.target for g in games} | {c for names in candidates for c in names}}
    kept = [i for i, g in enumerate(games) if reasons[g.target] is None]
    games = [games[i] for i in kept]
    names = [[c for c in candidates[i] if reasons[c] is None] for i in kept]
    true = scorer.true_target(games, template)  # per game [N+1]
    cand = scorer.candidates(games, names, template)  # per game [N+1, C]
    _check_shapes(games, true, cand, names, template)
    probs = [M.candidate_probabilities(c)[:, 0] for c in cand]  # per game [N+1] p_t(target)
    ranks = [np.array([M.rank_of_true(row) for row in c]) for c in cand]  # per game [N+1]
    mean_log_b, counts = M.mean_per_turn(true)
    final = np.array([t[-1] for t in true])  # [G] log b_N
    solved = np.array([float(g.solved) for g in games])  # [G]
    final_rank = np.array([r[-1] for r in ranks])  # [G]
    out = {
        "num_games": len(games),
        "num_games_excluded": len(candidates) - len(kept),
        "num_unlocatable_candidates": sum(len(candidates[i]) - len(n) for i, n in zip(kept, names)),
        "mean_log_belief_per_turn": _curve(mean_log_b),
        "num_games_per_turn": [int(c) for c in counts],
        "share_rising": M.share_rising(true),
        "auroc_final": M.auroc(final, solved) if len(games) else float("nan"),
        "auroc_before_last_move": _auroc_before_last_move(games, true),
        "mean_rank_final": float(final_rank.mean()) if len(games) else float("nan"),
        "mean_reciprocal_rank_final": float((1.0 / final_rank).mean()) if len(games) else float("nan"),
        "top1_final": float((final_rank == 1.0).mean()) if len(games) else float("nan"),
        "mean_num_candidates": float(np.mean([len(n) for n in names])) if names else float("nan"),
        "mean_rank_per_turn": _curve(M.mean_per_turn(ranks)[0]),
        "mean_true_probability_per_turn": _curve(M.mean_per_turn(probs)[0]),
        "max_abs_diff_true_vs_candidate_scorer": max((float(np.abs(t - c[:, 0]).max()) for t, c in zip(true, cand)),
                                                     default=float("nan")),
    }
    return out | _posterior_metrics(games, true, probs, names, sets, num_bins)


# ---------------------------------------------------------------- the stage


def _candidate_pools(games: Sequence[CalibrationGame], all_games: Sequence[CalibrationGame], kb) -> list[list[str]]:
    """Per game: the knowledge-base nouns (games with an exact posterior), else the distinct
    targets of its task and split in the whole trajectories file."""
    by_split: dict[tuple[str, str], list[str]] = {}
    for g in all_games:
        by_split.setdefault((g.task, g.split), [])
        if g.target not in by_split[(g.task, g.split)]:
            by_split[(g.task, g.split)].append(g.target)
    pools = []
    for g in games:
        if g.has_posterior:
            if g.target not in kb.nouns:
                raise ValueError(f"game {g.id!r}: target {g.target!r} has an exact posterior but is not a noun of "
                                 f"the knowledge base ({len(kb.nouns)} nouns; check game.kb_nouns)")
            pools.append(list(kb.nouns))
        else:
            pools.append(by_split[(g.task, g.split)])
    return pools


def _targets_to_check(all_games: Sequence[CalibrationGame], trajectories_path: Path, targets_path: str
                      ) -> tuple[list[tuple[str, str]], str]:
    """(target_id, target) pairs whose locatability is checked: every target of the targets file
    (``targets_path``, else the ``targets.parquet`` beside the trajectories, if any) and of the
    trajectories file; plus the targets file used ('' if none)."""
    import pandas as pd

    path = Path(targets_path) if targets_path else trajectories_path.parent / "targets.parquet"
    pairs: dict[str, str] = {}
    if targets_path or path.exists():
        if not path.exists():
            raise FileNotFoundError(f"calibration.targets_path {targets_path!r} does not exist")
        frame = pd.read_parquet(path, columns=["id", "target"])
        pairs.update((str(i), str(t)) for i, t in zip(frame["id"], frame["target"]))
    for g in all_games:
        pairs.setdefault(g.target_id, g.target)
    return sorted(pairs.items()), str(path) if path.exists() else ""


def _exact_curves(games: Sequence[CalibrationGame], candidates, sets) -> dict:
    """Mean exact log b*_t and mean p*_t (restricted to each game's full candidate list) per turn."""
    kb_games = [(g, names) for g, names in zip(games, candidates) if g.id in sets]
    log_star = [np.array(g.log_posterior) for g, _ in kb_games]
    p_star = [np.array([1.0 / len(set(c) & set(names)) for c in sets[g.id]]) for g, names in kb_games]
    return {"num_games": len(kb_games), "mean_log_posterior_per_turn": _curve(M.mean_per_turn(log_star)[0]),
            "mean_probability_per_turn": _curve(M.mean_per_turn(p_star)[0])}


def _model_scorer(config: Config, progress: bool) -> ModelScorer:
    from deltabelief.policy.loading import load_causal_lm

    model, tokenizer = load_causal_lm(config.policy.model, config.policy.dtype, config.calibration.seed,
                                      config.policy.device)
    cal = config.calibration
    return ModelScorer(model, tokenizer, batch_size=config.belief.batch_size, max_packed_tokens=cal.max_packed_tokens,
                       strict_tokenization=cal.exclude_tokenization_mismatches, progress=progress)


def calibrate(config: Config, trajectories_path: str | Path, out_dir: str | Path, *,
              scorer: BeliefScorer | None = None, kb=None, progress: bool = True) -> CalibrationReport:
    """Score held-out games under every template, choose one, write the report into ``out_dir``.

    ``scorer`` defaults to a :class:`ModelScorer` of ``config.policy``; ``kb`` (needed for games
    with an exact posterior) defaults to the knowledge base restricted to ``game.kb_nouns``;
    ``progress`` shows a progress bar over the games while scoring candidates.
    """
    cal, trajectories_path = config.calibration, Path(trajectories_path)
    all_games = read_games(trajectories_path)
    games, splits_used = select_games(all_games, cal.splits, cal.num_trajectories, cal.seed,
                                      cal.fallback_to_all_splits)
    if kb is None and any(g.has_posterior for g in games):
        from deltabelief.data.knowledge_base import load_kb

        kb = load_kb(nouns=config.game.kb_nouns or None)
    sets = {g.id: consistent_sets(kb, g) for g in games if g.has_posterior}  # C_0..C_N per game
    candidates = candidate_lists(games, _candidate_pools(games, all_games, kb), cal.num_candidates, cal.seed)
    scorer = scorer or _model_scorer(config, progress)
    checked, targets_file = _targets_to_check(all_games, trajectories_path, cal.targets_path)
    per_template, excluded = {}, []
    for template in cal.templates:
        log.info("calibration: scoring %d games under %r", len(games), template)
        for target_id, target in checked:
            reason = scorer.unlocatable_reason(template, target)
            if reason is not None:
                excluded.append({"target_id": target_id, "target": target, "template": template, "reason": reason})
        per_template[template] = template_metrics(scorer, games, candidates, sets, template, cal.num_bins)
        per_template[template]["num_excluded_targets"] = sum(e["template"] == template for e in excluded)
    chosen, used = choose_template(per_template, cal.templates, cal.criterion)
    summary = {
        "model": config.policy.model, "trajectories": str(trajectories_path), "targets_file": targets_file,
        "num_games_in_file": len(all_games), "num_games": len(games), "splits": list(cal.splits),
        "splits_used": splits_used,
        "num_games_with_posterior": len(sets), "num_targets_checked": len(checked),
        "num_candidates_cap": cal.num_candidates, "num_bins": cal.num_bins,
        "exact_posterior": _exact_curves(games, candidates, sets),
    }
    report = CalibrationReport(chosen, used, per_template, excluded, requested_criterion=cal.criterion,
                               templates=list(cal.templates), summary=summary)
    log.info("calibration: chose %r by %s", chosen, used)
    return write_report(report, out_dir)
