"""Where a user's table comes from, and reading it into a typed frame, whatever its format.

- ``.csv`` / ``.txt``: comma-separated, ``.tsv`` / ``.tab``: tab-separated, each with a
  header line (`metarec.data.tables`);
- ``.parquet`` / ``.pq``: one Parquet file;
- a folder of ``*.parquet`` parts (at any depth), read in the order of their paths, its rows
  numbered across the parts (errors name the part file and the row in it);
- a folder written by `datasets`' ``Dataset.save_to_disk``: ``state.json`` lists its
  ``data-*.arrow`` files, Arrow IPC streams that pyarrow reads (the `datasets` library is
  not needed). A ``DatasetDict``'s folder (``dataset_dict.json``, one folder per split)
  stands for its only split; when it has several, name the split's folder
  (``my_dataset/train``).

The columns' values are then converted by kind (`metarec.data.columns`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from metarec.data.columns import Column, missing_columns, repeated_names, typed_frame
from metarec.data.raw import Origin
from metarec.data.tables import read_csv_with_header
from metarec.errors import DataError
from metarec.hashing import sha256_of

DELIMITERS = {".csv": ",", ".txt": ",", ".tsv": "\t", ".tab": "\t"}
PARQUET_SUFFIXES = (".parquet", ".pq")


@dataclass(frozen=True)
class Source:
    """A table's files: their ``format`` (``text``, ``parquet`` or ``arrow``), the ``parts``
    holding its rows, in order, and the ``metadata`` files that also define it."""

    path: Path
    format: str
    parts: tuple[Path, ...]
    metadata: tuple[Path, ...] = ()
    name: str = "table"  # what an error about the whole table calls it

    @property
    def files(self) -> list[Path]:
        """Every file whose content makes the table (e.g. for a cache key)."""
        return [*self.parts, *self.metadata]


def _json(path: Path) -> dict:
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DataError(path, f"not a readable JSON file ({err})") from None
    if not isinstance(content, dict):
        raise DataError(path, "expected a JSON object")
    return content


def _saved_dataset(folder: Path) -> Source:
    """A folder written by ``Dataset.save_to_disk``: the arrow files its state.json lists."""
    state_path = folder / "state.json"
    state = _json(state_path)
    files = state.get("_data_files")
    if not isinstance(files, list) or not all(
        isinstance(f, dict) and "filename" in f for f in files
    ):
        raise DataError(state_path, "expected _data_files: a list of {filename: ...}")
    parts = tuple(folder / entry["filename"] for entry in files)
    for part in parts:
        if not part.is_file():
            raise DataError(part, "missing: state.json lists it as a data file")
    split = state.get("_split") or folder.name
    return Source(folder, "arrow", parts, (state_path,), name=f"split {split!r}")


def _dataset_dict_split(folder: Path) -> Source:
    """A ``DatasetDict`` folder: its only split."""
    splits = _json(folder / "dataset_dict.json").get("splits")
    if not isinstance(splits, list) or not splits:
        raise DataError(folder / "dataset_dict.json", "expected splits: a list of split names")
    if len(splits) > 1:
        raise DataError(
            folder,
            f"a DatasetDict with splits {', '.join(map(str, splits))}: give the folder of "
            f"the one to read, e.g. {folder / str(splits[0])}",
        )
    return _saved_dataset(folder / str(splits[0]))


def find_source(path: Path) -> Source:
    """What kind of table ``path`` is and which files hold it (see the module doc)."""
    if not path.exists():
        raise DataError(path, "file does not exist")
    if path.is_file():
        suffix = path.suffix.lower()
        if suffix in DELIMITERS:
            return Source(path, "text", (path,))
        if suffix in PARQUET_SUFFIXES:
            return Source(path, "parquet", (path,))
        raise DataError(
            path,
            f"unsupported file type {suffix!r}: expected .csv, .tsv, .parquet, a folder of "
            ".parquet parts or a saved datasets folder",
        )
    if (path / "dataset_dict.json").is_file():
        return _dataset_dict_split(path)
    if (path / "state.json").is_file():
        return _saved_dataset(path)
    parts = tuple(
        sorted(
            part
            for part in path.rglob("*")
            if part.is_file() and part.suffix.lower() in PARQUET_SUFFIXES
        )
    )
    if not parts:
        raise DataError(
            path, "folder holds no .parquet parts and no saved datasets split (state.json)"
        )
    return Source(path, "parquet", parts)


@contextmanager
def _reading(part: Path, format: str) -> Iterator[None]:
    """Turn pyarrow's many errors about an unreadable file into a DataError naming it."""
    try:
        yield
    except (pa.ArrowException, OSError) as err:
        kind = "Parquet file" if format == "parquet" else "Arrow stream"
        raise DataError(part, f"not a readable {kind} ({err})") from None


