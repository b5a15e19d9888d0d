"""Belief calibration: metric functions by hand, stand-in scorers on a four-noun toy, one tiny-model run.

The toy knowledge base (as in test_teachers.py): ant, bee, cow, owl; "Can it fly?" holds for bee
and owl, "Is it an insect?" for ant and bee. Four held-out games and their consistent sets C_t:

    bee: fly yes {bee, owl}, insect yes {bee}, guess bee finished {bee}   solved
    cow: fly no {ant, cow}, insect no {cow}                               unsolved
    owl: insect no {cow, owl}, guess cow no {owl}, guess owl finished      solved
    ant: fly no {ant, cow}                                                unsolved

so log b*_t = −log|C_t| is [−ln4, −ln2, 0, 0], [−ln4, −ln2, 0], [−ln4, −ln2, 0, 0], [−ln4, −ln2].
"""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

from deltabelief.belief import build_elicitation, score_beliefs_per_prefix
from deltabelief.calibration import (
    calibrate,
    excluded_target_ids,
    filter_training_targets,
    load_chosen_template,
    load_report,
)
from deltabelief.calibration import metrics as M
from deltabelief.calibration.report import choose_template
from deltabelief.calibration.scoring import (
    candidate_lists,
    read_games,
    score_candidates,
    to_trajectory,
    unlocatable_reason,
)
from deltabelief.config import load_config
from deltabelief.data.teachers import consistent_nouns
from deltabelief.policy.chat import encode, render
from deltabelief.policy.loading import tiny_causal_lm
from deltabelief.types import Target

LN2, LN4 = math.log(2), math.log(4)
QUOTED, GUESS = "Is it '{target}'?", "My guess is: {target}"


# ---------------------------------------------------------------- metrics by hand


def test_auroc_by_hand():
    # positives 0.35, 0.8; negatives 0.1, 0.4: pairs (0.35>0.1) (0.35<0.4) (0.8>0.1) (0.8>0.4) -> 3/4
    assert M.auroc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # a tie counts one half: positive 1 vs negatives 1, 0 -> (0.5 + 1) / 2
    assert M.auroc([1, 1, 0], [1, 0, 0]) == pytest.approx(0.75)
    assert M.auroc([3, 3, 3, 3], [1, 0, 1, 0]) == pytest.approx(0.5)  # constant scorer
    assert math.isnan(M.auroc([0.2, 0.3], [1, 1]))  # one class only


def test_spearman_by_hand():
    # y ranks [1, 2, 3.5, 5, 3.5]; centred dx = [-2,-1,0,1,2], dy = [-2,-1,.5,2,.5]
    # Σ dx·dy = 8, Σ dx² = 10, Σ dy² = 9.5 -> ρ = 8 / sqrt(95)
    assert M.spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(8 / math.sqrt(95))
    assert M.spearman([1, 2, 3], [10, 20, 30]) == pytest.approx(1.0)
    assert M.spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert math.isnan(M.spearman([1, 2, 3], [4, 4, 4]))


def test_ece_and_reliability_by_hand():
    # 10 bins: bin 0 {0.05} vs ref 0 -> gap 0.05, weight 1/4; bin 1 {0.15, 0.12} mean 0.135 vs ref
    # mean 0.225 -> gap 0.09, weight 2/4; bin 9 {0.95} vs 1.0 -> gap 0.05, weight 1/4. ECE = 0.07.
    pred, ref = [0.05, 0.15, 0.12, 0.95], [0.0, 0.25, 0.2, 1.0]
    assert M.ece(pred, ref) == pytest.approx(0.07)
    bins = M.reliability_bins(pred, ref)
    assert bins.counts.tolist() == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert bins.mean_predicted[1] == pytest.approx(0.135) and bins.mean_reference[1] == pytest.approx(0.225)
    assert M.ece([1.0, 0.5], [1.0, 0.5]) == 0.0  # p = 1 falls in the last (closed) bin


