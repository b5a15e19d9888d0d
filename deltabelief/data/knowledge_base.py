"""The built-in knowledge base: concrete nouns, yes/no predicates and an exact parser.

The knowledge base (KB) lets a CPU judge answer Twenty Questions exactly and lets us
compute the exact posterior over secrets after any history: with a uniform prior,
``log b*_t = -log(len(kb.consistent(history)))``.

The data lives in ``builtin/knowledge_base.yaml`` (see ``docs/knowledge_base.md``):
nouns with a category path, optional synonyms, and predicates with a canonical
question, phrasings and their truth (a category, a list of nouns, or the complement of
another predicate). :func:`load_kb` validates it and raises :class:`KnowledgeBaseError`
naming every culprit.

Parsing a move (:meth:`KnowledgeBase.parse`), in order:

1. Normalise: lower case, words only (``[a-z0-9]+``), and drop the articles a/an/the.
2. Guess: after dropping leading filler words (so, ok, well, hmm, ...) and trailing ones
   (then, perhaps, ...), the move is ``<guess opening> <name>`` where the opening is one
   of "is it", "is it called", "is this", "is the secret", "is your secret word",
   "are you thinking of", "could it be", "it is", "my guess is", ... and ``<name>`` is a
   noun or a declared synonym (the bare name alone also counts). That is a guess of the
   noun the name belongs to.
3. Otherwise find every phrasing of every predicate that occurs in the move as whole
   words; a match lying inside a longer match is dropped ("farm animal" beats "animal").
4. Outside the matched phrasings the move must not be negated (not, no, never, without,
   "n't", ...), must not mention a noun or synonym (comparisons such as "bigger than a
   car" are not answerable), and must not join parts with and/or/either/versus;
   otherwise it is ``unanswerable``. Phrasings may contain these words themselves
   ("not alive", "black and white", "forest or jungle").
5. Exactly one predicate left: a predicate move. None, or several different ones:
   ``unanswerable``, with a reason naming what was found.

:meth:`KnowledgeBase.answer` turns a parse into a status: a guess of the secret (or of
one of its synonyms) is ``finished``; a guess of any other known noun is ``no``; a
predicate is ``yes`` or ``no``; the rest is ``unanswerable`` with an instructive message.
"""

from __future__ import annotations

import functools
import logging
import math
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Literal, Sequence

import yaml

logger = logging.getLogger(__name__)

DEFAULT_PATH = Path(__file__).resolve().parent / "builtin" / "knowledge_base.yaml"

ARTICLES = frozenset({"a", "an", "the"})
NEGATIONS = frozenset({"not", "no", "never", "cannot", "nor", "neither", "none", "nothing", "without"})
CONNECTIVES = frozenset({"and", "or", "either", "versus", "vs"})
GUESS_OPENINGS = tuple(
    sorted(
        (
            tuple(text.split())
            for text in (
                "is it", "is it called", "is this", "is that", "is secret", "is secret word",
                "is secret thing", "is your secret", "is your secret word", "is your secret thing",
                "is answer", "are you thinking of", "could it be", "can it be", "would it be",
                "might it be", "it is", "it must be", "my guess is", "i guess", "i think it is",
            )
        ),
        key=len,
        reverse=True,
    )
)
LEADING_FILLER = frozenset({"so", "ok", "okay", "well", "hmm", "alright", "now", "then", "final", "guess"})
TRAILING_FILLER = frozenset({"then", "perhaps", "maybe", "please", "right", "now"})

PARSE_CACHE_SIZE = 50_000

YES_MESSAGE = "Yes."
NO_MESSAGE = "No."
FINISHED_MESSAGE = "Yes! It is {noun}."
UNANSWERABLE_MESSAGE = (
    "I can't answer that with a plain yes or no: {reason}. "
    "Ask about one property at a time, or guess one specific thing with 'Is it a ...?'."
)

_WORD = re.compile(r"[a-z0-9]+")
_CONTRACTED_NOT = re.compile(r"n['\u2019]t\b")

