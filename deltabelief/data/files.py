"""Reading the files a user hands us, with errors that name the file and what is wrong with it.

pandas and pyarrow report a CSV under a ``.parquet`` name as "Parquet magic bytes not found"
and a missing file by its bare path; Python reports a binary word list as a
``UnicodeDecodeError`` that names neither the file nor the line. These helpers turn both into
:class:`DataFileError` (or :class:`FileNotFoundError`) with the path in the message.
"""

from __future__ import annotations

from pathlib import Path


class DataFileError(ValueError):
    """A file that exists but is not what its name or role says; the message names the file and the rule."""


def _require_file(path: Path) -> None:
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")


def read_parquet(path: str | Path, **kwargs):
    """``pd.read_parquet(path, **kwargs)``, refusing a missing or non-parquet file by name."""
    import pandas as pd
    import pyarrow as pa

    path = Path(path)
    _require_file(path)
    try:
        return pd.read_parquet(path, **kwargs)
    except pa.ArrowInvalid as err:
        raise DataFileError(f"{path}: not a parquet file ({err}); write it with pandas' to_parquet, "
                            "or convert a CSV with pd.read_csv(...).to_parquet(...)") from err


def read_utf8_text(path: str | Path) -> str:
    """A text file's content, refusing bytes that are not UTF-8 with the file, line and byte."""
    path = Path(path)
    _require_file(path)
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise DataFileError(f"{path}: line {line} is not UTF-8 text (byte 0x{data[err.start]:02x} at offset "
                            f"{err.start}); a word list must be a UTF-8 text file, one target per line") from err
