"""The built-in knowledge base: size, taxonomy, parse rules, validation, consistent(), subset."""

from __future__ import annotations

import copy
import math

import pytest
import yaml

from deltabelief.data.knowledge_base import (
    DEFAULT_PATH,
    KnowledgeBaseError,
    ParsedMove,
    load_kb,
    tokens,
)


@pytest.fixture(scope="module")
def kb():
    return load_kb()


# ---------------------------------------------------------------- the shipped KB


def test_shipped_kb_size_and_taxonomy(kb):
    assert len(kb.nouns) >= 150
    assert len(kb.predicates) >= 40
    assert len(set(kb.nouns)) == len(kb.nouns)
    for noun in kb.nouns:
        path = kb.category_path(noun)
        assert path and path[0] in ("living", "non_living"), (noun, path)
    assert all(len(p.phrasings) >= 2 for p in kb.predicates), [p.name for p in kb.predicates if len(p.phrasings) < 2]
    assert kb.category_path("dog") == ["living", "animal", "mammal"]
    assert kb.category_path("bee") == ["living", "animal", "invertebrate", "insect"]
    assert kb.category_path("apple") == ["non_living", "food", "fruit"]
    assert kb.category_path("egg") == ["non_living", "food"]
    assert kb.category_path("hammer") == ["non_living", "object", "tool"]


def test_shipped_kb_covers_the_brief(kb):
    kinds = {p.name: p.kind for p in kb.predicates}
    for category in ("animal", "mammal", "bird", "fish", "insect", "plant", "food", "fruit", "vegetable", "tool",
                     "furniture", "vehicle", "clothing", "instrument", "kitchenware", "electronics", "building"):
        assert kinds[category] == "category", category
    for prop in ("bigger_than_breadbox", "edible", "man_made", "found_indoors", "has_legs", "metal", "can_fly",
                 "lives_in_water", "wheels", "uses_electricity", "soft", "sharp", "used_in_kitchen", "worn"):
        assert kinds[prop] == "property", prop
    assert kinds["alive"] == "category"


@pytest.mark.parametrize(
    "noun, predicate, expected",
    [
        ("dog", "mammal", True), ("dog", "animal", True), ("dog", "alive", True), ("dog", "four_legs", True),
        ("dog", "can_fly", False), ("eagle", "can_fly", True), ("penguin", "can_fly", False),
        ("penguin", "has_wings", True), ("whale", "lives_in_water", True), ("whale", "fish", False),
        ("shark", "fish", True), ("apple", "fruit", True), ("apple", "edible", True), ("apple", "alive", False),
        ("hammer", "tool", True), ("hammer", "metal", True), ("car", "wheels", True), ("boat", "wheels", False),
        ("television", "uses_electricity", True), ("knife", "sharp", True), ("pillow", "soft", True),
        ("elephant", "bigger_than_breadbox", True), ("mouse", "bigger_than_breadbox", False),
        ("sock", "worn", True), ("ring", "worn", True), ("pan", "used_in_kitchen", True),
        ("chair", "has_legs", True), ("snake", "has_legs", False), ("house", "man_made", True),
        ("mountain", "man_made", False), ("rock", "natural", True),
    ],
)
def test_truth_spot_checks(kb, noun, predicate, expected):
    assert kb.holds(noun, predicate) is expected


def test_complement_predicates_are_exact_negations(kb):
    for noun in kb.nouns:
        assert kb.holds(noun, "inanimate") is not kb.holds(noun, "alive")
        assert kb.holds(noun, "natural") is not kb.holds(noun, "man_made")
        assert kb.holds(noun, "smaller_than_breadbox") is not kb.holds(noun, "bigger_than_breadbox")


def test_every_noun_is_distinguishable(kb):
    signatures = {tuple(kb.profile(n).values()) for n in kb.nouns}
    assert len(signatures) == len(kb.nouns)


