"""Build the game, the judge and a target a config describes (shared by the CLI, the trainer and Flyte)."""

from __future__ import annotations

from deltabelief.config import Config, GameConfig, JudgeConfig
from deltabelief.games.base import Game, Target, get_game
from deltabelief.judges.base import Judge, get_judge


def build_game(config: Config, max_turns: int | None = None) -> Game:
    game = config.game
    if game.task == "twenty_questions":
        return get_game(
            game.task,
            max_turns=max_turns or game.max_turns,
            min_question_chars=game.min_question_chars,
            max_question_chars=game.max_question_chars,
        )
    return get_game(game.task, max_turns=max_turns or game.max_turns)


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
            names = [target.target.split(",")[0], *target.extra["aliases"]]
            if normalize_name(text) in {normalize_name(n) for n in names}:
                return target
        raise SystemExit(f"{text!r} is not a city of the city knowledge base; write it as 'City, Country'")
    return Target(id=text, task=task, target=text)
