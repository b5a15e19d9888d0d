"""Build the judge and a target a config or a command line describes (shared by the CLI, the trainer and Flyte);
the game comes from :func:`deltabelief.games.base.build_game`."""

from __future__ import annotations

from deltabelief.config import GameConfig, JudgeConfig
from deltabelief.judges.base import get_judge
from deltabelief.types import Judge, Target


def build_judge(judge: JudgeConfig, game: GameConfig) -> Judge:
    if judge.backend == "kb":
        return get_judge("kb", config=judge, nouns=game.kb_nouns or None)
    return get_judge(judge.backend, config=judge)


def build_target(task: str, text: str) -> Target:
    """The target a command line names: a Guess My City target may be just a city of the city
    knowledge base ('Paris' becomes 'Paris, France'); anything else is taken as written."""
    if task == "guess_my_city" and "," not in text:
        from deltabelief.data.cities import city_targets
        from deltabelief.data.knowledge_base import normalize_name

        for target in city_targets():
            names = [target.answer.split(",")[0], *target.extra["aliases"]]
            if normalize_name(text) in {normalize_name(n) for n in names}:
                return target
        raise SystemExit(f"{text!r} is not a city of the city knowledge base; write it as 'City, Country'")
    return Target(id=text, task=task, answer=text)