def test_every_canonical_question_and_phrasing_parses_to_its_predicate(kb):
    for p in kb.predicates:
        assert kb.parse(p.question) == ParsedMove("predicate", p.name), p.question
        for phrasing in p.phrasings:
            assert kb.parse(phrasing) == ParsedMove("predicate", p.name), (p.name, phrasing)


def test_every_guess_question_parses_to_its_noun_and_finishes(kb):
    for noun in kb.nouns:
        question = kb.guess_question(noun)
        assert kb.parse(question) == ParsedMove("guess", noun)
        assert kb.answer(noun, question)[0] == "finished"
    assert kb.guess_question("dog") == "Is it a dog?"
    assert kb.guess_question("apple") == "Is it an apple?"
    assert kb.guess_question("milk") == "Is it milk?"


def test_load_kb_is_cached_and_unknown_nouns_raise(kb):
    assert load_kb() is kb
    assert load_kb(DEFAULT_PATH) is kb
    with pytest.raises(KnowledgeBaseError, match="unicorn"):
        kb.holds("unicorn", "animal")
    with pytest.raises(KnowledgeBaseError, match="flies_backwards"):
        kb.holds("dog", "flies_backwards")
    assert kb.canonical("Automobile") == "car"


# ---------------------------------------------------------------- parse rules


def test_tokens_lowercase_words_without_articles():
    assert tokens("Is it an ANIMAL?") == ("is", "it", "animal")
    assert tokens("Is it man-made, the thing?") == ("is", "it", "man", "made", "thing")


@pytest.mark.parametrize(
    "move, kind, name",
    [
        ("Is it an animal?", "predicate", "animal"),
        ("IS IT A KIND OF ANIMAL", "predicate", "animal"),
        ("Is it a living creature?", "predicate", "animal"),  # 'living creature' beats 'living'
        ("Is it a farm animal?", "predicate", "farm"),  # 'farm animal' beats 'animal'
        ("Does it have four legs?", "predicate", "four_legs"),  # beats 'legs'
        ("Is it not alive?", "predicate", "inanimate"),  # the negation sits inside a phrasing
        ("Is it black and white?", "predicate", "black_and_white"),  # so does 'and'
        ("Is it a dog?", "guess", "dog"),
        ("is the secret word DOG", "guess", "dog"),
        ("Are you thinking of an automobile?", "guess", "car"),
        ("So, is it a cat then?", "guess", "cat"),
        ("Ice-cream?", "guess", "ice cream"),
    ],
)
def test_parse_recognises(kb, move, kind, name):
    assert kb.parse(move) == ParsedMove(kind, name)


@pytest.mark.parametrize(
    "move, reason_part",
    [
        ("Is it a large animal?", "several properties"),
        ("Is it an animal or a plant?", "'or'"),
        ("Is it big and heavy?", "'and'"),
        ("Isn't it an animal?", "negative"),
        ("Is it never alive?", "negative"),
        ("Is it bigger than a car?", "mentions 'car'"),
        ("Is it a dog or a cat?", "mentions 'dog', 'cat'"),
        ("Is it a concept?", "no property"),
        ("xyzzy plugh?", "no property"),
    ],
)
def test_parse_unanswerable_with_reason(kb, move, reason_part):
    parsed = kb.parse(move)
    assert parsed.kind == "unanswerable" and parsed.name is None
    assert reason_part in parsed.reason


# ---------------------------------------------------------------- consistent()


@pytest.fixture()
def toy_kb(tmp_path):
    return load_kb(_write(tmp_path, _toy()))


def test_consistent_follows_hand_made_histories(toy_kb):
    assert toy_kb.consistent([]) == ["dog", "cat", "eagle", "apple", "car"]
    history = [("Is it an animal?", "yes")]
    assert toy_kb.consistent(history) == ["dog", "cat", "eagle"]
    history.append(("Can it fly?", "no"))
    assert toy_kb.consistent(history) == ["dog", "cat"]
    history.append(("Is it a dog?", "no"))
    assert toy_kb.consistent(history) == ["cat"]
    assert toy_kb.log_posterior(history) == 0.0
    assert toy_kb.consistent([("Is it an animal?", "no")]) == ["apple", "car"]
    assert toy_kb.log_posterior([("Is it an animal?", "no")]) == pytest.approx(-math.log(2))
    # every answer contradicts something: nothing is left
    assert toy_kb.consistent([("Is it an animal?", "yes"), ("Is it an animal?", "no")]) == []
    assert toy_kb.log_posterior([("Is it an animal?", "yes"), ("Is it an animal?", "no")]) == float("-inf")


