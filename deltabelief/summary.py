"""Say where a pipeline run's results are: the MLflow store, its runs, the registry and its lineage.

``python -m deltabelief.summary`` (run by ``make demo``) prints it for the newest pipeline run.
"""

from __future__ import annotations

import sys

from deltabelief.config import TrackingConfig
from deltabelief.tracking import (
    CHALLENGER,
    CHAMPION,
    DATA_VERSION,
    KICKOFF_TIME,
    NO_PARENT,
    PARENT_VERSION,
    _client,
    resolve_tracking_uri,
)


# What a stage's line shows, when the run has it (the last value of a per-step metric).
HEADLINE = (
    "loss/sft", "calibration/chosen/spearman", "calibration/chosen/ece", "rollout/success_rate", "reward/rollout_sum_mean",
    "belief/delta_mean", "twenty_questions/success_mean", "twenty_questions/belief_gain_mean",
)


def headline(metrics: dict[str, float]) -> str:
    shown = [k for k in HEADLINE if k in metrics] or sorted(metrics)[:3]
    return ", ".join(f"{k}={metrics[k]:.3g}" for k in shown)


def describe(config: TrackingConfig | None = None) -> str:
    config = config or TrackingConfig()
    uri = resolve_tracking_uri(config)
    client = _client(uri)
    lines = [f"MLflow store: {uri}", f"  browse it:  mlflow ui --backend-store-uri {uri}   (then open port 5000)"]
    experiment = client.get_experiment_by_name(config.experiment)
    if experiment is None:
        return "\n".join(lines + [f"  no experiment named {config.experiment!r} yet"])
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"], max_results=200)
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    lines.append(f"experiment {config.experiment!r}: {len(parents)} pipeline run(s)")
    if parents:
        newest = parents[0]
        lines.append(f"  newest: {newest.info.run_name} ({newest.info.run_id}) {newest.info.status}")
        for child in sorted(
            (r for r in runs if r.data.tags.get("mlflow.parentRunId") == newest.info.run_id),
            key=lambda r: r.info.start_time,
        ):
            lines.append(f"    {child.info.run_name:24s} {child.info.status:9s} {headline(child.data.metrics)}")
    lines.append(f"registered model {config.registered_model_name!r}:")
    try:
        versions = client.search_model_versions(f"name='{config.registered_model_name}'")
    except Exception as err:  # a store without a registry yet
        return "\n".join(lines + [f"  (registry not readable: {err})"])
    # Aliases live on the registered model: search_model_versions leaves version.aliases empty.
    alias_of = client.get_registered_model(config.registered_model_name).aliases if versions else {}
    for version in sorted(versions, key=lambda v: int(v.version)):
        aliases = ",".join(a for a in (CHAMPION, CHALLENGER) if str(alias_of.get(a)) == str(version.version))
        tags = version.tags
        parent = tags.get(PARENT_VERSION, NO_PARENT)
        origin = f"from v{parent}" if parent != NO_PARENT else "from warm start"
        kickoff = f" kickoff {tags[KICKOFF_TIME]}" if KICKOFF_TIME in tags else ""
        lines.append(f"  v{version.version:<3} {aliases or '-':20s} {origin}, data {tags.get(DATA_VERSION, '?')}{kickoff}")
        if "promotion.reason" in tags:
            lines.append(f"       gate: {tags['promotion.reason']}")
    if not versions:
        lines.append("  no versions yet")
    for alias in (CHAMPION, CHALLENGER):
        if alias in alias_of:
            chain = lineage(versions, str(alias_of[alias]))
            lines.append(f"  {alias} lineage: {' -> '.join(f'v{v}' for v in chain)}")
    return "\n".join(lines)


def lineage(versions, newest: str) -> list[str]:
    """Version numbers from the first ancestor of ``newest`` down to it, following parent tags."""
    parent_of = {str(v.version): v.tags.get(PARENT_VERSION, NO_PARENT) for v in versions}
    chain = [newest]
    while parent_of.get(chain[-1], NO_PARENT) not in (NO_PARENT, *chain):
        chain.append(parent_of[chain[-1]])
    return chain[::-1]


def main(argv: list[str] | None = None) -> int:
    import argparse

    from deltabelief.user_errors import run_command

    parser = argparse.ArgumentParser(prog="python -m deltabelief.summary", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show the traceback of an error")
    args = parser.parse_args(argv)
    return run_command("deltabelief.summary", lambda: print(describe()) or 0, verbose=args.verbose)


if __name__ == "__main__":
    sys.exit(main())
