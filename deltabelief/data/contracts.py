"""Data contracts: declarative great-expectations suites, one per dataset kind.

``data_contracts/<kind>.json`` holds a suite: ``row_id_columns`` (how offending rows are
named), ``derived_columns`` (helper columns computed before validation, for rules great
expectations cannot state on nested or cross-row data: each names a function in
:data:`DERIVED` and its input columns) and ``expectations`` (each a ``rule`` name, a great
expectations 1.x ``type`` and its ``kwargs``; the string ``"$STATUSES"`` stands for
:data:`deltabelief.games.base.STATUSES`). The helper columns (and ``_row``, the row number used
to name offending rows) are added to ``expect_table_columns_to_match_set``'s column set, so
the schema rule sees only the data's own columns.

:func:`validate_dataset` reads a dataset, runs the suite in an ephemeral context, saves the
report next to the data as ``<name>.validation.json`` and returns the dataset, or raises
:class:`ContractError` whose ``.report`` is that report and whose message lists every
failed expectation with up to 5 offending rows.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from deltabelief.config import REPO_ROOT
from deltabelief.data.files import DataFileError, read_parquet
from deltabelief.data.loaders import to_python
from deltabelief.data.targets import normalize_target
from deltabelief.types import SOLVED_STATUSES, STATUSES

logger = logging.getLogger(__name__)

CONTRACT_DIR = REPO_ROOT / "data_contracts"
KINDS = ("targets", "trajectories", "eval")
MAX_EXAMPLES = 5
ROW_COLUMN = "_row"
PLACEHOLDERS = {"$STATUSES": list(STATUSES)}


class ContractError(ValueError):
    """A dataset that breaks its contract. ``.report`` is the JSON-able validation report."""

    def __init__(self, report: dict[str, Any]):
        self.report = report
        super().__init__(format_report(report))


# ---------------------------------------------------------------- derived columns


def _column(df: pd.DataFrame, name: str, default: Any = None) -> pd.Series:
    """``df[name]``, or a column of ``default`` when it is missing (the schema rule reports that)."""
    return df[name] if name in df.columns else pd.Series([default] * len(df), index=df.index, dtype=object)


def _alternating(messages: Any) -> bool:
    """Optional leading system message, then user, assistant, user, ... ending with user."""
    if not isinstance(messages, list) or not messages:
        return False
    if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
               for m in messages):
        return False
    roles = [m["role"] for m in messages]
    if roles[0] == "system":
        roles = roles[1:]
    expected = ["user" if i % 2 == 0 else "assistant" for i in range(len(roles))]
    return bool(roles) and roles == expected and roles[-1] == "user"


def roles_alternate(df: pd.DataFrame, messages: str) -> pd.Series:
    return _column(df, messages).map(_alternating).astype(bool)


def _moves_in_messages(row: dict) -> bool:
    messages, moves, answers = row["messages"], row["moves"], row["answers"]
    if not (_alternating(messages) and isinstance(moves, list) and isinstance(answers, list)):
        return False
    turns = messages[len(messages) - 2 * len(moves):] if moves else []
    return (
        len(messages) >= 2 * len(moves) + 1
        and [m["content"] for m in turns[0::2]] == moves
        and [m["content"] for m in turns[1::2]] == answers
        and sum(m["role"] == "assistant" for m in messages) == len(moves)
    )


def messages_match_turns(df: pd.DataFrame, messages: str, moves: str, answers: str) -> pd.Series:
    """The last 2N messages are exactly the N (move, answer) pairs, and no other assistant message."""
    frame = pd.DataFrame({"messages": _column(df, messages), "moves": _column(df, moves),
                          "answers": _column(df, answers)})
    return pd.Series([_moves_in_messages(r) for r in frame.to_dict(orient="records")], index=df.index, dtype=bool)


def lists_have_num_turns(df: pd.DataFrame, lists: list[str], num_turns: str) -> pd.Series:
    """Every per-turn list has exactly ``num_turns`` entries."""
    turns = _column(df, num_turns)
    ok = pd.Series(True, index=df.index)
    for name in lists:
        ok &= pd.Series([isinstance(v, list) and isinstance(n, int) and len(v) == n
                         for v, n in zip(_column(df, name), turns)], index=df.index, dtype=bool)
    return ok.astype(bool)


def splits_per_target(df: pd.DataFrame, task: str, target: str, split: str) -> pd.Series:
    """How many distinct splits hold the same (task, target), case and spacing ignored."""
    key = pd.Series(
        [f"{a}\x00{normalize_target(b) if isinstance(b, str) else b}" for a, b in zip(_column(df, task), _column(df, target))],
        index=df.index,
    )
    splits = _column(df, split).astype(str)
    return key.map(splits.groupby(key).nunique()).fillna(0).astype(int)


def statuses_known(df: pd.DataFrame, statuses: str) -> pd.Series:
    return _column(df, statuses).map(lambda v: isinstance(v, list) and all(s in STATUSES for s in v)).astype(bool)


def solved_matches_last_status(df: pd.DataFrame, solved: str, statuses: str | None = None,
                               last_status: str | None = None) -> pd.Series:
    """``solved`` is true exactly when the last status is a solving one ('finished')."""
    if statuses is not None:
        last = _column(df, statuses).map(lambda v: v[-1] if isinstance(v, list) and v else None)
    else:
        last = _column(df, last_status or "last_status")
    return pd.Series(
        [isinstance(s, bool) and s == (l in SOLVED_STATUSES) for s, l in zip(_column(df, solved), last)],
        index=df.index, dtype=bool,
    )


def _posterior_ok(values: Any, num_turns: Any) -> bool:
    if not isinstance(values, list) or not isinstance(num_turns, int):
        return False
    if not values:
        return True  # tasks without an exact posterior
    if len(values) != num_turns + 1 or not all(isinstance(v, float) and math.isfinite(v) and v <= 1e-9 for v in values):
        return False
    return all(b >= a - 1e-9 for a, b in zip(values, values[1:]))  # C_t only shrinks


def log_posterior_valid(df: pd.DataFrame, log_posterior: str, num_turns: str) -> pd.Series:
    """Empty, or num_turns+1 finite values <= 0 that never decrease (the consistent set only shrinks)."""
    return pd.Series([_posterior_ok(v, n) for v, n in zip(_column(df, log_posterior), _column(df, num_turns))],
                     index=df.index, dtype=bool)


def counts_within_turns(df: pd.DataFrame, counts: list[str], num_turns: str) -> pd.Series:
    """The per-kind turn counts (invalid, repeated, ...) add up to at most num_turns."""
    total = sum(pd.to_numeric(_column(df, c), errors="coerce") for c in counts)
    return (total <= pd.to_numeric(_column(df, num_turns), errors="coerce")).fillna(False).astype(bool)


DERIVED: dict[str, Callable[..., pd.Series]] = {
    "roles_alternate": roles_alternate,
    "messages_match_turns": messages_match_turns,
    "lists_have_num_turns": lists_have_num_turns,
    "splits_per_target": splits_per_target,
    "statuses_known": statuses_known,
    "solved_matches_last_status": solved_matches_last_status,
    "log_posterior_valid": log_posterior_valid,
    "counts_within_turns": counts_within_turns,
}


# ---------------------------------------------------------------- suites


def suite_path(kind: str) -> Path:
    if kind not in KINDS:
        raise KeyError(f"unknown dataset kind {kind!r}; kinds: {list(KINDS)}")
    return CONTRACT_DIR / f"{kind}.json"


def _resolve(value: Any) -> Any:
    if isinstance(value, str) and value in PLACEHOLDERS:
        return PLACEHOLDERS[value]
    if isinstance(value, dict):
        return {k: _resolve(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v) for v in value]
    return value


def load_suite(kind: str) -> dict[str, Any]:
    """The suite JSON for ``kind`` with placeholders resolved."""
    suite = json.loads(suite_path(kind).read_text())
    for key in ("row_id_columns", "derived_columns", "expectations"):
        if key not in suite:
            raise ValueError(f"{suite_path(kind)}: missing key {key!r}")
    for spec in suite["derived_columns"]:
        if spec["function"] not in DERIVED:
            raise ValueError(f"{suite_path(kind)}: unknown derived function {spec['function']!r}; known: {sorted(DERIVED)}")
    rules = [e["rule"] for e in suite["expectations"]]
    if len(set(rules)) != len(rules):
        raise ValueError(f"{suite_path(kind)}: rule names must be unique")
    return _resolve(suite)


def normalize_frame(df: pd.DataFrame) -> pd.DataFrame:
    """Parquet's numpy arrays -> lists, string dtypes -> object, so type rules see Python values."""
    out = df.reset_index(drop=True).copy()
    for column in out.columns:
        if out[column].dtype == object:
            out[column] = out[column].map(to_python)
        elif pd.api.types.is_string_dtype(out[column].dtype):
            out[column] = out[column].astype(object).where(out[column].notna(), None)
    return out