Tokens = tuple[str, ...]


class KnowledgeBaseError(ValueError):
    """A knowledge base broke a rule; the message names every culprit."""


@dataclass(frozen=True)
class Predicate:
    name: str
    phrasings: tuple[str, ...]
    question: str
    """Canonical question text, e.g. "Is it an animal?"."""
    kind: Literal["category", "property"] = "property"


@dataclass(frozen=True)
class ParsedMove:
    kind: Literal["predicate", "guess", "unanswerable"]
    name: str | None
    """Predicate name or guessed noun (canonical); None when unanswerable."""
    reason: str = ""
    """Why the move is unanswerable (no match, ambiguous: which ones, negated, ...)."""


def fold_accents(text: str) -> str:
    """Lower case without accents: 'São Paulo' -> 'sao paulo' (city names are asked both ways)."""
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def tokens(text: str) -> Tokens:
    """Lower case, accents and articles dropped, words only: 'Is it an Animal?' -> ('is', 'it', 'animal')."""
    return tuple(w for w in _WORD.findall(fold_accents(text)) if w not in ARTICLES)


def normalize_name(text: str) -> str:
    """'Ice-Cream' -> 'ice cream', 'Bogotá' -> 'bogota': the form names are stored and compared in."""
    return " ".join(_WORD.findall(fold_accents(text)))


