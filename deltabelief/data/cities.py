"""The city knowledge base: Guess My City answered exactly on the CPU, and its exact posterior.

``builtin/cities.yaml`` lists countries (continent, official languages, other names) and cities
(country, capital, coast, population band, climate, hemisphere, altitude, sea) with the yes/no
questions about them. :func:`load_city_kb` checks every attribute (the error names the city, the
field and the rule) and translates the file into the noun knowledge base's own format, so the
same :class:`~deltabelief.data.knowledge_base.KnowledgeBase` parses moves, answers them, checks
the predicates (reachable, no two cities answered alike) and gives ``consistent(history)``.

A city is a noun whose category path is ``continent/country``: "Is it in Europe?" and
"Is it in France?" are category predicates, the attributes are ``holds`` predicates. Guesses
may name the city alone ("Is it Lyon?", "Is your city Lyon?") or with its country
("Is it Lyon, France?").
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Iterable

import yaml

from deltabelief.data.knowledge_base import KnowledgeBase, KnowledgeBaseError, build_knowledge_base, normalize_name
from deltabelief.games.guess_my_city import split_city
from deltabelief.types import Target

CITIES_PATH = Path(__file__).resolve().parent / "builtin" / "cities.yaml"
TASK = "guess_my_city"

CONTINENTS = ("europe", "asia", "africa", "north_america", "south_america", "oceania")
LANGUAGES = ("english", "spanish", "french", "portuguese", "arabic", "german")
POPULATION_BANDS = ("small", "large", "mega")
CLIMATES = ("tropical", "desert", "mediterranean", "cold_winters", "other")
SEAS = ("mediterranean",)
REQUIRED = {"country": str, "capital": bool, "coast": bool, "pop": str, "climate": str}
OPTIONAL = {"south": bool, "high": bool, "sea": str, "aliases": list}
CITY_GUESS_OPENINGS = (
    "is your city", "is your home city", "is your hometown", "is city", "is it city of", "is it in",
    "do you live in", "are you from", "do you come from", "you live in", "your city is", "i guess your city is",
)

# Answers the kb judge gives in Guess My City (the game shows them as the judge's reply).
YES, NO = "Yes.", "No."


class CityKBError(KnowledgeBaseError):
    """The city file broke a rule; the message names every city, field and rule."""


def load_city_kb(path: str | Path | None = None) -> KnowledgeBase:
    """Load, check and build the city knowledge base (cached per resolved path; read-only)."""
    return _load(_resolve(path))[0]


def city_targets(path: str | Path | None = None) -> list[Target]:
    """Every city as a Guess My City target, 'City, Country', its other names as aliases."""
    return list(_load(_resolve(path))[1])


def _resolve(path: str | Path | None) -> str:
    return str(Path(path).resolve() if path is not None else CITIES_PATH)


@functools.lru_cache(maxsize=4)
def _load(path: str) -> tuple[KnowledgeBase, tuple[Target, ...]]:
    with open(path, encoding="utf-8") as fh:
        raw = yaml.safe_load(fh)
    kb = build_city_kb(raw, source=path)
    targets = tuple(Target(id=f"city-{normalize_name(city).replace(' ', '-')}", task=TASK,
                           answer=f"{city}, {spec['country']}", extra={"aliases": list(spec.get("aliases", []))})
                    for city, spec in raw["cities"].items())
    return kb, targets


def build_city_kb(raw: Any, source: str = "<memory>") -> KnowledgeBase:
    """Check the city file and build its knowledge base; one error lists every broken rule."""
    if not isinstance(raw, dict) or not {"countries", "cities", "predicates"} <= set(raw):
        raise CityKBError(f"{source}: needs the sections 'countries', 'cities' and 'predicates'")
    errors: list[str] = []
    countries = _read_countries(raw["countries"], errors)
    cities = _read_cities(raw["cities"], countries, errors)
    if errors:
        raise CityKBError(f"city knowledge base {source} is invalid:\n- " + "\n- ".join(errors))
    try:
        return build_knowledge_base(_as_noun_kb(raw["predicates"], countries, cities), source,
                                    guess_openings=CITY_GUESS_OPENINGS)
    except KnowledgeBaseError as exc:
        raise CityKBError(f"{exc}\n(the nouns are the cities of {source})") from None


def _read_countries(raw: Any, errors: list[str]) -> dict[str, dict]:
    if not isinstance(raw, dict) or not raw:
        errors.append("'countries' must map a country name to {continent, languages, aliases}")
        return {}
    countries = {}
    for name, spec in raw.items():
        where = f"country {name!r}"
        if not isinstance(spec, dict) or set(spec) - {"continent", "languages", "aliases"}:
            errors.append(f"{where}: allowed fields are continent, languages, aliases; got {spec!r}")
            continue
        if spec.get("continent") not in CONTINENTS:
            errors.append(f"{where}: continent must be one of {list(CONTINENTS)}, got {spec.get('continent')!r}")
        bad = [x for x in spec.get("languages", []) if x not in LANGUAGES]
        if bad or not isinstance(spec.get("languages", []), list):
            errors.append(f"{where}: languages must be a list drawn from {list(LANGUAGES)}, got {bad}")
        countries[str(name)] = spec
    return countries


def _read_cities(raw: Any, countries: dict[str, dict], errors: list[str]) -> dict[str, dict]:
    if not isinstance(raw, dict) or not raw:
        errors.append("'cities' must map a city name to its attributes")
        return {}
    choices = {"pop": POPULATION_BANDS, "climate": CLIMATES, "sea": SEAS}
    cities = {}
    for name, spec in raw.items():
        where = f"city {name!r}"
        if not isinstance(spec, dict):
            errors.append(f"{where}: attributes must be a mapping, got {spec!r}")
            continue
        unknown = sorted(set(spec) - set(REQUIRED) - set(OPTIONAL))
        missing = sorted(set(REQUIRED) - set(spec))
        if unknown or missing:
            errors.append(f"{where}: unknown fields {unknown}, missing fields {missing}")
            continue
        for field, kind in {**REQUIRED, **OPTIONAL}.items():
            if field in spec and not isinstance(spec[field], kind):
                errors.append(f"{where}: field {field!r} must be a {kind.__name__}, got {spec[field]!r}")
            elif field in choices and field in spec and spec[field] not in choices[field]:
                errors.append(f"{where}: field {field!r} must be one of {list(choices[field])}, got {spec[field]!r}")
        if spec["country"] not in countries:
            errors.append(f"{where}: country {spec['country']!r} is not in 'countries'")
        if spec.get("sea") and not spec["coast"]:
            errors.append(f"{where}: sea {spec['sea']!r} but coast is false")
        cities[str(name)] = spec
    return cities


def _as_noun_kb(predicates: dict, countries: dict[str, dict], cities: dict[str, dict]) -> dict:
    """The city file in the noun knowledge base's format (nouns, synonyms, articles, predicates)."""
    key = {city: normalize_name(city) for city in cities}
    nouns = {key[c]: f"{spec_continent(countries, s)}/{normalize_name(s['country'])}" for c, s in cities.items()}
    synonyms = {}
    for city, spec in cities.items():
        country = countries[spec["country"]]
        names = [city, *spec.get("aliases", [])]
        country_names = [spec["country"], *country.get("aliases", [])]
        synonyms[key[city]] = [*spec.get("aliases", []), *(f"{n} {c}" for n in names for c in country_names)]

    def holding(test) -> list[str]:
        return [key[c] for c, s in cities.items() if test(c, s)]

    def entry(name: str, spec: dict, **truth) -> dict:
        return {"name": name, "question": spec["question"], "phrasings": list(spec["phrasings"]), **truth}

    out = [entry(f"in_{c}", p, category=c) for c, p in predicates["continent"].items()]
    out += [{"name": f"in_{normalize_name(n).replace(' ', '_')}", "question": f"Is it in {n}?",
             "phrasings": [n, *spec.get("aliases", [])], "category": normalize_name(n)} for n, spec in countries.items()]
    out.append(entry("capital", predicates["capital"], holds=holding(lambda c, s: s["capital"])))
    out.append(entry("coastal", predicates["coast"], holds=holding(lambda c, s: s["coast"])))
    pop = predicates["pop"]
    out.append(entry("over_1m", pop["large_or_mega"], holds=holding(lambda c, s: s["pop"] != "small")))
    out.append(entry("over_10m", pop["mega"], holds=holding(lambda c, s: s["pop"] == "mega")))
    out.append(entry("under_1m", pop["small"], complement_of="over_1m"))
    out += [entry(f"climate_{v}", p, holds=holding(lambda c, s, v=v: s["climate"] == v))
            for v, p in predicates["climate"].items()]
    south = predicates["south"]
    out.append(entry("southern", south, holds=holding(lambda c, s: s.get("south", False))))
    out.append(entry("northern", south["complement"], complement_of="southern"))
    out.append(entry("high_altitude", predicates["high"], holds=holding(lambda c, s: s.get("high", False))))
    out += [entry(f"on_{v}_sea", p, holds=holding(lambda c, s, v=v: s.get("sea") == v)) for v, p in predicates["sea"].items()]
    out += [entry(f"speaks_{lang}", p, holds=holding(lambda c, s, lang=lang: lang in countries[s["country"]]["languages"]))
            for lang, p in predicates["language"].items()]
    return {"nouns": nouns, "synonyms": synonyms, "articles": {k: "" for k in nouns}, "predicates": out}


