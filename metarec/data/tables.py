"""Strict readers for delimited text: MovieLens-style files, and CSV or TSV with a header.

A file is cut into records and fields by numpy over its bytes, and each column is then
converted at once (`metarec.data.columns`): no Python loop runs per row or per value, so
millions of rows read in seconds. The checks stay strict: a bad file fails with its path,
the line number and the field at fault, and with the problem a reader going line by line
would meet first. Each returned frame carries a ``line`` column (the 1-based line its row
starts on).

CSV follows Python's `csv` module: a field may be quoted, with quotes doubled inside, and
then hold delimiters and line breaks (its row is numbered by the line it starts on);
``\\r\\n``, ``\\n`` and a lone ``\\r`` end a line. The byte-level cut relies on quotes being
used that way. A file with a quote anywhere else (inside an unquoted field, text after a
closing quote), an unclosed quote, or a NUL byte, is read by the `csv` module itself, one
row at a time, with its exact rules. Headerless files (MovieLens) are not quoted; their
lines end at ``\\n``.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from metarec.data.columns import Column, missing_columns, repeated_names, typed_frame
from metarec.data.raw import Origin
from metarec.errors import DataError

__all__ = ["Column", "read_csv_with_header", "read_separated"]

_LF, _CR, _QUOTE = 10, 13, 34
# bytes a multi-character separator may stand in for: control characters text never holds
_SPARE_BYTES = [byte for byte in range(1, 32) if byte not in (9, 10, 13)]


@dataclass(frozen=True)
class Records:
    """A delimited file cut into records of fields, with the line each record starts on.

    ``text`` holds every field, as written (quotes removed, white space kept), and between
    two fields the bytes separating them: field ``k`` of the file is ``text[2 * k]``.
    Record ``r`` has fields ``starts[r]:starts[r + 1]`` (int64 (R + 1,)) and starts on line
    ``lines[r]`` (int64 (R,)). An empty line is a record without fields.
    """

    text: pa.Array
    starts: np.ndarray
    lines: np.ndarray

    @property
    def counts(self) -> np.ndarray:
        """Fields per record: int64 (R,)."""
        return np.diff(self.starts)

    def column(self, records: np.ndarray, position: int) -> pa.Array:
        """Field ``position`` of each of ``records`` (int (k,), each with more fields)."""
        return self.text.take(pa.array(2 * (self.starts[records] + position)))

    def record(self, index: int) -> list[str]:
        """The fields of one record."""
        return self.text[2 * self.starts[index] : 2 * self.starts[index + 1] : 2].to_pylist()


def _utf8(path: Path, encoding: str) -> bytes:
    """The file's text as UTF-8 bytes, without a byte-order mark under ``utf-8-sig``;
    undecodable bytes raise a DataError naming their line and column."""
    raw = path.read_bytes()
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        column = err.start - (raw.rfind(b"\n", 0, err.start) + 1) + 1
        bad = raw[err.start : err.start + 1].hex()
        raise DataError(
            path, f"byte 0x{bad} at column {column} is not valid {encoding} text", line=line
        ) from None
    codec = codecs.lookup(encoding).name
    if codec == "utf-8":
        return raw
    if codec == "utf-8-sig":
        return raw.removeprefix(codecs.BOM_UTF8)
    return text.encode()


def _after(buf: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """The byte after each position, 0 past the end: uint8 (k,)."""
    following = np.minimum(positions + 1, len(buf) - 1)
    return np.where(positions + 1 < len(buf), buf[following], 0)


def _cut(data: bytes, delimiter: int, csv_rules: bool) -> Records | None:
    """``data`` (UTF-8) cut into records at line ends and fields at ``delimiter`` bytes.

    With ``csv_rules``, quotes are honoured and a lone ``\\r`` ends a line too; None when
    the quoting is not the plain kind the module doc describes (the caller then lets the
    `csv` module read the file).
    """
    if not data:
        return Records(
            pa.array([], pa.large_string()), np.zeros(1, np.int64), np.zeros(0, np.int64)
        )
    buf = np.frombuffer(data, dtype=np.uint8)
    quotes = np.zeros(0, dtype=np.int64)
    if csv_rules and b'"' in data:
        quotes = np.flatnonzero(buf == _QUOTE)
    if csv_rules and (len(quotes) % 2 or b"\0" in data):
        return None
    structural = (buf == delimiter) | (buf == _LF)
    returns = b"\r" in data
    if returns:
        structural |= buf == _CR
    positions = np.flatnonzero(structural)
    byte = buf[positions]
    end_lengths = np.ones(len(positions), dtype=np.int8)
    if returns:  # \r\n is one line end, at the \r; a lone \r ends a line only in CSV
        crlf = (byte == _CR) & (_after(buf, positions) == _LF)
        dropped = (byte == _LF) & (buf[np.maximum(positions - 1, 0)] == _CR) & (positions > 0)
        if not csv_rules:
            dropped |= (byte == _CR) & ~crlf
        positions, byte = positions[~dropped], byte[~dropped]
        end_lengths = (1 + crlf[~dropped]).astype(np.int8)
    is_end = byte != delimiter
    line_ends = positions[is_end]
    if len(quotes):
        unquoted = np.searchsorted(quotes, positions) % 2 == 0
        positions, is_end, end_lengths = (
            positions[unquoted],
            is_end[unquoted],
            end_lengths[unquoted],
        )
    if not len(positions) or not is_end[-1] or positions[-1] + end_lengths[-1] < len(buf):
        positions = np.append(positions, len(buf))
        is_end, end_lengths = np.append(is_end, True), np.append(end_lengths, 0)

    offsets = np.zeros(2 * len(positions), dtype=np.int64)  # [start, end] of each field
    offsets[1::2] = positions
    np.add(positions[:-1], end_lengths[:-1], out=offsets[2::2])
    field_starts = offsets[0::2]
    opens_record = np.concatenate([[True], is_end[:-1]])
    record_starts = field_starts[opens_record]
    # an empty line is one empty "field" between two line ends: it has no fields at all
    empty_line = is_end & opens_record & (field_starts == positions)
    if empty_line.any():
        starts = np.concatenate([[0], np.cumsum(~empty_line)[is_end]])
        offsets = offsets.reshape(-1, 2)[~empty_line].ravel()
    else:
        starts = np.concatenate([[0], np.flatnonzero(is_end) + 1])
    text = _gapped_text(data, offsets)
    if len(quotes):
        text = _unquoted(text)
        if text is None:
            return None
        lines = 1 + np.searchsorted(line_ends, record_starts)
    else:
        lines = np.arange(1, len(record_starts) + 1)
    return Records(text, starts.astype(np.int64), lines.astype(np.int64))


def _gapped_text(data: bytes, offsets: np.ndarray) -> pa.Array:
    """Strings over ``data`` (no copy) cut at ``offsets`` (2F,), ascending: the byte ranges
    ``offsets[2k]:offsets[2k + 1]`` are the fields, the ranges between them the gaps."""
    if not len(offsets):
        return pa.array([], pa.large_string())
    return pa.LargeStringArray.from_buffers(
        len(offsets) - 1, pa.py_buffer(offsets), pa.py_buffer(data)
    )


def _unquoted(text: pa.Array) -> pa.Array | None:
    """``text`` with its fields' quotes removed (``"a ""b"" c"`` -> ``a "b" c``), or None
    when a field holds a quote other than as a whole quoted field."""
    quoted = np.flatnonzero(pc.match_substring(text, '"').to_numpy(zero_copy_only=False))
    values = text.take(pa.array(quoted))
    inner = pc.utf8_slice_codeunits(values, 1, -1)
    plain = (
        pc.starts_with(values, '"').to_numpy(zero_copy_only=False)
        & pc.ends_with(values, '"').to_numpy(zero_copy_only=False)
        & (pc.binary_length(values).to_numpy() >= 2)
        & ~pc.match_substring(pc.replace_substring(inner, '""', ""), '"').to_numpy(
            zero_copy_only=False
        )
    )
    if not plain.all():
        return None
    mask = np.zeros(len(text), dtype=bool)
    mask[quoted] = True
    return pc.replace_with_mask(text, pa.array(mask), pc.replace_substring(inner, '""', '"'))


def _cut_by_csv_module(path: Path, text: str, delimiter: str) -> Records:
    """``text`` cut into records by the `csv` module, one row at a time (see the module doc)."""
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    fields: list[str] = []
    counts: list[int] = []
    lines: list[int] = []
    while True:
        start = reader.line_num + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as err:
            raise DataError(path, f"malformed CSV ({err})", line=start) from None
        fields += row
        counts.append(len(row))
        lines.append(start)
    starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)]).astype(np.int64)
    gapped = [part for field in fields for part in (field, "")][:-1]
    return Records(pa.array(gapped, pa.large_string()), starts, np.array(lines, dtype=np.int64))


def _first(mask: np.ndarray) -> int | None:
    """The first true index of ``mask`` (bool (n,)), or None."""
    return int(np.argmax(mask)) if mask.any() else None


def _one_byte_separator(path: Path, data: bytes, separator: str) -> tuple[bytes, int]:
    """``data`` with a longer ``separator`` (matched as `str.split` does) replaced by one
    byte the file does not hold, and that byte."""
    encoded = separator.encode()
    if len(encoded) == 1:
        return data, encoded[0]
    spare = next((byte for byte in _SPARE_BYTES if bytes([byte]) not in data), None)
    if spare is None:
        raise DataError(path, f"cannot split on {separator!r}: every control byte is in use")
    return data.replace(encoded, bytes([spare])), spare


def _count_problem(record: int, names: Sequence[str], found: int) -> tuple[int, str]:
    return record, f"expected {len(names)} fields ({', '.join(names)}), found {found}"


def _typed_rows(
    path: Path,
    records: Records,
    rows: np.ndarray,
    names: Sequence[str],
    columns: Sequence[Column],
    others: bool,
    problem: tuple[int, str] | None,
) -> pd.DataFrame:
    """The frame of ``rows`` (records holding one field per name in ``names``, ascending)
    before the file's first structural ``problem`` ``(record, message)``, if any.

    ``columns`` are converted to their kinds, other fields kept as text when ``others`` is
    true. A bad value before the problem is reported first, as a reader going line by line
    would meet it, then the problem itself.
    """
    if problem is not None:
        rows = rows[rows < problem[0]]
    elif not len(rows):
        raise DataError(path, f"file is empty: expected rows of {', '.join(names)}")
    kinds = {column.name: column.kind for column in columns}
    cells = {
        name: records.column(rows, position)
        for position, name in enumerate(names)
        if others or name in kinds
    }
    frame = typed_frame(cells, records.lines[rows], Origin(path), kinds)
    if problem is not None:
        raise DataError(path, problem[1], line=int(records.lines[problem[0]]))
    return frame


def read_separated(
    path: Path, columns: Sequence[Column], separator: str, encoding: str
) -> pd.DataFrame:
    """Read a header-less file whose fields are split by a plain ``separator`` string."""
    data, delimiter = _one_byte_separator(path, _utf8(path, encoding), separator)
    records = _cut(data, delimiter, csv_rules=False)
    names = [column.name for column in columns]
    suspect = records.counts != len(names)
    if separator.isspace():  # a line of separators and spaces has fields, yet is empty
        visible = pc.utf8_length(pc.utf8_trim_whitespace(records.text)).to_numpy()[0::2]
        suspect |= np.diff(np.concatenate([[0], np.cumsum(visible)])[records.starts]) == 0
    problem = _first(suspect)
    if problem is not None:
        if separator.join(records.record(problem)).strip() == "":
            problem = (problem, "empty line: expected a data row")
        else:
            problem = _count_problem(problem, names, int(records.counts[problem]))
    rows = np.arange(len(suspect))
    return _typed_rows(path, records, rows, names, columns, True, problem)


def _repeated_header(records: Records, rows: np.ndarray, header: list[str]) -> int | None:
    """The first of ``rows`` (records with one field per header name) that repeats the
    header, or None."""
    candidates = rows
    for position, name in enumerate(header):
        values = pc.utf8_trim_whitespace(records.column(candidates, position))
        candidates = candidates[pc.equal(values, name).to_numpy(zero_copy_only=False)]
    return int(candidates[0]) if len(candidates) else None


def _header_problem(records: Records, header: list[str]) -> tuple[int, str] | None:
    """The first structural problem below the header: ``(record, message)`` or None."""
    counts = records.counts
    body = np.arange(1, len(counts))
    blank = counts[body] == 0
    last_row = body[~blank][-1] if (~blank).any() else 0
    problems = []
    inner_blank = _first(blank & (body < last_row))
    if inner_blank is not None:
        problems.append((int(body[inner_blank]), "empty line: expected a data row"))
    wrong_count = _first(~blank & (counts[body] != len(header)))
    if wrong_count is not None:
        record = int(body[wrong_count])
        problems.append(_count_problem(record, header, int(counts[record])))
    repeated = _repeated_header(records, body[counts[body] == len(header)], header)
    if repeated is not None:
        problems.append((repeated, "the header line appears again (concatenated files?)"))
    return min(problems, default=None)


def read_csv_with_header(
    path: Path,
    columns: Sequence[Column],
    encoding: str = "utf-8-sig",
    delimiter: str = ",",
    others: bool = True,
) -> pd.DataFrame:
    """Read a CSV (or, with ``delimiter="\\t"``, TSV) whose first line names the columns.

    Columns not in ``columns`` are kept as text when ``others`` is true. The header must
    contain every required column, no name twice, and must not appear again further down
    (a sign of concatenated files). Empty lines are allowed at the end only. A UTF-8
    byte-order mark, as spreadsheet programs write, is ignored.
    """
    origin = Origin(path)
    required = ", ".join(column.name for column in columns if column.required)
    data = _utf8(path, encoding)
    records = _cut(data, ord(delimiter), csv_rules=True) or _cut_by_csv_module(
        path, data.decode(), delimiter
    )
    header = [name.strip() for name in records.record(0)] if len(records.lines) else []
    if not any(header):
        raise DataError(path, f"file is empty: expected a header line naming {required}", line=1)
    repeated_names(header, origin, "header", line=1)
    missing_columns(header, columns, origin, "header", line=1)
    rows = np.flatnonzero(records.counts == len(header))
    rows = rows[rows > 0]
    return _typed_rows(
        path, records, rows, header, columns, others, _header_problem(records, header)
    )