class KnowledgeBase:
    """Nouns, predicates and their truth, plus the move parser. Treat as read-only.

    Built by :func:`load_kb` (which validates); :meth:`subset` keeps the predicates and
    the guess vocabulary of the full KB (a guess of a noun outside the subset is a plain
    'no') but restricts the candidate secrets.
    """

    def __init__(
        self,
        paths: dict[str, tuple[str, ...]],
        predicates: Sequence[Predicate],
        truth: dict[str, frozenset[str]],
        names: dict[str, str],
        groups: dict[str, frozenset[str]],
        articles: dict[str, str],
        source: str = "<memory>",
        guess_openings: Sequence[str] = (),
    ):
        self.nouns: list[str] = list(paths)
        self.predicates: list[Predicate] = list(predicates)
        self.source = source
        self._paths = dict(paths)
        self._truth = {name: frozenset(nouns) & frozenset(paths) for name, nouns in truth.items()}
        self._by_name = {p.name: p for p in self.predicates}
        self._names = dict(names)  # normalised name (whole vocabulary) -> canonical noun
        self._groups = dict(groups)  # noun -> nouns that are declared synonyms of it (itself included)
        self._articles = dict(articles)
        self._name_tokens = {tuple(name.split()): noun for name, noun in self._names.items()}
        self._max_name = max((len(t) for t in self._name_tokens), default=0)
        self._phrases: dict[Tokens, list[str]] = {}
        for p in self.predicates:
            for phrasing in p.phrasings:
                owners = self._phrases.setdefault(tokens(phrasing), [])
                if p.name not in owners:
                    owners.append(p.name)
        self._max_phrase = max((len(t) for t in self._phrases), default=0)
        self._parse_cache: dict[str, ParsedMove] = {}
        self._extra_openings = tuple(guess_openings)
        extra = {tokens(text) for text in guess_openings}
        self._openings = tuple(sorted(set(GUESS_OPENINGS) | extra, key=len, reverse=True))

    # ------------------------------------------------------------ lookups

    def __repr__(self) -> str:
        return f"KnowledgeBase({len(self.nouns)} nouns, {len(self.predicates)} predicates, {self.source})"

    def canonical(self, name: str) -> str:
        """The noun a name (noun or synonym, any case) refers to; raises for unknown names."""
        noun = self._names.get(normalize_name(name))
        if noun is None:
            raise KnowledgeBaseError(f"{name!r} is not a noun or synonym of the knowledge base ({self.source})")
        return noun

    def _require_noun(self, name: str) -> str:
        noun = self.canonical(name)
        if noun not in self._paths:
            raise KnowledgeBaseError(f"{name!r} is not one of the {len(self.nouns)} nouns of this knowledge base")
        return noun

    def predicate(self, name: str) -> Predicate:
        if name not in self._by_name:
            raise KnowledgeBaseError(f"unknown predicate {name!r}; predicates: {sorted(self._by_name)}")
        return self._by_name[name]

    def holds(self, noun: str, predicate: str) -> bool:
        return self._require_noun(noun) in self._truth[self.predicate(predicate).name]

    def category_path(self, noun: str) -> list[str]:
        """Categories from the root down, e.g. ['living', 'animal', 'mammal'] for 'dog'."""
        return list(self._paths[self._require_noun(noun)])

    def same_thing(self, a: str, b: str) -> bool:
        """True when two names refer to the same noun or to declared synonym nouns."""
        return self.canonical(b) in self._groups[self.canonical(a)]

    def profile(self, noun: str) -> dict[str, bool]:
        """Every predicate's answer for one noun (handy when reviewing the KB)."""
        noun = self._require_noun(noun)
        return {p.name: noun in self._truth[p.name] for p in self.predicates}

    def guess_question(self, noun: str) -> str:
        """'Is it a dog?', 'Is it an apple?', 'Is it milk?' (mass nouns have no article)."""
        return self._guess_text(self._require_noun(noun))

    def _guess_text(self, noun: str) -> str:
        article = self._articles.get(noun, "an" if noun[0] in "aeiou" else "a")
        return f"Is it {article} {noun}?" if article else f"Is it {noun}?"

    def subset(self, nouns: Sequence[str]) -> "KnowledgeBase":
        """The same predicates and vocabulary, restricted to these candidate secrets."""
        keep = list(dict.fromkeys(self._require_noun(n) for n in nouns))
        if not keep:
            raise KnowledgeBaseError("a knowledge-base subset needs at least one noun")
        return KnowledgeBase(
            {n: self._paths[n] for n in keep},
            self.predicates,
            self._truth,
            self._names,
            self._groups,
            self._articles,
            source=f"{self.source} (subset of {len(keep)})",
            guess_openings=self._extra_openings,
        )

    # ------------------------------------------------------------ parsing

    def parse(self, move: str) -> ParsedMove:
        """Classify a move as a guess, a predicate question or unanswerable (module docstring)."""
        if move not in self._parse_cache:
            if len(self._parse_cache) >= PARSE_CACHE_SIZE:
                self._parse_cache.clear()  # rollouts produce endless distinct moves: keep memory bounded
            self._parse_cache[move] = self._parse(move)
        return self._parse_cache[move]

    def _parse(self, move: str) -> ParsedMove:
        toks = tokens(move)
        guessed = self._match_guess(toks)
        if guessed is not None:
            return ParsedMove("guess", guessed)
        spans = self._match_phrasings(toks)
        covered = {i for start, end, _ in spans for i in range(start, end)}
        outside = {t for i, t in enumerate(toks) if i not in covered}
        found = list(dict.fromkeys(name for _, _, name in spans))
        if _CONTRACTED_NOT.search(move.lower()) or outside & NEGATIONS:
            return _unanswerable("it is a negative question; ask the positive form instead")
        mentioned = self._mentioned_names(toks, covered)
        if mentioned:
            example = self._guess_text(self._names[mentioned[0]])
            return _unanswerable(
                f"it mentions {_quote(mentioned)} inside a longer question (to guess it, ask exactly '{example}')"
            )
        joined = sorted(outside & CONNECTIVES)
        if joined:
            return _unanswerable(f"it joins several questions with {_quote(joined)}")
        if not found:
            return _unanswerable("it asks about no property I know")
        if len(found) > 1:
            questions = [self._by_name[name].question for name in found]
            return _unanswerable(f"it asks about several properties at once: {_quote(questions)}")
        return ParsedMove("predicate", found[0])

    def _match_guess(self, toks: Tokens) -> str | None:
        words = list(toks)
        while words and words[0] in LEADING_FILLER:
            words.pop(0)
        while words and words[-1] in TRAILING_FILLER:
            words.pop()
        if tuple(words) in self._name_tokens:
            return self._name_tokens[tuple(words)]
        for opening in self._openings:
            if tuple(words[: len(opening)]) == opening:
                rest = tuple(words[len(opening) :])
                if rest in self._name_tokens:
                    return self._name_tokens[rest]
        return None

    def _match_phrasings(self, toks: Tokens) -> list[tuple[int, int, str]]:
        """Maximal phrasing matches as (start, end, predicate), word positions [start, end)."""
        matches = []
        for start in range(len(toks)):
            for end in range(start + 1, min(len(toks), start + self._max_phrase) + 1):
                for name in self._phrases.get(toks[start:end], ()):
                    matches.append((start, end, name))

        def inside_longer(m: tuple[int, int, str]) -> bool:
            return any(o[0] <= m[0] and m[1] <= o[1] and o[1] - o[0] > m[1] - m[0] for o in matches)

        return [m for m in matches if not inside_longer(m)]

    def _mentioned_names(self, toks: Tokens, covered: set[int]) -> list[str]:
        found = []
        for start in range(len(toks)):
            for end in range(start + 1, min(len(toks), start + self._max_name) + 1):
                if toks[start:end] in self._name_tokens and not covered & set(range(start, end)):
                    found.append(" ".join(toks[start:end]))
        return list(dict.fromkeys(found))

    # ------------------------------------------------------------ answering

    def answer(self, secret: str, move: str) -> tuple[str, str]:
        """(status, message) with status in yes / no / finished / unanswerable."""
        secret = self._require_noun(secret)
        parsed = self.parse(move)
        if parsed.kind == "guess":
            if self.same_thing(parsed.name, secret):
                return "finished", FINISHED_MESSAGE.format(noun=secret)
            return "no", NO_MESSAGE
        if parsed.kind == "predicate":
            return ("yes", YES_MESSAGE) if secret in self._truth[parsed.name] else ("no", NO_MESSAGE)
        return "unanswerable", UNANSWERABLE_MESSAGE.format(reason=parsed.reason)

    def consistent(self, history: Iterable[tuple[str, str]], nouns: Iterable[str] | None = None) -> list[str]:
        """Nouns (default: all of this KB) consistent with (move, status) pairs.

        A yes/no on a predicate keeps the nouns with that answer; a 'no' on a guess removes
        the guessed noun and its synonyms; a 'yes' or 'finished' on a guess keeps only those
        (the game turns a judge's 'finished' into 'yes' when the move names a synonym rather
        than the secret). Every other status, and any unanswerable move, carries no
        information. Exact posterior: ``log b*_t = -log(len(result))``.
        """
        candidates = list(self.nouns) if nouns is None else [self._require_noun(n) for n in nouns]
        for move, status in history:
            if status not in ("yes", "no", "finished"):
                continue
            parsed = self.parse(move)
            if parsed.kind == "predicate" and status in ("yes", "no"):
                truth = self._truth[parsed.name]
                candidates = [n for n in candidates if (n in truth) == (status == "yes")]
            elif parsed.kind == "guess":
                group = self._groups[parsed.name]
                candidates = [n for n in candidates if (n in group) == (status != "no")]
        return candidates

    def log_posterior(self, history: Iterable[tuple[str, str]], nouns: Iterable[str] | None = None) -> float:
        """log b*_t = -log(#consistent nouns); -inf when no noun is consistent."""
        count = len(self.consistent(history, nouns))
        return -math.log(count) if count else float("-inf")