def with_derived(df: pd.DataFrame, suite: dict[str, Any]) -> pd.DataFrame:
    """``df`` plus the row number and every derived helper column of the suite."""
    out = df.copy()
    out[ROW_COLUMN] = range(len(out))
    for spec in suite["derived_columns"]:
        out[spec["column"]] = DERIVED[spec["function"]](df, **spec.get("args", {}))
    return out


# ---------------------------------------------------------------- running


def _gx_run(frame: pd.DataFrame, suite: dict[str, Any], index_columns: list[str]) -> dict[str, Any]:
    """Run the suite's expectations on ``frame`` in an ephemeral context; the GX result as a dict."""
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig
    from great_expectations.expectations.expectation_configuration import ExpectationConfiguration

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    name = f"{suite['kind']}-{uuid.uuid4().hex[:8]}"
    batch = context.data_sources.add_pandas(name).add_dataframe_asset(name=name)
    batch_definition = batch.add_batch_definition_whole_dataframe(name)
    gx_suite = gx.ExpectationSuite(name=name)
    helpers = [ROW_COLUMN] + [d["column"] for d in suite["derived_columns"]]
    for spec in suite["expectations"]:
        kwargs = dict(spec["kwargs"])
        if spec["type"] == "expect_table_columns_to_match_set":
            kwargs["column_set"] = list(kwargs["column_set"]) + helpers  # helpers are ours, not the data's
        config = ExpectationConfiguration(type=spec["type"], kwargs=kwargs, meta={"rule": spec["rule"]})
        gx_suite.add_expectation(config.to_domain_obj())
    gx_suite = context.suites.add(gx_suite)
    definition = context.validation_definitions.add(
        gx.ValidationDefinition(data=batch_definition, suite=gx_suite, name=name)
    )
    result = definition.run(
        batch_parameters={"dataframe": frame},
        result_format={"result_format": "COMPLETE", "unexpected_index_column_names": index_columns},
    )
    return result.to_json_dict()


