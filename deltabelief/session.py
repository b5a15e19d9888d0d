"""Build the game and the judge a config describes (shared by the CLI, the trainer and Flyte)."""

from __future__ import annotations

from deltabelief.config import Config, GameConfig, JudgeConfig
from deltabelief.games.base import Game, get_game
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