def _unanswerable(reason: str) -> ParsedMove:
    return ParsedMove("unanswerable", None, reason)


def _quote(items: Sequence[str]) -> str:
    return ", ".join(f"'{item}'" for item in items)


# ---------------------------------------------------------------- loading


def load_kb(path: str | Path | None = None, nouns: Sequence[str] | None = None) -> KnowledgeBase:
    """Load and validate a KB (default: the shipped one), optionally restricted to ``nouns``.

    Loaded files are cached by resolved path; treat the result as read-only.
    """
    kb = _load_cached(str(Path(path).resolve() if path is not None else DEFAULT_PATH))
    return kb.subset(nouns) if nouns else kb


@functools.lru_cache(maxsize=8)
def _load_cached(path: str) -> KnowledgeBase:
    try:
        with open(path, encoding="utf-8") as fh:
            raw: Any = yaml.load(fh, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as exc:
        raise KnowledgeBaseError(f"{path}: not valid YAML: {exc}") from exc
    kb = build_knowledge_base(raw, source=path)
    logger.debug("loaded %r", kb)
    return kb


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys (PyYAML silently keeps the last one)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise KnowledgeBaseError(f"duplicate key {key!r} at line {key_node.start_mark.line + 1}")
            seen.add(key)
        return super().construct_mapping(node, deep)


TOP_KEYS = frozenset({"version", "nouns", "synonyms", "articles", "predicates"})
PREDICATE_KEYS = frozenset(
    {"name", "question", "phrasings", "category", "holds", "holds_categories", "except", "complement_of"}
)


def build_knowledge_base(raw: Any, source: str = "<memory>", guess_openings: Sequence[str] = ()) -> KnowledgeBase:
    """Validate parsed YAML and build the KB; raise one error listing every broken rule.

    ``guess_openings``: guess openings besides the built-in ones ("is your city", for cities).
    """
    if not isinstance(raw, dict) or not TOP_KEYS >= set(raw):
        extra = sorted(set(raw) - TOP_KEYS) if isinstance(raw, dict) else "not a mapping"
        raise KnowledgeBaseError(f"{source}: top level must be a mapping with keys {sorted(TOP_KEYS)}; got {extra}")
    errors: list[str] = []
    paths = _read_nouns(raw.get("nouns"), errors)
    names, groups = _read_synonyms(raw.get("synonyms") or {}, paths, errors)
    articles = _read_articles(raw.get("articles") or {}, paths, errors)
    _check_category_tree(paths, errors)
    specs = _read_predicates(raw.get("predicates"), errors)
    truth = _compute_truth(specs, paths, errors)
    _check_names_in_text(names, groups, specs, errors)
    _raise_if(errors, source)
    predicates = [
        Predicate(s["name"], s["phrasings"], s["question"], "category" if "category" in s else "property")
        for s in specs
    ]
    kb = KnowledgeBase(paths, predicates, truth, names, groups, articles, source, guess_openings)
    _check_reachable(kb, errors)
    _check_distinguishable(kb, errors)
    _raise_if(errors, source)
    return kb


def _raise_if(errors: list[str], source: str) -> None:
    if errors:
        raise KnowledgeBaseError(f"knowledge base {source} is invalid:\n- " + "\n- ".join(errors))


def _read_nouns(raw: Any, errors: list[str]) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict) or not raw:
        errors.append("'nouns' must be a non-empty mapping of noun -> category path")
        return {}
    paths: dict[str, tuple[str, ...]] = {}
    for noun, path in raw.items():
        name = normalize_name(str(noun))
        if name != str(noun).strip() or set(name.split()) & ARTICLES:
            errors.append(f"noun {noun!r} must be lower-case words without articles, e.g. {name!r}")
        parts = [p.strip() for p in path.split("/")] if isinstance(path, str) else path
        if not parts or not isinstance(parts, list) or not all(isinstance(p, str) and p for p in parts):
            errors.append(f"noun {noun!r} has no category (give a path such as 'living/animal/mammal')")
            continue
        paths[name] = tuple(parts)
    return paths


