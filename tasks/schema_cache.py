"""Each dataclass's Flyte type built once per process.

flytekit rebuilds a dataclass's literal type, JSON schema included, every time it types an
interface or a value of that type: about 1.2 s for :class:`deltabelief.config.Config`, which
every stage takes, so compiling the workflows or laying out the GPU chain spent most of its
time there. The literal type depends only on the Python type, so it is kept per type; callers
get a copy, so nothing they change leaks into the next.
"""

from __future__ import annotations

import copy
import functools

from flytekit.core.type_engine import DataclassTransformer

_built: dict = {}
_build = DataclassTransformer.get_literal_type


@functools.wraps(_build)
def _get_literal_type_once(self, t):
    try:
        literal_type = _built.get(t)
    except TypeError:  # an unhashable annotation: build it every time, as flytekit does
        return _build(self, t)
    if literal_type is None:
        literal_type = _built[t] = _build(self, t)
    return copy.deepcopy(literal_type)


def install() -> None:
    """Route flytekit's dataclass typing through the per-type store (idempotent)."""
    DataclassTransformer.get_literal_type = _get_literal_type_once
