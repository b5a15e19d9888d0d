"""Every suite end to end on 2 targets with a scripted judge: results table (eval contract),
hand-computed metrics, interaction scaling, plots and report; plus one run through the real
rollout with the tiny policy."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest

from deltabelief.config import EvalConfig, JudgeConfig, PolicyConfig
from deltabelief.data.contracts import validate_dataset
from deltabelief.evaluation import RESULT_COLUMNS, evaluate
from deltabelief.evaluation.suites import get_suite, load_examples, parse_sources, suite_judge_config
from deltabelief.games.base import play_moves
from deltabelief.games.murder_mystery import MurderMystery
from deltabelief.trajectory import PolicyTurn, Trajectory
from deltabelief.types import JudgeReply

SUCCESS_SUITES = ["twenty_questions", "guess_my_city", "murder_mystery", "customer_service"]


def winning_move(target) -> str:
    """A move that wins under each game's rules (and the scripted judge below)."""
    if target.task == "twenty_questions":
        return f"Is it a {target.answer}?"
    if target.task == "guess_my_city":
        return f"Is your city {target.answer.split(',')[0]}?"
    if target.task == "murder_mystery":
        return f"I accuse {MurderMystery().culprit(target)} of the murder."
    return f"Here is the fix: {target.answer}"


class ScriptedPolicy:
    """Target 0: sample 0 wins on turn 2, sample 1 on turn 3; every other game never wins."""

    def moves(self, target_index: int, sample: int, turn: int, target) -> str:
        if target_index == 0 and turn == 2 + sample:
            return winning_move(target)
        return f"Question number {turn} about it?"


def scripted_play(policy, game, judge, targets, n_per_target, max_turns=None, seed=0, *, eval_mode=False,
                  progress=True):
    """Stand-in for rollout: plays the scripted moves through the real game rules and judge."""
    assert eval_mode
    game.max_turns = max_turns or game.max_turns
    games = [(g, i, t, game.new_state(t)) for g, t in enumerate(targets) for i in range(n_per_target)]
    while running := [x for x in games if not x[3].done]:
        moves = [policy.moves(g, i, x[3].num_turns + 1, t) for x in running for (g, i, t, _) in [x]]
        play_moves(game, judge, [x[3] for x in running], moves)
    return [
        Trajectory(target=t, group_id=g, sample_index=i, input_ids=[], prompt_length=0, solved=s.solved,
                   turns=[PolicyTurn([], (0, 0), [], turn.move, turn.answer, turn.status) for turn in s.turns])
        for g, i, t, s in games
    ]


class ScriptedJudge:
    """Role-play: 'goal reached' for winning moves, else a short reply; TQ: 'no'; ratings 2 + 2·turns."""

    name = "scripted"

    def answer_batch(self, requests):
        replies = []
        for r in requests:
            if r.task == "personalization_rating":
                turns = int(r.move.split()[2])
                missing = r.target.id.endswith("trip-nadia") and turns == 2
                replies.append(JudgeReply("invalid", parsed=False) if missing else JudgeReply(str(2 + 2 * turns)))
            elif "answered" in r.labels:
                won = r.move.startswith(("Is your city", "I accuse", "Here is the fix"))
                replies.append(JudgeReply("goal reached", "Goal reached") if won else JudgeReply("answered", "Hmm, maybe."))
            else:
                replies.append(JudgeReply("no"))
        return replies


def answers(conversations):
    return [f"answer after {sum(m['role'] == 'assistant' for m in c)} turns" for c in conversations]