def _read_synonyms(
    raw: Any, paths: dict[str, tuple[str, ...]], errors: list[str]
) -> tuple[dict[str, str], dict[str, frozenset[str]]]:
    names = {noun: noun for noun in paths}
    parent = {noun: noun for noun in paths}  # union-find over nouns declared synonyms of each other

    def root(n: str) -> str:
        while parent[n] != n:
            n = parent[n]
        return n

    for key, aliases in (raw.items() if isinstance(raw, dict) else []):
        noun = normalize_name(str(key))
        if noun not in paths:
            errors.append(f"synonyms: {key!r} is not a noun")
            continue
        for alias in [aliases] if isinstance(aliases, str) else list(aliases or []):
            name = normalize_name(str(alias))
            if not name or set(name.split()) & ARTICLES:
                errors.append(f"synonym {alias!r} of {noun!r} must be words without articles")
            elif name in paths:
                parent[root(name)] = root(noun)
            elif names.get(name, noun) != noun:
                errors.append(f"synonym {alias!r} is declared for both {names[name]!r} and {noun!r}")
            else:
                names[name] = noun
    if raw and not isinstance(raw, dict):
        errors.append("'synonyms' must be a mapping of noun -> list of other names")
    classes: dict[str, set[str]] = {}
    for noun in paths:
        classes.setdefault(root(noun), set()).add(noun)
    return names, {noun: frozenset(classes[root(noun)]) for noun in paths}


