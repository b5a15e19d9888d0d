"""Reading a request body's fields, shared by the server's routes: a bad field is a
:class:`RequestError` (an HTTP status and a message naming the field)."""

from __future__ import annotations

from http import HTTPStatus
from typing import Any


class RequestError(ValueError):
    """A client error, answered with ``status`` and this message."""

    def __init__(self, message: str, status: int = HTTPStatus.BAD_REQUEST):
        super().__init__(message)
        self.status = int(status)


def number(body: dict, key: str, kind: type, default: Any) -> Any:
    """``body[key]`` as ``kind`` (int or float; an int is a float too), ``default`` when absent or null."""
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and not isinstance(value, int)):
        raise RequestError(f"field '{key}' must be {'an integer' if kind is int else 'a number'}, got {value!r:.40}")
    return kind(value)