def beliefs(trajectories):
    # log b_t = -3 + t for solved games, -3 for unsolved ones.
    return [np.array([-3.0 + (t if tr.solved else 0) for t in range(tr.num_turns + 1)]) for tr in trajectories]


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    suites = SUCCESS_SUITES + ["personalization"]
    config = EvalConfig(suites=suites, k=2, budgets=[2, 3], num_targets=2,
                        sources=["twenty_questions=examples"])
    return evaluate(
        config, ScriptedPolicy(), tmp_path_factory.mktemp("eval"), judges={s: ScriptedJudge() for s in suites},
        targets={"personalization": load_examples("personalization")[:2]},  # dinner-nadia, trip-nadia
        play_fn=scripted_play, answer_fn=answers, belief_fn=beliefs, progress=False,
    )


def test_results_table_follows_the_eval_contract(result):
    frame = validate_dataset("eval", result.results_path)
    assert list(pd.read_parquet(result.results_path).columns) == list(RESULT_COLUMNS)
    # 4 success suites x 2 targets x 2 samples x 2 budgets + personalization 2 x 2 x 3 turns.
    assert len(frame) == 4 * 2 * 2 * 2 + 2 * 2 * 3
    assert set(frame["suite"]) == set(SUCCESS_SUITES) | {"personalization"}


@pytest.mark.parametrize("suite", SUCCESS_SUITES)
def test_success_metrics_are_hand_computed(result, suite):
    m = result.metrics
    # Budget 2: successes [[1, 0], [0, 0]] -> repeat rates (1/2, 0): 0.25 ± 0.25;
    # pass@1 = (1/2 + 0) / 2, pass@2 = (1 + 0) / 2.
    assert m[f"{suite}/budget_2/success_mean"] == pytest.approx(0.25)
    assert m[f"{suite}/budget_2/success_std"] == pytest.approx(0.25)
    # Budget 3 (the headline): [[1, 1], [0, 0]] -> 0.5 ± 0, pass@1 = 0.5, pass@2 = 0.5.
    assert m[f"{suite}/success_mean"] == pytest.approx(0.5)
    assert m[f"{suite}/success_std"] == pytest.approx(0.0)
    assert m[f"{suite}/pass@1"] == pytest.approx(0.5)
    assert m[f"{suite}/pass@2"] == pytest.approx(0.5)
    # Turns at budget 3: winners took 2 and 3, losers 3 each -> 11 / 4.
    assert m[f"{suite}/turns_mean"] == pytest.approx(11 / 4)
    assert m[f"{suite}/turns_solved_mean"] == pytest.approx(2.5)
    assert m[f"{suite}/invalid_rate"] == 0.0 and m[f"{suite}/num_games"] == 4


def test_interaction_scaling_reuses_the_longest_games(result):
    frame = result.results
    games = frame[frame["suite"] == "guess_my_city"]
    won_late = games[(games["sample"] == 1) & (games["target_id"] == games["target_id"].min())]
    assert won_late.set_index("budget")["solved"].to_dict() == {2: False, 3: True}
    assert won_late.set_index("budget")["num_turns"].to_dict() == {2: 2, 3: 3}
    assert "read from games played at 3 turns" in result.notes["guess_my_city"]["budgets"]


def test_personalization_reports_mean_rating_per_turn(result):
    m = result.metrics
    # Ratings 2 + 2·t for t = 1, 2, 3; at turn 2 the ratings of trip-nadia (2 samples) could not
    # be parsed: NaN in the table, left out of the mean.
    assert [m[f"personalization/budget_{t}/rating_mean"] for t in (1, 2, 3)] == pytest.approx([4.0, 6.0, 8.0])
    assert m["personalization/rating_mean"] == pytest.approx(8.0)
    assert m["personalization/rating_missing"] == 0.0
    assert "personalization/success_mean" not in m and "personalization/pass@1" not in m
    rows = result.results[result.results["suite"] == "personalization"]
    assert rows["rating"].isna().sum() == 2 and not rows["solved"].any()
    assert result.summary_path.exists()


