"""Serving local models over HTTP (an OpenAI-compatible chat-completions server)."""

from deltabelief.serving.openai_server import running_server, serve  # noqa: F401