def _columns_of(spec: dict[str, Any]) -> list[str]:
    kwargs = spec["kwargs"]
    names = [kwargs[k] for k in ("column", "column_A", "column_B") if k in kwargs]
    return names + list(kwargs.get("column_list", []))


def _entry(spec: dict[str, Any], gx_result: dict[str, Any] | None, columns: list[str]) -> dict[str, Any]:
    """One expectation's outcome: rule, success, count and up to 5 offending rows."""
    entry: dict[str, Any] = {"rule": spec["rule"], "expectation": spec["type"], "kwargs": spec["kwargs"]}
    missing = [c for c in _columns_of(spec) if c not in columns]
    if missing:
        return {**entry, "success": False, "error": f"column(s) {missing} missing from the data"}
    if gx_result is None:
        return {**entry, "success": False, "error": "great expectations returned no result for this rule"}
    result = gx_result.get("result") or {}
    exception = gx_result.get("exception_info") or {}
    if "raised_exception" not in exception:  # keyed per metric when a metric failed
        exception = next(iter(exception.values()), {}) if exception else {}
    entry["success"] = bool(gx_result["success"])
    if exception.get("raised_exception") or (exception.get("exception_message") and not entry["success"]):
        entry["error"] = exception.get("exception_message") or "exception while computing the rule"
    if "unexpected_count" in result:
        entry["unexpected_count"] = result["unexpected_count"]
        entry["examples"] = list(result.get("unexpected_index_list") or [])[:MAX_EXAMPLES]
    if "observed_value" in result:
        entry["observed"] = result["observed_value"]
    if result.get("details"):
        entry["details"] = result["details"]
    return entry


def _show_helper_inputs(results: list[dict[str, Any]], suite: dict[str, Any], frame: pd.DataFrame) -> None:
    """Offending rows of a helper-column rule also show the helper's input columns (e.g. statuses)."""
    inputs: dict[str, list[str]] = {}
    for spec in suite["derived_columns"]:
        names: list[str] = []
        for value in spec.get("args", {}).values():
            names += [v for v in (value if isinstance(value, list) else [value]) if v in frame.columns]
        inputs[spec["column"]] = names
    for entry in results:
        for example in entry.get("examples", []):
            row = example.get(ROW_COLUMN)
            for name in inputs.get(entry["kwargs"].get("column"), []):
                if isinstance(row, int) and name not in example:
                    example[name] = to_python(frame.at[row, name])


