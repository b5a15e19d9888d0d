"""Two processes writing to one tracking store at the same moment: both succeed.

Real processes (spawned, as two pipelines on one machine would be) wait at a barrier and then
make the same first write: register the first version of a model, or start a run on a sqlite
store that does not exist yet. Several trials, because a race does not lose every time.
"""

from __future__ import annotations

import multiprocessing

from deltabelief.config import TrackingConfig
from deltabelief.tracking import CHALLENGER, Tracker, _client, register_model

WORKERS = 2


def _register(uri: str, job: str) -> str:
    name, model_uri = job.split("|")
    return register_model(uri, model_uri, name)


def _start_run(uri: str, job: str) -> str:
    tracker = Tracker.start(TrackingConfig(tracking_uri=uri, experiment="shared"), job)
    tracker.log({"x": 1.0})
    tracker.close()
    return tracker.run_id


TASKS = {"register": _register, "start_run": _start_run}


def _worker(task: str, trials: list[tuple[str, str]], barrier, results) -> None:
    """Run ``task`` once per trial, starting each together with the other worker."""
    for trial, (uri, job) in enumerate(trials):
        barrier.wait(timeout=120)
        try:
            results.put((trial, "ok", TASKS[task](uri, job)))
        except Exception as err:  # reported to the test, which fails naming it
            results.put((trial, "error", f"{type(err).__name__}: {err}"))


def _race(task: str, trials: list[tuple[str, str]]) -> dict[int, list[tuple[str, str]]]:
    """Both workers run every trial at the same moment; the outcomes of each trial."""
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(WORKERS), context.Queue()
    workers = [context.Process(target=_worker, args=(task, trials, barrier, results)) for _ in range(WORKERS)]
    for worker in workers:
        worker.start()
    outcomes: dict[int, list[tuple[str, str]]] = {t: [] for t in range(len(trials))}
    for _ in range(WORKERS * len(trials)):
        trial, status, detail = results.get(timeout=300)
        outcomes[trial].append((status, detail))
    for worker in workers:
        worker.join(timeout=300)  # a slow disk makes a new sqlite store take minutes
        assert worker.exitcode == 0
    return outcomes


def _errors(outcomes) -> list[str]:
    return [f"trial {t}: {detail}" for t, found in outcomes.items() for status, detail in found if status == "error"]


def test_two_processes_registering_the_first_version_both_get_a_version(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = Tracker.start(TrackingConfig(tracking_uri=uri, experiment="race"), "candidate")
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "weights.txt").write_text("w")
    tracker.log_artifact(tmp_path / "model", "model")
    tracker.close()
    names = [f"policy-{trial}" for trial in range(4)]
    outcomes = _race("register", [(uri, f"{name}|runs:/{tracker.run_id}/model") for name in names])

    assert not _errors(outcomes), _errors(outcomes)
    client = _client(uri)
    for trial, name in enumerate(names):
        versions = sorted(v.version for v in client.search_model_versions(f"name='{name}'"))
        assert [str(v) for v in versions] == ["1", "2"]
        assert sorted(detail for _, detail in outcomes[trial]) == ["1", "2"]
        assert str(client.get_model_version_by_alias(name, CHALLENGER).version) in {"1", "2"}


def test_two_processes_starting_runs_on_a_fresh_sqlite_store_both_succeed(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    uris = [f"sqlite:///{tmp_path / f'fresh-{trial}.db'}" for trial in range(3)]
    outcomes = _race("start_run", [(uri, "run") for uri in uris])

    assert not _errors(outcomes), _errors(outcomes)
    for uri in uris:
        client = _client(uri)
        (experiment,) = [e for e in client.search_experiments() if e.name == "shared"]
        assert len(client.search_runs([experiment.experiment_id])) == WORKERS