def spec_continent(countries: dict[str, dict], spec: dict) -> str:
    return countries[spec["country"]]["continent"]


# ---------------------------------------------------------------- games


def secret_city(kb: KnowledgeBase, target: Target) -> str:
    """The KB city a 'City, Country' target names; a ValueError names the target when it is not one."""
    try:
        city, country = split_city(target.answer)
    except ValueError as err:
        raise ValueError(f"target {target.id!r}: {err}") from None
    try:
        secret = kb.canonical(city)
    except KnowledgeBaseError:
        raise ValueError(f"target {target.id!r}: {city!r} is not one of the {len(kb.nouns)} cities of the city "
                         "knowledge base; use --judge local or --judge openai for other cities") from None
    try:
        kb.canonical(f"{city} {country}")
    except KnowledgeBaseError:
        raise ValueError(f"target {target.id!r}: the city knowledge base has {city!r} in "
                         f"{kb.category_path(secret)[-1]!r}, not in {country!r}") from None
    return secret


def answered_history(turns: Iterable[tuple[str, str, str]]) -> list[tuple[str, str]]:
    """(move, status) pairs ``kb.consistent`` reads, from Guess My City (move, answer, status) turns.

    The kb judge's 'Yes.' / 'No.' replies reach the game as status ``answered``; a solved game ends
    with ``finished``. Every other turn (invalid, repeated, free-text replies) carries no information.
    """
    pairs = []
    for move, answer, status in turns:
        if status == "finished":
            pairs.append((move, "finished"))
        elif status == "answered" and answer.strip() in (YES, NO):
            pairs.append((move, "yes" if answer.strip() == YES else "no"))
    return pairs


def consistent_cities(turns: Iterable[tuple[str, str, str]], kb: KnowledgeBase | None = None) -> list[str]:
    """Cities still possible after Guess My City turns (move, answer, status); exact posterior:
    log b*_t = -log(len(result)) under a uniform prior."""
    kb = kb or load_city_kb()
    return kb.consistent(answered_history(turns))
