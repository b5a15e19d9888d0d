"""Games: the interaction protocol and the built-in tasks (importing registers them)."""

from deltabelief.games.base import (  # noqa: F401
    Game, GameRecord, GameState, StepResult, Turn, build_game, get_game, play_moves, register_game,
)
from deltabelief.games import twenty_questions  # noqa: F401,E402
from deltabelief.games import customer_service, guess_my_city, murder_mystery, personalization  # noqa: F401,E402