def check_frame(kind: str, df: pd.DataFrame, source: str = "<dataframe>") -> dict[str, Any]:
    """Validate ``df`` against the ``kind`` contract; returns the report (never raises on bad data)."""
    import great_expectations as gx

    suite = {**load_suite(kind), "kind": kind}
    frame = with_derived(normalize_frame(df), suite)
    index_columns = [ROW_COLUMN] + [c for c in suite["row_id_columns"] if c in df.columns]
    gx_result = _gx_run(frame, suite, index_columns)
    by_rule = {r["expectation_config"]["meta"].get("rule"): r for r in gx_result["results"]}
    columns = list(frame.columns)
    results = [_entry(spec, by_rule.get(spec["rule"]), columns) for spec in suite["expectations"]]
    _show_helper_inputs(results, suite, frame)
    failed = [r["rule"] for r in results if not r["success"]]
    return {
        "kind": kind,
        "path": source,
        "suite": str(suite_path(kind)),
        "success": not failed,
        "num_rows": len(df),
        "num_expectations": len(results),
        "num_failed": len(failed),
        "failed_rules": failed,
        "great_expectations_version": gx.__version__,
        "results": results,
    }


def report_path_for(path: str | Path) -> Path:
    """``DIR/targets.parquet`` -> ``DIR/targets.validation.json``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.validation.json")


def read_dataset(path: str | Path) -> pd.DataFrame:
    """A parquet, JSON-lines or CSV file as a DataFrame."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.suffix == ".parquet":
        return read_parquet(path)
    if path.suffix in (".jsonl", ".json"):
        return pd.read_json(path, lines=path.suffix == ".jsonl")
    if path.suffix == ".csv":
        return pd.read_csv(path)
    raise DataFileError(f"{path}: unsupported dataset format {path.suffix!r}; use .parquet, .jsonl, .json or .csv")


def validate_frame(kind: str, df: pd.DataFrame, source: str = "<dataframe>") -> pd.DataFrame:
    """The normalized dataset if it holds its contract, else :class:`ContractError`."""
    report = check_frame(kind, df, source)
    if not report["success"]:
        raise ContractError(report)
    return normalize_frame(df)


def validate_dataset(kind: str, path: str | Path, *, save_report: bool = True) -> pd.DataFrame:
    """Read ``path``, validate it as ``kind``, save ``<name>.validation.json`` beside it.

    Returns the dataset (lists as Python lists) or raises :class:`ContractError`.
    """
    df = read_dataset(path)
    report = check_frame(kind, df, str(path))
    if save_report:
        out = report_path_for(path)
        out.write_text(json.dumps(report, indent=2, default=str))
        report["report_path"] = str(out)
    if not report["success"]:
        logger.error("%s contract failed for %s: %s", kind, path, report["failed_rules"])
        raise ContractError(report)
    logger.info("%s contract holds for %s (%d rows)", kind, path, len(df))
    return normalize_frame(df)


# ---------------------------------------------------------------- reporting


def _short(value: Any, limit: int = 100) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _describe(entry: dict[str, Any]) -> list[str]:
    args = ", ".join(f"{k}={_short(v, 60)}" for k, v in entry["kwargs"].items())
    head = f"  - [{entry['rule']}] {entry['expectation']}({args})"
    if "unexpected_count" in entry:
        head += f": {entry['unexpected_count']} offending row(s)"
    lines = [head]
    if entry.get("error"):
        lines.append(f"      error: {entry['error']}")
    for example in entry.get("examples", []):
        fields = [f"row {example.get(ROW_COLUMN)}"] + [
            f"{k}={_short(v)}" for k, v in example.items() if k != ROW_COLUMN
        ]
        lines.append("      " + " ".join(fields))
    if "unexpected_count" not in entry and "observed" in entry:
        lines.append(f"      observed: {_short(entry['observed'], 200)}")
    if entry.get("details"):
        lines.append(f"      details: {_short(entry['details'], 200)}")
    return lines


def format_report(report: dict[str, Any]) -> str:
    """One line when the data holds; otherwise every failed rule with up to 5 offending rows."""
    where = f"{report['path']} ({report['num_rows']} rows)"
    if report["success"]:
        return f"{report['kind']} contract holds: {report['num_expectations']} expectations passed on {where}"
    lines = [
        f"{report['kind']} contract failed: {report['num_failed']} of {report['num_expectations']} "
        f"expectations broken on {where}"
    ]
    for entry in report["results"]:
        if not entry["success"]:
            lines.extend(_describe(entry))
    if report.get("report_path"):
        lines.append(f"full report: {report['report_path']}")
    return "\n".join(lines)
