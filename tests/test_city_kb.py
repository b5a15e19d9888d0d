"""The city knowledge base and the kb judge in Guess My City: a held-out table of answers written
by hand (not generated from the file), the checks on load, the exact posterior, targets and suite."""

from __future__ import annotations

import copy

import pytest
import yaml

from deltabelief.config import GameConfig, JudgeConfig
from deltabelief.data.cities import (
    CITIES_PATH,
    CityKBError,
    answered_history,
    build_city_kb,
    city_targets,
    consistent_cities,
    load_city_kb,
    secret_city,
)
from deltabelief.evaluation.suites import get_suite, load_examples, load_suite_targets
from deltabelief.games.base import get_game, play_moves
from deltabelief.session import build_judge, build_target
from deltabelief.types import Target


@pytest.fixture(scope="module")
def judge():
    return build_judge(JudgeConfig(backend="kb"), GameConfig())


def play(judge, city: str, moves: list[str]):
    game = get_game("guess_my_city")
    state = game.new_state(build_target("guess_my_city", city))
    results = [play_moves(game, judge, [state], [move])[0] for move in moves]
    return state, results


def outcome(result) -> str:
    """'yes' / 'no' from the judge's words, else the game status (finished, invalid, repeated)."""
    if result.status == "answered":
        return {"Yes.": "yes", "No.": "no"}[result.text]
    return result.status


HELD_OUT = [
    # continent, country
    ("Paris", "Is it in Europe?", "yes"),
    ("Tokyo", "Is your city in Asia?", "yes"),
    ("Nairobi", "Is it in Africa?", "yes"),
    ("Toronto", "Is it in North America?", "yes"),
    ("Lima", "Is it located in South America?", "yes"),
    ("Auckland", "Is it in Oceania?", "yes"),
    ("Cairo", "Is it in Europe?", "no"),
    ("Chicago", "Is it in the USA?", "yes"),
    ("Manchester", "Is it in the UK?", "yes"),
    ("Marseille", "Is it in France?", "yes"),
    ("Johannesburg", "Is it in South Africa?", "yes"),
    ("Johannesburg", "Is it in Africa?", "yes"),
    # capital
    ("Canberra", "Is it the capital city?", "yes"),
    ("Sydney", "Is it a national capital?", "no"),
    ("Ottawa", "Is it a capital?", "yes"),
    # coast
    ("Lisbon", "Is it on the coast?", "yes"),
    ("Madrid", "Is it a coastal city?", "no"),
    ("Chicago", "Is it by the ocean?", "no"),
    ("Rio de Janeiro", "Does it have beaches?", "yes"),
    # population
    ("Mexico City", "Does it have more than 10 million people?", "yes"),
    ("Wellington", "Does it have more than a million people?", "no"),
    ("Wellington", "Is it a small city?", "yes"),
    ("Lyon", "Is it a big city?", "yes"),
    # climate, hemisphere, altitude, sea
    ("Mumbai", "Does it have a tropical climate?", "yes"),
    ("Dubai", "Is it in a desert?", "yes"),
    ("Moscow", "Does it have cold winters?", "yes"),
    ("Miami", "Does it have cold winters?", "no"),
    ("Barcelona", "Does it have a Mediterranean climate?", "yes"),
    ("Barcelona", "Is it on the Mediterranean?", "yes"),
    ("Lisbon", "Is it on the Mediterranean Sea?", "no"),
    ("Buenos Aires", "Is it in the southern hemisphere?", "yes"),
    ("Quito", "Is it south of the equator?", "yes"),
    ("Oslo", "Is it in the northern hemisphere?", "yes"),
    ("Bogotá", "Is it at high altitude?", "yes"),
    ("Amsterdam", "Is it at a high elevation?", "no"),
    # languages (official or main national languages)
    ("Santiago", "Do people speak Spanish there?", "yes"),
    ("São Paulo", "Is Portuguese spoken there?", "yes"),
    ("São Paulo", "Is Spanish spoken there?", "no"),
    ("Dakar", "Is it a French-speaking city?", "yes"),
    ("Riyadh", "Is Arabic the language there?", "yes"),
    ("Vienna", "Do they speak German?", "yes"),
    ("Kyoto", "Do they speak English there?", "no"),
    # guesses: the city alone goes to the judge, city and country finish by the game's rule
    ("Lyon", "Is it Lyon?", "finished"),
    ("Lyon", "Is your city Lyon, France?", "finished"),
    ("Bengaluru", "Is it Bangalore?", "finished"),
    ("Valparaíso", "Is it Valparaiso?", "finished"),
    ("Lyon", "Is it Marseille?", "no"),
    ("Lyon", "Do you live in Paris?", "no"),
    # what it cannot answer with yes or no is invalid (the game has no 'unanswerable' label)
    ("Lyon", "What is the weather like?", "invalid"),
    ("Lyon", "Is it in Europe or Asia?", "invalid"),
    ("Lyon", "Is it not in Europe?", "invalid"),
]