def _read_articles(raw: Any, paths: dict[str, tuple[str, ...]], errors: list[str]) -> dict[str, str]:
    if not isinstance(raw, dict):
        errors.append("'articles' must be a mapping of noun -> article ('' for none)")
        return {}
    unknown = [n for n in raw if normalize_name(str(n)) not in paths]
    if unknown:
        errors.append(f"articles: unknown nouns {unknown}")
    return {normalize_name(str(n)): str(a or "") for n, a in raw.items()}


def _check_category_tree(paths: dict[str, tuple[str, ...]], errors: list[str]) -> None:
    """Each category has one parent, so the paths form a tree."""
    parent: dict[str, tuple[str | None, str]] = {}
    for noun, path in paths.items():
        for i, category in enumerate(path):
            above = path[i - 1] if i else None
            seen = parent.setdefault(category, (above, noun))
            if seen[0] != above:
                errors.append(
                    f"category {category!r} sits under {seen[0]!r} for noun {seen[1]!r} "
                    f"but under {above!r} for {noun!r}"
                )


def _read_predicates(raw: Any, errors: list[str]) -> list[dict[str, Any]]:
    if not isinstance(raw, list) or not raw:
        errors.append("'predicates' must be a non-empty list")
        return []
    specs, seen = [], set()
    for i, entry in enumerate(raw):
        where = f"predicate #{i + 1} ({entry.get('name', '?') if isinstance(entry, dict) else entry!r})"
        if not isinstance(entry, dict) or set(entry) - PREDICATE_KEYS:
            extra = sorted(set(entry) - PREDICATE_KEYS) if isinstance(entry, dict) else "not a mapping"
            errors.append(f"{where}: allowed keys are {sorted(PREDICATE_KEYS)}; got {extra}")
            continue
        name, question, phrasings = entry.get("name"), entry.get("question"), entry.get("phrasings")
        sources = [k for k in ("category", "complement_of") if k in entry]
        if "holds" in entry or "holds_categories" in entry:
            sources.append("holds")
        if not isinstance(name, str) or not name or name in seen:
            errors.append(f"{where}: needs a unique string 'name'")
        elif not isinstance(question, str) or not question.strip():
            errors.append(f"{where}: needs a canonical 'question'")
        elif not _is_phrase_list(phrasings):
            errors.append(f"{where}: 'phrasings' must be a non-empty list of non-empty strings")
        elif len(sources) != 1 or ("except" in entry and sources != ["holds"]):
            errors.append(
                f"{where}: give exactly one of 'category', 'complement_of' or 'holds'/'holds_categories' (+ 'except')"
            )
        else:
            seen.add(name)
            specs.append({**entry, "phrasings": tuple(phrasings), "question": question.strip()})
    return specs


def _is_phrase_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(p, str) and tokens(p) for p in value)


