"""Open a sqlite tracking store safely when several processes may open it first at the same time.

MLflow creates the tables of a new sqlite database, and runs its schema migrations, the first
time a process opens it, without a lock: two runs that start together on a new ``mlflow.db``
both migrate, and one fails ("table ... already exists", "duplicate column"). :func:`ready_store`
opens the store once per process under a file lock beside the database, so one process
creates the schema and the others find it made. An ``mlflow server`` (http URIs) migrates once
when it starts, so other stores need nothing here; it is also the way to share a store between
machines (docs/pipeline.md, "Sharing one tracking store").
"""

from __future__ import annotations

import fcntl
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

_READY: set[str] = set()
_READY_GUARD = threading.Lock()


def sqlite_file(uri: str) -> Path | None:
    """The database file of a ``sqlite:`` URI; None for other URIs and in-memory databases."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    return Path(database) if database and database != ":memory:" else None


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock between processes on this machine, released when the body ends (or the process dies)."""
    with open(path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def ready_store(uri: str) -> None:
    """Make sure the store at ``uri`` has its schema before this process uses it (once per process)."""
    database = sqlite_file(uri)
    if database is None:
        return
    with _READY_GUARD:
        if uri in _READY:
            return
        from mlflow.tracking import MlflowClient

        database.parent.mkdir(parents=True, exist_ok=True)
        with _file_lock(database.with_name(database.name + ".init-lock")):
            # MLflow caches a store per URI, so these first calls are where the schema is created.
            client = MlflowClient(tracking_uri=uri, registry_uri=uri)
            client.search_experiments(max_results=1)
            client.search_registered_models(max_results=1)
        _READY.add(uri)