def test_consistent_ignores_statuses_and_moves_without_information(toy_kb):
    everything = ["dog", "cat", "eagle", "apple", "car"]
    for status in ("invalid", "repeated", "unanswerable", "answered"):
        assert toy_kb.consistent([("Is it an animal?", status)]) == everything
    assert toy_kb.consistent([("Is it blue?", "no")]) == everything  # unparseable move
    assert toy_kb.consistent([("Is it an animal?", "finished")]) == everything


def test_consistent_on_guesses_and_synonyms(toy_kb):
    assert toy_kb.consistent([("Is it an automobile?", "no")]) == ["dog", "cat", "eagle", "apple"]
    assert toy_kb.consistent([("Is it a cat?", "finished")]) == ["cat"]
    # the game turns a judge's 'finished' on a synonym into 'yes'
    assert toy_kb.consistent([("Is it an automobile?", "yes")]) == ["car"]
    assert toy_kb.consistent([("Is it an animal?", "yes")], nouns=["cat", "apple", "dog"]) == ["cat", "dog"]


# ---------------------------------------------------------------- subset


def test_subset_restricts_secrets_but_keeps_predicates_and_vocabulary(kb):
    tiny = load_kb(nouns=["dog", "cat", "apple", "car"])
    assert tiny.nouns == ["dog", "cat", "apple", "car"]
    assert [p.name for p in tiny.predicates] == [p.name for p in kb.predicates]
    assert tiny.holds("dog", "mammal") and not tiny.holds("apple", "animal")
    assert tiny.consistent([("Is it an animal?", "yes")]) == ["dog", "cat"]
    assert tiny.consistent([("Does it climb trees?", "yes")]) == ["cat"]
    assert tiny.parse("Is it a penguin?") == ParsedMove("guess", "penguin")
    assert tiny.answer("dog", "Is it a penguin?") == ("no", "No.")
    with pytest.raises(KnowledgeBaseError, match="penguin"):
        tiny.answer("penguin", "Is it an animal?")
    with pytest.raises(KnowledgeBaseError, match="unicorn"):
        kb.subset(["dog", "unicorn"])
    assert kb.subset(["automobile", "car"]).nouns == ["car"]


# ---------------------------------------------------------------- validation


def _toy() -> dict:
    """A valid five-noun KB; tests break one rule at a time."""
    return {
        "version": 1,
        "nouns": {
            "dog": "living/animal/mammal",
            "cat": "living/animal/mammal",
            "eagle": "living/animal/bird",
            "apple": "non_living/food/fruit",
            "car": "non_living/object/vehicle",
        },
        "synonyms": {"car": ["automobile"]},
        "predicates": [
            {"name": "animal", "question": "Is it an animal?", "phrasings": ["animal", "creature"],
             "category": "animal"},
            {"name": "can_fly", "question": "Can it fly?", "phrasings": ["fly", "flies"], "holds": ["eagle"]},
            {"name": "climbs", "question": "Does it climb trees?", "phrasings": ["climb trees"], "holds": ["cat"]},
            {"name": "food", "question": "Is it food?", "phrasings": ["food", "edible"], "category": "food"},
        ],
    }


def _write(tmp_path, data, name="kb.yaml"):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def _error(tmp_path, data) -> str:
    with pytest.raises(KnowledgeBaseError) as info:
        load_kb(_write(tmp_path, data))
    return str(info.value)


def test_toy_kb_is_valid(toy_kb):
    assert toy_kb.nouns == ["dog", "cat", "eagle", "apple", "car"]
    assert toy_kb.answer("car", "Is it an automobile?") == ("finished", "Yes! It is car.")