def test_candidate_probabilities_and_rank_by_hand():
    probs = M.candidate_probabilities([[math.log(3), 0.0, -math.inf], [0.0, 0.0, 0.0]])
    np.testing.assert_allclose(probs, [[0.75, 0.25, 0.0], [1 / 3, 1 / 3, 1 / 3]])
    assert M.rank_of_true([-1.0, 0.0, -2.0]) == 2.0  # one candidate above
    assert M.rank_of_true([0.0, 0.0, 0.0, -1.0]) == 2.0  # three tied at the top share ranks 1..3
    assert M.rank_of_true([5.0, 1.0]) == 1.0


def test_curves_by_hand():
    means, counts = M.mean_per_turn([np.array([1.0, 2.0, 3.0]), np.array([3.0, 4.0])])
    np.testing.assert_allclose(means, [2.0, 3.0, 3.0])
    assert counts.tolist() == [2, 2, 1]
    assert M.share_rising([np.array([0.0, 1.0]), np.array([0.0, -1.0]), np.array([2.0])]) == 0.5


# ---------------------------------------------------------------- the toy knowledge base


class ToyKB:
    nouns = ["ant", "bee", "cow", "owl"]
    facts = {"Can it fly?": {"bee", "owl"}, "Is it an insect?": {"ant", "bee"}}

    def consistent(self, history, nouns=None):
        out = []
        for noun in nouns or self.nouns:
            ok = True
            for move, status in history:
                if move in self.facts and status in ("yes", "no"):
                    ok &= (noun in self.facts[move]) == (status == "yes")
                if move.startswith("Is it a ") and status == "no":
                    ok &= move != f"Is it a {noun}?"
            if ok:
                out.append(noun)
        return out


GAMES = [  # target, moves, statuses, solved, log b*_t
    ("bee", ["Can it fly?", "Is it an insect?", "Is it a bee?"], ["yes", "yes", "finished"], True, [-LN4, -LN2, 0, 0]),
    ("cow", ["Can it fly?", "Is it an insect?"], ["no", "no"], False, [-LN4, -LN2, 0]),
    ("owl", ["Is it an insect?", "Is it a cow?", "Is it a owl?"], ["no", "no", "finished"], True, [-LN4, -LN2, 0, 0]),
    ("ant", ["Can it fly?"], ["no"], False, [-LN4, -LN2]),
]
OPENING = [{"role": "system", "content": "You ask yes/no questions."},
           {"role": "user", "content": "Ask your first question."}]
ANSWERS = {"yes": "Yes.", "no": "No.", "finished": "Yes! You found it."}


def _row(index, target, moves, statuses, solved, log_posterior, split="test"):
    answers = [ANSWERS[s] for s in statuses]
    turns = [m for q, a in zip(moves, answers) for m in ({"role": "assistant", "content": q},
                                                          {"role": "user", "content": a})]
    return {"id": f"toy-{index:05d}", "task": "twenty_questions", "target_id": f"twenty_questions-{index:05d}",
            "target": target, "split": split, "teacher": "toy", "messages": OPENING + turns, "moves": moves,
            "answers": answers, "statuses": statuses, "num_turns": len(moves), "max_turns": 3, "solved": solved,
            "log_posterior": log_posterior}


def _write(tmp_path, rows, extra_targets=()):
    path = tmp_path / "trajectories.parquet"
    pd.DataFrame(rows).to_parquet(path, index=False)
    targets = [{"id": r["target_id"], "target": r["target"]} for r in rows] + list(extra_targets)
    pd.DataFrame(targets).to_parquet(tmp_path / "targets.parquet", index=False)
    return path


@pytest.fixture()
def toy_path(tmp_path):
    return _write(tmp_path, [_row(i, *g) for i, g in enumerate(GAMES)])


@pytest.fixture(scope="module")
def tiny():
    return tiny_causal_lm(0)