def _schema(part: Path, format: str) -> pa.Schema:
    with _reading(part, format):
        if format == "parquet":
            return pq.read_schema(part)
        return pa.ipc.open_stream(pa.memory_map(str(part))).schema


def _read_part(part: Path, format: str, names: list[str]) -> pa.Table:
    """Columns ``names`` of one part file; a column it lacks is a DataError naming it."""
    lacking = [name for name in names if name not in _schema(part, format).names]
    if lacking:
        raise DataError(part, f"missing column(s) {', '.join(lacking)}, which the first part has")
    with _reading(part, format):
        if format == "parquet":
            return pq.read_table(part, columns=names)
        return pa.ipc.open_stream(pa.memory_map(str(part))).read_all().select(names)


def _column_names(schema: pa.Schema) -> list[str]:
    """The table's own columns: a pandas index stored beside them is not one."""
    index = (schema.pandas_metadata or {}).get("index_columns", [])
    return [name for name in schema.names if name not in index]


def _arrow_frame(
    source: Source, columns: Sequence[Column], others: bool
) -> tuple[pd.DataFrame, Origin]:
    """The typed frame of a Parquet or Arrow table of one part file or several."""
    names = _column_names(_schema(source.parts[0], source.format))
    whole = Origin(source.path)
    repeated_names(names, whole, "table", None)
    missing_columns(names, columns, whole, "table", None)
    wanted = {column.name for column in columns}
    selected = [name for name in names if others or name in wanted]
    tables = [_read_part(part, source.format, selected) for part in source.parts]
    try:
        table = pa.concat_tables(tables, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError) as err:
        raise DataError(source.path, f"parts disagree on column types ({err})") from None
    if table.num_rows == 0:
        raise DataError(source.path, f"{source.name} has no rows")
    origin = whole
    if source.parts != (source.path,):
        origin = Origin(source.path, source.parts, tuple(part.num_rows for part in tables))
    cells = {name: table.column(name) for name in selected}
    kinds = {column.name: column.kind for column in columns}
    return typed_frame(cells, np.arange(1, table.num_rows + 1), origin, kinds), origin


def read_source(
    path: Path, columns: Sequence[Column], others: bool = True
) -> tuple[pd.DataFrame, Origin]:
    """The table at ``path`` as a frame of ``columns`` converted to their kinds (and, when
    ``others``, every other column as text), with ``line``; and where its rows come from."""
    source = find_source(path)
    if source.format == "text":
        delimiter = DELIMITERS[path.suffix.lower()]
        frame = read_csv_with_header(path, columns, delimiter=delimiter, others=others)
        return frame, Origin(path)
    return _arrow_frame(source, columns, others)


def source_sha256(path: Path) -> str:
    """SHA-256 of a table wherever it lives: its files' own SHA-256s, in reading order."""
    digest = hashlib.sha256()
    for part in find_source(path).files:
        digest.update(sha256_of(part).encode())
    return digest.hexdigest()
