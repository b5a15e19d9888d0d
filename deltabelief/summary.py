"""Say where a pipeline run's results are: the MLflow store, its runs and the registry aliases.

``python -m deltabelief.summary`` (run by ``make demo``) prints it for the newest pipeline run.
"""

from __future__ import annotations

import sys

from deltabelief.config import TrackingConfig
from deltabelief.tracking import CHALLENGER, CHAMPION, _client, resolve_tracking_uri


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
            metrics = ", ".join(f"{k}={v:.3g}" for k, v in sorted(child.data.metrics.items())[:4])
            lines.append(f"    {child.info.run_name:24s} {child.info.status:9s} {metrics}")
    lines.append(f"registered model {config.registered_model_name!r}:")
    try:
        versions = client.search_model_versions(f"name='{config.registered_model_name}'")
    except Exception as err:  # a store without a registry yet
        return "\n".join(lines + [f"  (registry not readable: {err})"])
    for version in sorted(versions, key=lambda v: int(v.version)):
        aliases = ",".join(a for a in (CHAMPION, CHALLENGER) if a in (version.aliases or []))
        reason = version.tags.get("promotion.reason", "")
        lines.append(f"  v{version.version:<3} {aliases or '-':20s} {reason}")
    if not versions:
        lines.append("  no versions yet")
    return "\n".join(lines)


def main() -> int:
    print(describe())
    return 0


if __name__ == "__main__":
    sys.exit(main())
