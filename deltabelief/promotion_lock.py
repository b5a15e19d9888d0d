"""A lock around the read-decide-write of the 'champion' alias, held in the MLflow registry itself.

Two pipelines that reach promotion together must not both read the same champion, both decide
to promote and then overwrite each other's alias. The only thing every pipeline pod shares is
the tracking store, so the lock lives there: it is a registered model named
``<model>-promotion-lock``. Creating a registered model is atomic in every MLflow store (a
unique key in the database behind a sqlite file or a tracking server), so exactly one
``create_registered_model`` succeeds; the others get RESOURCE_ALREADY_EXISTS and wait. A file
lock would only serialise pipelines on one machine, and aliases and tags have no
compare-and-set.

A pipeline killed while holding the lock leaves it behind; the next promotion waits
``timeout`` seconds and then fails naming the lock and its holder (delete that registered
model to clear it).
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from datetime import datetime, timezone
from typing import Iterator

POLL_SECONDS = 0.2


def lock_name(model_name: str) -> str:
    return f"{model_name}-promotion-lock"


@contextmanager
def promotion_lock(client, model_name: str, holder: str, timeout: float) -> Iterator[None]:
    """Hold the promotion lock of ``model_name`` for the body; ``holder`` says who holds it."""
    from mlflow.exceptions import MlflowException

    if timeout <= 0:
        raise ValueError(f"promotion lock timeout must be positive seconds, got {timeout}")
    name = lock_name(model_name)
    deadline = time.monotonic() + timeout
    while True:
        since = datetime.now(timezone.utc).isoformat(timespec="seconds")
        try:
            client.create_registered_model(name, description=f"held by {holder} since {since}")
            break
        except MlflowException as err:
            if err.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
        if time.monotonic() > deadline:
            try:
                held_by = client.get_registered_model(name).description
            except MlflowException as err:
                if err.error_code != "RESOURCE_DOES_NOT_EXIST":
                    raise
                continue  # released since our attempt: try once more
            raise TimeoutError(
                f"promotion lock {name!r} still {held_by} after {timeout:.0f}s; if that pipeline died, "
                f"delete the registered model {name!r} and promote again"
            )
        time.sleep(POLL_SECONDS)
    try:
        yield
    finally:
        client.delete_registered_model(name)
