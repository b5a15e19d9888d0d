"""Judges: who answers the questioner (importing registers the built-in ones)."""

from deltabelief.judges.base import get_judge, register_judge  # noqa: F401
from deltabelief.judges import kb, local, openai_compat, scripted  # noqa: F401,E402
