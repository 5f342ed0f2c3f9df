"""Strict readers for delimited text and Parquet tables.

Every value is checked as it is read, so a bad file fails with its path, the line number
and the field at fault instead of a pandas traceback or, worse, a silently dropped row.
Each returned frame carries a ``line`` column (the 1-based source line, or the 1-based row
for Parquet) so later checks can point back into the file too.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from metarec.errors import DataError

_CONVERTERS: dict[str, Callable[[str], object]] = {"int": int, "float": float, "str": str}
_EXPECTED = {"int": "an integer", "float": "a number", "str": "text"}


@dataclass(frozen=True)
class Column:
    """One expected field: its name and kind (``int``, ``float`` or ``str``)."""

    name: str
    kind: str
    required: bool = True


def read_lines(path: Path, encoding: str) -> Iterator[tuple[int, str]]:
    """Yield ``(line_number, text)`` for each line, decoding bytes with ``encoding``.

    A trailing newline at the end of the file is not a line. Undecodable bytes raise a
    DataError that names the line and the byte.
    """
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            try:
                text = raw.decode(encoding)
            except UnicodeDecodeError as err:
                bad = raw[err.start : err.start + 1].hex()
                raise DataError(
                    path,
                    f"byte 0x{bad} at column {err.start + 1} is not valid {encoding} text",
                    line=number,
                ) from None
            yield number, text.rstrip("\r\n")


def _convert(path: Path, number: int, column: Column, value: str) -> object:
    value = value.strip()
    if value == "" and column.kind != "str":
        raise DataError(
            path, f"expected {_EXPECTED[column.kind]}, got nothing", number, column.name
        )
    try:
        return _CONVERTERS[column.kind](value)
    except ValueError:
        raise DataError(
            path, f"expected {_EXPECTED[column.kind]}, got {value!r}", number, column.name
        ) from None


def rows_to_frame(
    path: Path, rows: Iterator[tuple[int, list[str]]], columns: Sequence[Column]
) -> pd.DataFrame:
    """Convert split rows to a typed frame, checking the field count and each value."""
    names = [column.name for column in columns]
    values: dict[str, list[object]] = {name: [] for name in names}
    lines: list[int] = []
    for number, fields in rows:
        if len(fields) != len(columns):
            raise DataError(
                path,
                f"expected {len(columns)} fields ({', '.join(names)}), found {len(fields)}",
                line=number,
            )
        for column, value in zip(columns, fields, strict=True):
            values[column.name].append(_convert(path, number, column, value))
        lines.append(number)
    if not lines:
        raise DataError(path, f"file is empty: expected rows of {', '.join(names)}")
    frame = pd.DataFrame(values)
    frame["line"] = lines
    return frame


def read_separated(
    path: Path, columns: Sequence[Column], separator: str, encoding: str
) -> pd.DataFrame:
    """Read a header-less file whose fields are split by a plain ``separator`` string."""

    def rows() -> Iterator[tuple[int, list[str]]]:
        for number, text in read_lines(path, encoding):
            if text.strip() == "":
                raise DataError(path, "empty line: expected a data row", line=number)
            yield number, text.split(separator)

    return rows_to_frame(path, rows(), columns)


def _decode(path: Path, encoding: str) -> str:
    """The whole file as text; undecodable bytes raise a DataError naming their line."""
    raw = path.read_bytes()
    try:
        return raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        bad = raw[err.start : err.start + 1].hex()
        raise DataError(
            path, f"byte 0x{bad} at column {column} is not valid {encoding} text", line=line
        ) from None


def read_csv_with_header(path: Path, columns: Sequence[Column], encoding: str = "utf-8-sig"):
    """Read a CSV whose first line names the columns; extra columns are kept as text.

    Quoted fields may hold commas and newlines (rows are numbered by the line they start
    on). The header must contain every required column, no name twice, and must not
    appear again further down (a sign of concatenated files). A UTF-8 byte-order mark,
    as spreadsheet programs write, is ignored.
    """
    required = ", ".join(column.name for column in columns if column.required)
    text = _decode(path, encoding)
    reader = csv.reader(io.StringIO(text, newline=""))

    def next_row() -> tuple[int, list[str]] | None:
        start = reader.line_num + 1
        try:
            return start, next(reader)
        except StopIteration:
            return None
        except csv.Error as err:
            raise DataError(path, f"malformed CSV ({err})", line=start) from None

    first = next_row()
    if first is None or not [name for name in first[1] if name.strip()]:
        raise DataError(path, f"file is empty: expected a header line naming {required}", line=1)
    header = [name.strip() for name in first[1]]
    duplicated = sorted({name for name in header if header.count(name) > 1})
    if duplicated:
        raise DataError(path, f"header names {', '.join(duplicated)} more than once", line=1)
    by_name = {column.name: column for column in columns}
    missing = [c.name for c in columns if c.required and c.name not in header]
    if missing:
        raise DataError(
            path, f"missing column(s) {', '.join(missing)}; header has {', '.join(header)}", line=1
        )
    present = [by_name.get(name, Column(name, "str")) for name in header]

    def rows() -> Iterator[tuple[int, list[str]]]:
        blank_line = None  # blank lines are fine at the end of the file only
        while (row := next_row()) is not None:
            number, fields = row
            if not fields:
                blank_line = blank_line or number
                continue
            if blank_line is not None:
                raise DataError(path, "empty line: expected a data row", line=blank_line)
            if [field.strip() for field in fields] == header:
                raise DataError(path, "the header line appears again (concatenated files?)", number)
            yield number, fields

    return rows_to_frame(path, rows(), present)


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds, so messages read ``inf``, not np.float64."""
    return value.item() if isinstance(value, np.generic) else value


def read_parquet_table(path: Path, columns: Sequence[Column]) -> pd.DataFrame:
    """Read a Parquet table, checking required columns and value kinds row by row."""
    try:
        frame = pd.read_parquet(path)
    except Exception as err:  # pyarrow raises several unrelated types for a bad file
        raise DataError(path, f"not a readable Parquet file ({err})") from None
    if frame.empty:
        raise DataError(path, "table has no rows")
    missing = [c.name for c in columns if c.required and c.name not in frame.columns]
    if missing:
        raise DataError(path, f"missing column(s) {', '.join(missing)}")
    frame = frame.reset_index(drop=True)
    for column in columns:
        if column.name not in frame.columns or column.kind == "str":
            continue
        if not pd.api.types.is_numeric_dtype(frame[column.name]) and not (
            pd.api.types.is_object_dtype(frame[column.name])
            or pd.api.types.is_string_dtype(frame[column.name])
        ):
            dtype = frame[column.name].dtype
            raise DataError(
                path,
                f"expected {column.kind} values, column has type {dtype} "
                "(store timestamps as integer seconds)",
                field=column.name,
            )
        converted = pd.to_numeric(frame[column.name], errors="coerce")
        bad = ~np.isfinite(converted.to_numpy(dtype=np.float64, na_value=np.nan))
        if column.kind == "int":
            bad |= (converted != converted.round()).to_numpy() | (
                converted.abs() >= 2**53
            ).to_numpy()
        if bad.any():
            row = int(bad.nonzero()[0][0])
            raise DataError(
                path,
                f"expected {_EXPECTED[column.kind]}, got {_plain(frame[column.name].iloc[row])!r}",
                line=row + 1,
                field=column.name,
            )
        frame[column.name] = converted.astype("int64" if column.kind == "int" else "float64")
    frame["line"] = range(1, len(frame) + 1)
    return frame
