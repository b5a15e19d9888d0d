"""The judge-driven games: each success rule (a correct guess, a wrong one, a multi-question
move), the rule corrections on the judge's label, the reference data and STaR-GATE loading."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest

from anchor import ANCHOR_DATA
from deltabelief.config import DataConfig, GameConfig
from deltabelief.evaluation.suites import get_suite, load_examples, load_suite_targets
from deltabelief.games.base import GameState, get_game, play_moves
from deltabelief.games.customer_service import CustomerService
from deltabelief.games.guess_my_city import WRONG_GUESS_MESSAGE, GuessMyCity
from deltabelief.games.murder_mystery import (
    NOT_AN_ACCUSATION_MESSAGE,
    WRONG_ACCUSATION_MESSAGE,
    MurderMystery,
    find_culprit,
)
from deltabelief.games.personalization import (
    RATING_LABELS,
    Personalization,
    final_answer_messages,
    load_star_gate,
    parse_rating,
    rate_final_answers,
    rating_request,
)
from deltabelief.games.role_play import MULTI_QUESTION_MESSAGE, REPEATED_MESSAGE, fold, mentions
from deltabelief.types import JudgeReply, JudgeRequest, Target

ANCHOR = ANCHOR_DATA
REFERENCE = ANCHOR / "delta_belief_rl"
STAR_GATE = ANCHOR / "star_gate"


class FixedJudge:
    """Stand-in judge: returns the same reply to every request and records the requests."""

    name = "fixed"

    def __init__(self, label: str, text: str = "", parsed: bool = True):
        self.reply = JudgeReply(label=label, text=text, parsed=parsed)
        self.requests: list[JudgeRequest] = []

    def answer_batch(self, requests):
        self.requests.extend(requests)
        return [self.reply for _ in requests]


def play(game, target: Target, moves: list[str], judge) -> GameState:
    state = game.new_state(target)
    for move in moves:
        play_moves(game, judge, [state], [move])
    return state


def one(game, target, move, judge):
    state = play(game, target, [move], judge)
    return state.turns[-1], state


# ---------------------------------------------------------------- Guess My City

LYON = Target(id="lyon", task="guess_my_city", answer="Lyon, France")
BENGALURU = Target(id="blr", task="guess_my_city", answer="Bengaluru, India", extra={"aliases": ["Bangalore"]})


def test_city_guess_with_city_and_country_finishes_without_the_judge():
    judge = FixedJudge("answered", "should not be asked")
    turn, state = one(GuessMyCity(), LYON, "Is your city Lyon, France?", judge)
    assert (turn.status, state.solved, state.done) == ("finished", True, True)
    assert judge.requests == []


def test_city_guess_naming_the_city_is_accepted_from_the_judge_also_by_alias():
    turn, state = one(GuessMyCity(), LYON, "Is it lyon?", FixedJudge("goal reached", "Goal reached"))
    assert turn.status == "finished" and state.solved
    turn, state = one(GuessMyCity(), BENGALURU, "Do you live in Bangalore?", FixedJudge("goal reached"))
    assert turn.status == "finished" and state.solved


def test_city_judge_goal_without_naming_the_city_is_a_wrong_guess():
    turn, state = one(GuessMyCity(), LYON, "Is it in France?", FixedJudge("goal reached", "Goal reached"))
    assert (turn.status, turn.answer, state.solved, state.done) == ("answered", WRONG_GUESS_MESSAGE, False, False)


def test_city_wrong_guess_is_answered_and_the_game_goes_on():
    judge = FixedJudge("answered", "No, that's not my city.")
    turn, state = one(GuessMyCity(), LYON, "Is your city Paris, France?", judge)
    assert (turn.status, turn.answer, state.solved) == ("answered", "No, that's not my city.", False)
    assert judge.requests[0].labels == ("answered", "goal reached", "invalid")
    assert "Lyon" in judge.requests[0].instructions and "France" in judge.requests[0].instructions


def test_city_multi_question_and_repeat_are_caught_before_the_judge():
    judge = FixedJudge("answered", "It is inland.")
    turn, _ = one(GuessMyCity(), LYON, "Is it big? Is it Lyon, France?", judge)
    assert (turn.status, turn.answer) == ("invalid", MULTI_QUESTION_MESSAGE)
    state = play(GuessMyCity(), LYON, ["Is it near the sea?", "is it  near the SEA"], judge)
    assert [t.status for t in state.turns] == ["answered", "repeated"]
    assert state.turns[1].answer == REPEATED_MESSAGE and len(judge.requests) == 1


def test_city_name_leaked_by_the_judge_is_masked_and_invalid_label_kept():
    turn, _ = one(GuessMyCity(), LYON, "What food is it known for?", FixedJudge("answered", "Lyon is known for quenelles."))
    assert turn.answer == "my city is known for quenelles."
    turn, _ = one(GuessMyCity(), LYON, "What is the name of your city?", FixedJudge("invalid", "I can't say."))
    assert turn.status == "invalid"


def test_city_accents_unparsed_goal_and_empty_reply():
    valparaiso = Target(id="v", task="guess_my_city", answer="Valparaíso, Chile")
    turn, _ = one(GuessMyCity(), valparaiso, "Is it Valparaiso, Chile?", FixedJudge("answered"))
    assert turn.status == "finished"
    assert fold("Ciudad  Juárez!") == "ciudad juarez" and mentions("in ciudad juarez?", "Ciudad Juárez")
    # An unparseable reply that says 'Goal reached' in words counts, subject to the rule.
    turn, _ = one(GuessMyCity(), LYON, "Is it Lyon?", FixedJudge("invalid", "Goal reached!", parsed=False))
    assert turn.status == "finished"
    turn, _ = one(GuessMyCity(), LYON, "Is it cold?", FixedJudge("invalid", "", parsed=False))
    assert turn.status == "unanswerable"


def test_city_target_without_country_fails_with_its_id():
    with pytest.raises(ValueError, match="'bad-city'"):
        GuessMyCity().new_state(Target(id="bad-city", task="guess_my_city", answer="Surat"))


# ---------------------------------------------------------------- Murder Mystery

STORY = ("At the old mill, miller Jonas Berg is found dead. The suspects are his brother Karl and the clerk "
         "Ada. The true culprit is Dr. Mira Holt, the village doctor, who poisoned him over a debt.")
MILL = Target(id="mill", task="murder_mystery", answer=STORY, extra={"scenario": "Jonas Berg died at the mill."})


def test_culprit_is_read_from_the_story():
    assert find_culprit(STORY) == "Dr. Mira Holt"
    assert find_culprit("The murderer is assistant Gautam, who sabotaged it.") == "Gautam"
    assert find_culprit("The hidden culprit is a smuggler, Javier Ortiz, who killed him.") == "Javier Ortiz"
    assert find_culprit("Nobody knows what happened.") is None


def test_mystery_direct_accusation_of_the_culprit_wins():
    judge = FixedJudge("goal reached", "Goal reached")
    turn, state = one(MurderMystery(), MILL, "I accuse Mira Holt of murdering Jonas.", judge)
    assert (turn.status, state.solved) == ("finished", True)
    assert "The true culprit is Dr. Mira Holt." in judge.requests[0].instructions


def test_mystery_wrong_accusation_or_mere_mention_does_not_win():
    judge = FixedJudge("goal reached", "Goal reached")
    turn, state = one(MurderMystery(), MILL, "I accuse Karl of the murder.", judge)
    assert (turn.status, turn.answer, state.solved) == ("answered", WRONG_ACCUSATION_MESSAGE, False)
    turn, state = one(MurderMystery(), MILL, "Dr. Holt, where were you that night?", judge)
    assert (turn.status, turn.answer, state.solved) == ("answered", NOT_AN_ACCUSATION_MESSAGE, False)
    turn, _ = one(MurderMystery(), MILL, "I accuse Karl.", FixedJudge("answered", "Karl protests loudly."))
    assert (turn.status, turn.answer) == ("answered", "Karl protests loudly.")


def test_mystery_multi_question_move_is_invalid():
    judge = FixedJudge("goal reached")
    turn, state = one(MurderMystery(), MILL, "Where was Ada? Did Mira Holt do it?", judge)
    assert (turn.status, state.solved, judge.requests) == ("invalid", False, [])


def test_mystery_without_culprit_trusts_the_judge_on_accusations():
    target = Target(id="m2", task="murder_mystery", answer="A story that hides who did it.", extra={"scenario": "x"})
    turn, _ = one(MurderMystery(), target, "I accuse the gardener of the murder.", FixedJudge("goal reached"))
    assert turn.status == "finished"


# ---------------------------------------------------------------- Customer Service

WASHER = Target(id="washer", task="customer_service", answer="The child lock is on; turning it off fixes it.",
                extra={"scenario": "The washing machine will not start."})


def test_service_correct_fix_wins_and_wrong_fix_goes_on():
    turn, state = one(CustomerService(), WASHER, "Please hold the child-lock button to turn it off.",
                      FixedJudge("goal reached", "Goal reached"))
    assert (turn.status, state.solved) == ("finished", True)
    judge = FixedJudge("answered", "I unplugged it, it still won't start.")
    turn, state = one(CustomerService(), WASHER, "Please unplug it and plug it back in.", judge)
    assert (turn.status, turn.answer, state.solved) == ("answered", "I unplugged it, it still won't start.", False)
    assert "child lock" in judge.requests[0].instructions and "will not start" in judge.requests[0].instructions


def test_service_multi_question_move_is_invalid_and_scenario_is_required():
    turn, _ = one(CustomerService(), WASHER, "Is it on? Is the door shut?", FixedJudge("goal reached"))
    assert turn.status == "invalid"
    with pytest.raises(ValueError, match="'no-scenario'"):
        CustomerService().opening_messages(Target(id="no-scenario", task="customer_service", answer="fix"))


# ---------------------------------------------------------------- Personalization

NADIA = Target(id="p", task="personalization", answer="What should I cook tonight?",
               extra={"persona": "Nadia is a vegetarian nurse who loves spicy food.", "gold_response": "A chili."})


def test_personalization_requires_one_question_and_never_finishes():
    judge = FixedJudge("answered", "I'm vegetarian.")
    game = Personalization()
    state = play(game, NADIA, ["Do you eat meat?", "Tell me more.", "Spicy? Sweet?"], judge)
    assert [t.status for t in state.turns] == ["answered", "invalid", "invalid"]
    assert state.done and not state.solved and game.max_turns == 3
    with pytest.raises(RuntimeError, match="over"):
        play_moves(game, judge, [state], ["How long can you cook?"])
    assert judge.requests[0].labels == ("answered",) and "vegetarian nurse" in judge.requests[0].instructions


def test_final_answer_messages_and_ratings():
    game = Personalization()
    history = [("Do you eat meat?", "No."), ("Spicy?", "Yes, very.")]
    messages = final_answer_messages(game, NADIA, history, 2)
    assert [m["role"] for m in messages] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert messages[-1]["content"].startswith("Yes, very.\n\n") and NADIA.answer in messages[-1]["content"]
    assert final_answer_messages(game, NADIA, history, 0)[-1]["content"].startswith(NADIA.answer)
    request = rating_request(NADIA, "Make a spicy chickpea curry.")
    assert request.labels == RATING_LABELS and "A chili." in request.instructions
    assert parse_rating(JudgeReply(label="7")) == 7.0
    assert math.isnan(parse_rating(JudgeReply(label="invalid", parsed=False)))


def test_rate_final_answers_writes_one_answer_per_turn():
    class Played:
        target = NADIA
        turns = [type("T", (), {"move": f"Question {i}?", "answer": f"Answer {i}."})() for i in range(3)]

    seen = []

    def answer_fn(conversations):
        seen.extend(conversations)
        return [f"answer after {sum(m['role'] == 'assistant' for m in c)} turns" for c in conversations]

    class Rater:
        def answer_batch(self, requests):
            return [JudgeReply(label=str(2 + 2 * int(r.move.split()[2]))) for r in requests]

    answers, ratings = rate_final_answers(game=Personalization(), rater=Rater(), games=[Played()], answer_fn=answer_fn)
    assert answers == [["answer after 1 turns", "answer after 2 turns", "answer after 3 turns"]]
    assert ratings == [[4.0, 6.0, 8.0]] and len(seen) == 3


# ---------------------------------------------------------------- data: examples, reference files, STaR-GATE


@pytest.mark.parametrize("task", ["twenty_questions", "guess_my_city", "murder_mystery", "customer_service",
                                  "personalization"])
def test_builtin_examples_load_and_fit_their_game(task):
    targets = load_examples(task)
    assert len(targets) >= 3
    game = get_game(task)
    for target in targets:
        game.new_state(target)
        assert game.opening_messages(target)[0]["role"] == "system"


@pytest.mark.parametrize("suite,count", [("guess_my_city", 185), ("murder_mystery", 50), ("customer_service", 200)])
def test_reference_test_files_load_into_their_games(suite, count):
    targets, split = load_suite_targets(get_suite(suite), f"reference:{REFERENCE / suite / 'test.parquet'}")
    assert (len(targets), split) == (count, "test")
    game = get_game(suite)
    for target in targets:
        game.new_state(target)
        assert game.opening_messages(target) == [dict(m) for m in target.messages]
    if suite == "murder_mystery":
        assert all(MurderMystery().culprit(t) for t in targets)  # every story names its culprit
    if suite == "customer_service":
        assert all(t.extra["scenario"] for t in targets)


def test_reference_twenty_questions_val_file_uses_its_own_split():
    targets, split = load_suite_targets(get_suite("twenty_questions"), f"reference:{REFERENCE / 'twenty_questions' / 'val.parquet'}",
                                        DataConfig(), GameConfig())
    assert (len(targets), split) == (198, "val")


def test_malformed_reference_row_fails_with_its_id(tmp_path):
    frame = pd.read_parquet(REFERENCE / "guess_my_city" / "test.parquet").head(3)
    frame.loc[1, "golden_answers"] = "Surat"  # no country
    frame.at[1, "reward_model"] = {"ground_truth": {"target": ["Surat"]}, "style": "rule"}
    path = tmp_path / "test.parquet"
    frame.to_parquet(path)
    with pytest.raises(ValueError, match="test_1"):
        load_suite_targets(get_suite("guess_my_city"), f"reference:{path}")


def test_malformed_example_fails_with_its_id(tmp_path):
    (tmp_path / "guess_my_city.json").write_text(json.dumps(
        {"task": "guess_my_city", "targets": [{"id": "ok", "target": "Lyon, France"}, {"id": "broken", "target": ""}]}))
    with pytest.raises(ValueError, match="'broken'"):
        load_examples("guess_my_city", tmp_path)


def test_star_gate_pairs_load_with_gold_responses():
    targets = load_star_gate(STAR_GATE)
    assert len(targets) == 500 and len({t.id for t in targets}) == 500
    first = next(t for t in targets if t.id == "prompt-0 persona-0")
    assert first.extra["persona_name"] == "Reece" and first.answer.startswith("Is there a chart")
    assert first.extra["gold_response"].startswith("Absolutely, Reece")
    Personalization().new_state(first)
    assert sum("gold_response" not in t.extra for t in targets) == 1  # 'prompt-44 persona-4' has an empty one


def test_malformed_star_gate_entry_fails_with_its_id(tmp_path):
    for name in ("personas_test.json", "personas_test_NAMES.json", "prompts_test.json"):
        (tmp_path / name).write_text((STAR_GATE / name).read_text())
    (tmp_path / "gold-responses_test.json").write_text(json.dumps({"prompt-3 persona-1": "not a list"}))
    with pytest.raises(ValueError, match="prompt-3 persona-1"):
        load_star_gate(tmp_path)
    (tmp_path / "gold-responses_test.json").write_text(json.dumps({"prompt-3 persona-1": [""]}))
    assert "gold_response" not in load_star_gate(tmp_path)[50 + 3].extra  # empty gold: rated without one
    personas = json.loads((STAR_GATE / "personas_test.json").read_text())
    personas[2] = ""
    (tmp_path / "personas_test.json").write_text(json.dumps(personas))
    with pytest.raises(ValueError, match="persona-2"):
        load_star_gate(tmp_path)