def _compute_truth(
    specs: list[dict[str, Any]], paths: dict[str, tuple[str, ...]], errors: list[str]
) -> dict[str, frozenset[str]]:
    categories = {c for path in paths.values() for c in path}
    truth: dict[str, frozenset[str]] = {}
    for spec in specs:
        name = spec["name"]
        wanted = ([spec["category"]] if "category" in spec else []) + list(spec.get("holds_categories") or [])
        unknown_categories = [c for c in wanted if c not in categories]
        listed = list(spec.get("holds") or []) + list(spec.get("except") or [])
        unknown_nouns = [n for n in listed if n not in paths]
        if unknown_categories:
            errors.append(f"predicate {name!r} references unknown categories {unknown_categories}")
        if unknown_nouns:
            errors.append(f"predicate {name!r} references unknown nouns {unknown_nouns}")
        if "complement_of" in spec:
            continue
        under = {n for n, path in paths.items() if set(wanted) & set(path)}
        positive = (under | set(spec.get("holds") or [])) & set(paths)
        pointless = [n for n in spec.get("except") or [] if n in paths and n not in positive]
        if pointless:
            errors.append(f"predicate {name!r}: 'except' lists {pointless}, which it does not include anyway")
        truth[name] = frozenset(positive - set(spec.get("except") or []))
    for spec in specs:
        if "complement_of" in spec:
            other = spec["complement_of"]
            if other not in truth:
                errors.append(f"predicate {spec['name']!r}: complement_of {other!r} is not a non-complement predicate")
                continue
            truth[spec["name"]] = frozenset(paths) - truth[other]
    return truth


def _ngrams(toks: Tokens) -> Iterable[Tokens]:
    return (toks[i:j] for i in range(len(toks)) for j in range(i + 1, len(toks) + 1))


def _check_names_in_text(
    names: dict[str, str], groups: dict[str, frozenset[str]], specs: list[dict[str, Any]], errors: list[str]
) -> None:
    """No name inside another noun's name or inside a phrasing: the game would read it as naming that noun."""
    by_tokens = {tuple(name.split()): noun for name, noun in names.items()}
    for name, noun in names.items():
        for gram in _ngrams(tuple(name.split())):
            other = by_tokens.get(gram)
            if other is not None and other not in groups[noun]:
                errors.append(
                    f"name {name!r} (of {noun!r}) contains {' '.join(gram)!r}, a name of another noun {other!r}"
                )
    for spec in specs:
        for text in (*spec["phrasings"], spec["question"]):
            hits = [" ".join(g) for g in _ngrams(tokens(text)) if g in by_tokens]
            if hits:
                errors.append(f"predicate {spec['name']!r}: {text!r} contains the noun name(s) {hits}")


def _check_reachable(kb: KnowledgeBase, errors: list[str]) -> None:
    """Every phrasing and the canonical question of a predicate must parse to that predicate."""
    for p in kb.predicates:
        wanted = ParsedMove("predicate", p.name)
        parsed = {text: kb.parse(text) for text in p.phrasings}
        if wanted not in parsed.values():
            errors.append(f"predicate {p.name!r} is unreachable: none of its phrasings parses to it")
        parsed[p.question] = kb.parse(p.question)
        for text, got in parsed.items():
            if got != wanted:
                got_what = got.name or got.kind
                errors.append(f"predicate {p.name!r}: {text!r} parses to {got_what!r} ({got.reason or got.kind})")


def _check_distinguishable(kb: KnowledgeBase, errors: list[str]) -> None:
    """Two nouns with the same answer to every predicate must be declared synonyms."""
    by_signature: dict[frozenset[str], list[str]] = {}
    for noun in kb.nouns:
        signature = frozenset(p.name for p in kb.predicates if noun in kb._truth[p.name])
        by_signature.setdefault(signature, []).append(noun)
    for same in by_signature.values():
        if len(same) > 1 and not all(kb.same_thing(same[0], n) for n in same[1:]):
            errors.append(
                f"nouns {same} have identical answers on every predicate "
                "(add a telling predicate or declare them synonyms)"
            )
