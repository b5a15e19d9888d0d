"""Judges: who answers the questioner (importing registers them)."""

from deltabelief.judges.base import Judge, JudgeReply, JudgeRequest, get_judge, register_judge  # noqa: F401
from deltabelief.judges import kb, local, openai_compat, scripted  # noqa: F401,E402