@pytest.mark.parametrize("city, move, expected", HELD_OUT)
def test_held_out_answers(judge, city, move, expected):
    _, (result,) = play(judge, city, [move])
    assert outcome(result) == expected, (city, move, result)


def test_cities_outside_the_knowledge_base_are_refused_by_name(judge):
    game = get_game("guess_my_city")
    for target, wanted in [("Geneva, Switzerland", "'Geneva' is not one of the"),
                           ("Paris, United States", "has 'Paris' in 'france', not in 'United States'")]:
        state = game.new_state(Target(id="t", task="guess_my_city", answer=target))
        with pytest.raises(ValueError, match=wanted):
            play_moves(game, judge, [state], ["Is it in Europe?"])
    with pytest.raises(SystemExit, match="'Atlantis' is not a city"):
        build_target("guess_my_city", "Atlantis")


def test_size_targets_and_examples():
    kb = load_city_kb()
    targets = city_targets()
    assert len(kb.nouns) == len(targets) >= 100
    assert build_target("guess_my_city", "paris").answer == "Paris, France"
    assert build_target("guess_my_city", "Bangalore").answer == "Bengaluru, India"
    for target in load_examples("guess_my_city") + targets:  # every built-in example is a KB city
        secret_city(kb, target)
    suite_targets, split = load_suite_targets(get_suite("guess_my_city"), "kb")
    assert split == "kb" and [t.answer for t in suite_targets] == [t.answer for t in targets]


def test_exact_posterior_by_hand(judge):
    state, _ = play(judge, "Quito", ["Is it in South America?", "What is the food like?", "Is it a national capital?",
                                     "Is it high in the mountains?"])
    turns = [(t.move, t.answer, t.status) for t in state.turns]
    # the invalid open question carries no information
    assert [status for _, status in answered_history(turns)] == ["yes", "yes", "yes"]
    assert sorted(consistent_cities(turns)) == ["bogota", "quito"]  # the capitals of South America above 1500 m
    state, _ = play(judge, "Quito", ["Is it in the Southern Hemisphere?", "Is it Lima?", "Is it Quito, Ecuador?"])
    turns = [(t.move, t.answer, t.status) for t in state.turns]
    south = consistent_cities(turns[:1])
    assert "lima" in south and "quito" in south and "bogota" not in south
    assert "lima" not in consistent_cities(turns[:2])  # a wrong guess removes that city
    assert consistent_cities(turns) == ["quito"]
    assert load_city_kb().log_posterior(answered_history(turns)) == 0.0


@pytest.fixture(scope="module")
def raw():
    return yaml.safe_load(CITIES_PATH.read_text(encoding="utf-8"))


@pytest.mark.parametrize("edit, message", [
    (lambda r: r["cities"]["Paris"].update(pop="huge"), "city 'Paris': field 'pop' must be one of"),
    (lambda r: r["cities"]["Paris"].pop("coast"), "city 'Paris': unknown fields [], missing fields ['coast']"),
    (lambda r: r["cities"]["Lyon"].update(country="Narnia"), "city 'Lyon': country 'Narnia' is not in 'countries'"),
    (lambda r: r["cities"]["Lyon"].update(sea="mediterranean"), "city 'Lyon': sea 'mediterranean' but coast is false"),
    (lambda r: r["cities"]["Lyon"].update(capital="yes please"), "city 'Lyon': field 'capital' must be a bool"),
    (lambda r: r["countries"]["France"].update(continent="atlantis"), "country 'France': continent must be one of"),
    (lambda r: r["countries"]["France"].update(languages=["klingon"]), "country 'France': languages must be"),
    # Lyon made exactly like Marseille: the noun knowledge base's check names both
    (lambda r: r["cities"]["Lyon"].update(coast=True, climate="mediterranean", sea="mediterranean"),
     r"\['lyon', 'marseille'\] have identical answers"),
])
def test_bad_rows_are_refused_by_name(raw, edit, message):
    broken = copy.deepcopy(raw)
    edit(broken)
    with pytest.raises(CityKBError, match=message):
        build_city_kb(broken)