class StandIn:
    """A scorer without a model: ``fn(game, name, t) -> log b_t`` (locatability from the real tokenizer)."""

    def __init__(self, tokenizer, fn):
        self.tokenizer, self.fn = tokenizer, fn

    def unlocatable_reason(self, template, target):
        return unlocatable_reason(self.tokenizer, template, target)

    def true_target(self, games, template):
        return [np.array([self.fn(g, g.target, t) for t in range(g.num_turns + 1)]) for g in games]

    def candidates(self, games, candidates, template):
        return [np.array([[self.fn(g, c, t) for c in names] for t in range(g.num_turns + 1)])
                for g, names in zip(games, candidates)]


def posterior_fn(game, name, t):
    """Exact posterior: −log|C_t| for a consistent noun, −inf for a ruled-out one."""
    nouns = consistent_nouns(ToyKB(), game.moves[:t], game.statuses[:t], game.target)
    return -math.log(len(nouns)) if name in nouns else -math.inf


def outcome_fn(game, name, t):
    """Knows the outcome, not the evidence: 0 for solved games' targets, −5 otherwise."""
    return (0.0 if game.solved else -5.0) if name == game.target else -10.0


class ByTemplate:
    def __init__(self, scorers):
        self.scorers = scorers

    def unlocatable_reason(self, template, target):
        return self.scorers[template].unlocatable_reason(template, target)

    def true_target(self, games, template):
        return self.scorers[template].true_target(games, template)

    def candidates(self, games, candidates, template):
        return self.scorers[template].candidates(games, candidates, template)


def _config(*overrides):
    return load_config("tiny", [f"calibration.templates={json.dumps([QUOTED, GUESS])}", *overrides])


# ---------------------------------------------------------------- the four required behaviours


@pytest.mark.parametrize("num_candidates", [0, 2])
def test_beliefs_equal_to_the_exact_posterior_give_spearman_one_and_zero_ece(toy_path, tiny, num_candidates):
    scorer = StandIn(tiny[1], posterior_fn)
    report = calibrate(_config(f"calibration.num_candidates={num_candidates}"), toy_path, toy_path.parent / "out",
                       scorer=scorer, kb=ToyKB())
    m = report.per_template[QUOTED]
    assert m["spearman"] == pytest.approx(1.0)
    assert m["ece"] == pytest.approx(0.0, abs=1e-12)  # p_t = 1/|C_t ∩ candidates| = p*_t exactly
    assert m["num_posterior_pairs"] == 4 + 3 + 4 + 2
    assert m["auroc_final"] == pytest.approx(0.75)  # finals 0, 0 (solved) vs 0, −ln2 (unsolved)
    assert m["auroc_before_last_move"] == 1.0  # log b_{N−1}: 0, 0 (solved) vs −ln2, −ln4 (unsolved)
    np.testing.assert_allclose(m["mean_log_belief_per_turn"], [-LN4, -LN2, 0, 0])
    assert m["num_games_per_turn"] == [4, 4, 3, 2] and m["share_rising"] == 1.0
    if num_candidates == 0:  # final turn: ranks 1, 1, 1 and ant tied with cow (1.5)
        assert m["mean_rank_final"] == pytest.approx(1.125) and m["mean_num_candidates"] == 4
    else:
        assert m["mean_num_candidates"] == 2
    assert report.chosen_template == QUOTED and report.criterion == "spearman"  # a tie: the earliest


def test_a_constant_scorer_gives_auroc_one_half(toy_path, tiny):
    report = calibrate(_config(), toy_path, toy_path.parent / "out", scorer=StandIn(tiny[1], lambda g, n, t: -3.0),
                       kb=ToyKB())
    m = report.per_template[GUESS]
    assert m["auroc_final"] == pytest.approx(0.5) and m["auroc_before_last_move"] == pytest.approx(0.5)
    assert math.isnan(m["spearman"]) and m["share_rising"] == 0.0
    assert m["mean_rank_final"] == pytest.approx(2.5)  # four tied candidates: the middle rank
    saved = json.loads((toy_path.parent / "out" / "calibration.json").read_text())
    assert saved["per_template"][GUESS]["spearman"] is None  # NaN is written as null