def test_belief_curves_and_metrics(result):
    m = result.metrics
    # Solved games (2 of 4) gain 2 and 3 nats; unsolved ones stay at -3 (gain 0).
    assert m["twenty_questions/belief_gain_mean"] == pytest.approx((2 + 3 + 0 + 0) / 4)
    assert m["twenty_questions/log_belief_first_mean"] == pytest.approx(-3.0)
    beliefs_frame = pd.read_parquet(result.beliefs_path)
    assert set(beliefs_frame["suite"]) == {"twenty_questions"}


def test_outputs_exist_and_report_lists_every_suite(result):
    assert set(result.plots) == {"belief_curves", "pass_at_k", "interaction_scaling"}
    for path in result.plots.values():
        assert path.exists() and path.read_bytes()[:4] == b"\x89PNG"
    report = result.report_path.read_text()
    for suite in SUCCESS_SUITES + ["personalization"]:
        assert f"### {suite}" in report
    assert "![pass_at_k](pass_at_k.png)" in report
    assert "0.500 ± 0.000" in report
    per_target = pd.read_parquet(result.per_target_path)
    assert set(per_target["budget"]) == {3}


def test_games_file_holds_every_game_move_by_move_at_the_largest_budget(result):
    lines = [json.loads(line) for line in (result.out_dir / "games.jsonl").read_text().splitlines()]
    # 4 success suites x 2 targets x 2 samples (budget 3) + personalization 2 x 2 (its 3 turns).
    assert len(lines) == 4 * 2 * 2 + 2 * 2
    city = [g for g in lines if g["suite"] == "guess_my_city" and g["solved"]]
    first = result.results[result.results["suite"] == "guess_my_city"]["target_id"].min()
    assert {(g["target_id"], g["sample"], len(g["turns"])) for g in city} == {(first, 0, 2), (first, 1, 3)}
    assert city[0]["turns"][0] == ["Question number 1 about it?", "Hmm, maybe.", "answered"]
    assert city[0]["turns"][-1][2] == "finished"


def test_parse_sources_and_bad_configs(tmp_path):
    assert parse_sources(["guess_my_city=reference:/x.parquet"]) == {"guess_my_city": "reference:/x.parquet"}
    with pytest.raises(ValueError, match="suite=SOURCE"):
        parse_sources(["guess_my_city"])
    with pytest.raises(KeyError, match="unknown suite"):
        parse_sources(["chess=examples"])
    with pytest.raises(KeyError, match="unknown suite"):
        evaluate(EvalConfig(suites=["chess"]), None, tmp_path)
    with pytest.raises(ValueError, match="budgets"):
        evaluate(EvalConfig(budgets=[0, 10]), None, tmp_path)


def test_kb_judge_falls_back_to_local_outside_twenty_questions_and_guess_my_city():
    kb = JudgeConfig(backend="kb", model="smollm2")
    assert suite_judge_config(get_suite("twenty_questions"), kb) is kb
    assert suite_judge_config(get_suite("guess_my_city"), kb) is kb  # the city knowledge base answers it
    assert suite_judge_config(get_suite("murder_mystery"), kb) == JudgeConfig(backend="local", model="smollm2")
    openai = JudgeConfig(backend="openai")
    assert suite_judge_config(get_suite("murder_mystery"), openai) is openai


def test_real_rollout_with_the_tiny_policy(tmp_path):
    from deltabelief.policy.policy import Policy

    policy = Policy.from_config(PolicyConfig(model="tiny", max_new_tokens=8, batch_size=8))
    targets = {"guess_my_city": load_examples("guess_my_city")[:2]}
    config = EvalConfig(suites=["guess_my_city"], k=2, budgets=[1, 2], num_targets=2)
    out = evaluate(config, policy, tmp_path, targets=targets, judges={"guess_my_city": ScriptedJudge()},
                   progress=False)
    frame = validate_dataset("eval", out.results_path)
    assert len(frame) == 2 * 2 * 2 and set(frame["budget"]) == {1, 2}
    assert not math.isnan(out.metrics["guess_my_city/success_mean"])
    assert out.report_path.exists()