def test_validation_noun_without_category(tmp_path):
    data = _toy()
    data["nouns"]["rock"] = None
    data["nouns"]["stone"] = ""
    message = _error(tmp_path, data)
    assert "noun 'rock' has no category" in message
    assert "noun 'stone' has no category" in message


def test_validation_unreachable_predicates(tmp_path):
    data = _toy()
    data["predicates"].append(
        {"name": "soars", "question": "Does it soar?", "phrasings": ["fly"], "holds": ["eagle", "car"]}
    )
    message = _error(tmp_path, data)
    # 'fly' now names two predicates: can_fly keeps 'flies', soars has nothing left
    assert "predicate 'soars' is unreachable" in message
    assert "predicate 'can_fly' is unreachable" not in message
    assert "predicate 'can_fly': 'fly' parses to 'unanswerable'" in message


def test_validation_predicate_shadowed_by_a_noun(tmp_path):
    data = _toy()
    data["predicates"].append({"name": "is_dog", "question": "Is it a dog?", "phrasings": ["dog"], "holds": ["dog"]})
    message = _error(tmp_path, data)
    assert "predicate 'is_dog': 'dog' contains the noun name(s) ['dog']" in message


def test_validation_indistinguishable_nouns(tmp_path):
    data = _toy()
    data["nouns"]["wolf"] = "living/animal/mammal"  # answers exactly like dog
    message = _error(tmp_path, data)
    assert "nouns ['dog', 'wolf'] have identical answers on every predicate" in message


def test_validation_allows_indistinguishable_declared_synonyms(tmp_path):
    data = _toy()
    data["nouns"]["hound"] = "living/animal/mammal"
    data["synonyms"]["dog"] = ["hound", "doggy"]
    kb = load_kb(_write(tmp_path, data))
    assert kb.nouns == ["dog", "cat", "eagle", "apple", "car", "hound"]
    assert kb.answer("dog", "Is it a hound?")[0] == "finished"
    assert kb.answer("hound", "Is it a doggy?")[0] == "finished"
    assert kb.consistent([("Is it a hound?", "no")]) == ["cat", "eagle", "apple", "car"]


def test_validation_unknown_references(tmp_path):
    data = _toy()
    data["predicates"][1]["holds"] = ["eagle", "griffin"]
    data["predicates"].append({"name": "metal", "question": "Is it metal?", "phrasings": ["metal"],
                               "holds_categories": ["machine"]})
    data["synonyms"]["unicorn"] = ["horned horse"]
    message = _error(tmp_path, data)
    assert "predicate 'can_fly' references unknown nouns ['griffin']" in message
    assert "predicate 'metal' references unknown categories ['machine']" in message
    assert "synonyms: 'unicorn' is not a noun" in message


def test_validation_names_that_contain_other_nouns(tmp_path):
    data = _toy()
    data["nouns"]["hot dog"] = "non_living/food"
    data["predicates"][3]["holds"] = []
    message = _error(tmp_path, data)
    assert "name 'hot dog' (of 'hot dog') contains 'dog', a name of another noun 'dog'" in message


def test_validation_category_tree_and_structure(tmp_path):
    data = _toy()
    data["nouns"]["salmon"] = "non_living/food/mammal"  # 'mammal' already sits under 'animal'
    message = _error(tmp_path, data)
    assert "category 'mammal' sits under 'animal'" in message
    bad = copy.deepcopy(_toy())
    bad["predicates"][0]["holds"] = ["dog"]  # both category and holds
    bad["extra_section"] = {}
    message = _error(tmp_path, bad)
    assert "extra_section" in message
    bad.pop("extra_section")
    assert "predicate #1 ('animal'): give exactly one of" in _error(tmp_path, bad)


def test_validation_duplicate_yaml_keys(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text(yaml.safe_dump(_toy(), sort_keys=False).replace("  cat:", "  dog: x/y\n  cat:", 1))
    with pytest.raises(KnowledgeBaseError, match="duplicate key 'dog'"):
        load_kb(path)