@pytest.mark.parametrize("criterion, chosen", [("spearman", GUESS), ("auroc", QUOTED)])
def test_the_template_choice_follows_the_criterion(toy_path, tiny, criterion, chosen):
    # QUOTED knows the outcome (AUROC 1, Spearman < 1); GUESS tracks the evidence (Spearman 1, AUROC 0.75).
    scorer = ByTemplate({QUOTED: StandIn(tiny[1], outcome_fn), GUESS: StandIn(tiny[1], posterior_fn)})
    report = calibrate(_config(f"calibration.criterion={criterion}"), toy_path, toy_path.parent / "out",
                       scorer=scorer, kb=ToyKB())
    assert report.per_template[QUOTED]["auroc_final"] == 1.0 and report.per_template[QUOTED]["spearman"] < 1.0
    assert (report.chosen_template, report.criterion) == (chosen, criterion)
    assert load_chosen_template(toy_path.parent / "out") == chosen
    assert load_chosen_template(report.paths["json"]) == chosen
    metrics = report.metrics()  # tracking-safe names: templates hold quotes and braces
    assert all(re.fullmatch(r"[/\w.\- ]+", key) for key in metrics)
    assert metrics["calibration/chosen_index"] == [QUOTED, GUESS].index(chosen)
    assert metrics["calibration/template_0/auroc_final"] == 1.0 and metrics["calibration/template_1/spearman"] == 1.0


def test_without_an_exact_posterior_spearman_falls_back_to_auroc(tmp_path, tiny):
    rows = [_row(i, *g[:4], log_posterior=[]) for i, g in enumerate(GAMES)]
    path = _write(tmp_path, rows)
    scorer = ByTemplate({QUOTED: StandIn(tiny[1], lambda g, n, t: -3.0), GUESS: StandIn(tiny[1], outcome_fn)})
    report = calibrate(_config(), path, tmp_path / "out", scorer=scorer)  # no kb needed
    assert (report.chosen_template, report.criterion) == (GUESS, "auroc")
    assert report.per_template[GUESS]["ece"] != report.per_template[GUESS]["ece"]  # NaN: no posterior
    assert report.per_template[GUESS]["mean_num_candidates"] == 4  # the split's four targets
    per_template = {QUOTED: {"spearman": float("nan"), "auroc_final": float("nan")},
                    GUESS: {"spearman": None, "auroc_final": None}}
    assert choose_template(per_template, [QUOTED, GUESS], "spearman") == (QUOTED, "first-listed")


def test_an_unlocatable_target_is_reported_and_kept_out_of_training(tmp_path, tiny):
    blank = {"id": "twenty_questions-00099", "target": "   "}
    rows = [_row(i, *g[:4], log_posterior=[]) for i, g in enumerate(GAMES)]
    rows.append(_row(7, "   ", ["Can it fly?"], ["no"], False, []))  # a held-out game with that target
    path = _write(tmp_path, rows, extra_targets=[blank])
    report = calibrate(_config(), path, tmp_path / "out", scorer=StandIn(tiny[1], outcome_fn))
    listed = [e for e in report.excluded_targets if e["template"] == report.chosen_template]
    assert {(e["target_id"], e["target"]) for e in listed} == {("twenty_questions-00099", "   "),
                                                                ("twenty_questions-00007", "   ")}
    assert "empty" in listed[0]["reason"]
    m = report.per_template[report.chosen_template]
    assert m["num_excluded_targets"] == 2 and m["num_games_excluded"] == 1 and m["num_games"] == 4
    assert m["num_unlocatable_candidates"] == 4  # "   " was a candidate of each of the four other games
    assert excluded_target_ids(report) == {"twenty_questions-00099", "twenty_questions-00007"}
    assert excluded_target_ids(tmp_path / "out") == excluded_target_ids(report)  # read back from the JSON
    training = [Target(id=r["id"], task="twenty_questions", answer=r["target"])
                for r in pd.read_parquet(tmp_path / "targets.parquet").to_dict(orient="records")]
    kept = filter_training_targets(training, tmp_path / "out")
    assert [t.id for t in kept] == [f"twenty_questions-{i:05d}" for i in range(4)]
    assert load_report(tmp_path / "out").excluded_targets == report.excluded_targets


def test_unlocatable_reasons(tiny):
    tokenizer = tiny[1]
    assert unlocatable_reason(tokenizer, QUOTED, "dog") is None
    assert "exactly once" in unlocatable_reason(tokenizer, "Is it this?", "dog")
    # " dog" + "s" renders as the single token " dogs": the target's tokens do not occur in the text
    assert "merge" in unlocatable_reason(tokenizer, "The answer is {target}s.", "dog")
    assert unlocatable_reason(tokenizer, "The answer is {target}s.", "dog", strict=False) is None


# ---------------------------------------------------------------- scoring with a model


def test_trajectory_rebuilt_from_messages_is_token_exact(toy_path, tiny):
    tokenizer = tiny[1]
    game = read_games(toy_path)[0]
    trajectory = to_trajectory(tokenizer, game)
    assert trajectory.input_ids == encode(tokenizer, render(tokenizer, game.messages, add_generation_prompt=True))
    assert [t.move for t in trajectory.turns] == game.moves and trajectory.num_turns == 3
    first = trajectory.turns[0]
    assert tokenizer.decode(trajectory.input_ids[slice(*first.span)]) == "Can it fly?"


def test_candidate_lists_keep_the_target_first_and_are_seeded(toy_path):
    games = read_games(toy_path)
    pools = [ToyKB.nouns] * len(games)
    lists = candidate_lists(games, pools, 3, seed=0)
    assert all(names[0] == g.target and len(names) == 3 and len(set(names)) == 3 for g, names in zip(games, lists))
    assert lists == candidate_lists(games, pools, 3, seed=0)
    assert candidate_lists(games, pools, 0, seed=0)[1] == ["cow", "ant", "bee", "owl"]


@pytest.mark.parametrize("template, budget", [(QUOTED, 2048), (QUOTED, 1), ("{target} is my guess.", 2048)])
def test_packed_candidate_scores_match_one_forward_per_prefix(toy_path, tiny, template, budget):
    # budget 1 puts every candidate in its own forward; the empty-prefix template reads y_1 off h_t itself
    model, tokenizer = tiny
    trajectory = to_trajectory(tokenizer, read_games(toy_path)[0])
    names = ["bee", "ant", "ice cream", "owl"]
    packed = score_candidates(model, trajectory, [build_elicitation(tokenizer, template, n) for n in names], budget)
    for c, name in enumerate(names):
        trajectory.target = Target(id=name, task="twenty_questions", answer=name)
        (reference,) = score_beliefs_per_prefix(model, tokenizer, [trajectory], template).per_trajectory()
        torch.testing.assert_close(packed[:, c], reference, atol=1e-4, rtol=1e-4)


def test_tiny_model_end_to_end_on_synthesized_games(tmp_path):
    from deltabelief.synthesis import synthesize

    config = load_config("tiny", ["data.num_games=6", "calibration.num_trajectories=5",
                                  f"calibration.templates={json.dumps([QUOTED, GUESS])}"])
    data = synthesize(config.data, config.game, tmp_path / "data")
    report = calibrate(config, data.trajectories_path, tmp_path / "cal", progress=False)
    assert report.chosen_template in (QUOTED, GUESS) and report.criterion in ("spearman", "auroc", "first-listed")
    assert report.summary["num_games"] == 5 and report.summary["splits_used"] == ["train"]  # tiny: no held-out split
    for template in (QUOTED, GUESS):
        m = report.per_template[template]
        assert m["num_games"] == 5 and m["mean_num_candidates"] == 4 and m["num_posterior_pairs"] > 5
        assert m["max_abs_diff_true_vs_candidate_scorer"] < 1e-4  # packed candidates agree with score_beliefs
        assert -1.0 <= m["spearman"] <= 1.0 and 0.0 <= m["ece"] <= 1.0
    for key in ("json", "reliability", "belief_curves"):
        assert (tmp_path / "cal").joinpath(report.paths[key].rsplit("/", 1)[1]).stat().st_size > 0
    assert load_chosen_template(tmp_path / "cal") == report.chosen_template
