"""A table's columns as typed values: the kinds a reader asks for, converted column-wise.

A column arrives as an Arrow array: text from a CSV or TSV file (every value a string), or
typed values from Parquet or a saved `datasets` split. Each column is converted at once;
the first value that does not fit is found with numpy and reported as a DataError naming
its file, line and field, the same error a value-by-value reader would give first.

Kinds (text is stripped of surrounding white space first; an empty value is "nothing"):

- ``int``, ``float``: numbers, as Python's ``int`` and ``float`` read them (``+5``,
  ``1e3``, ``inf``). Typed floats count as integers when whole and below 2**53.
- ``str``: text; typed numbers and dates are written out, lists of text joined by ", ",
  a missing value is "".
- ``id``: a user or item id, kept as it comes. A column is integer ids when every value is
  an integer written plainly (digits, an optional ``-``, no leading zero: ``str(int(v))
  == v``, so reading it as an integer loses nothing), and text ids when no value is. A
  column mixing the two (``1`` and ``B0001``, or ``12`` and ``0012``) is an error: in logs
  it usually means a broken join or ids that lost their leading zeros. ``text_id`` reads
  every id as text (integers in typed tables written out), for ids that merely look like
  numbers in places, e.g. ASINs, some of which are ISBNs.
- ``time``: seconds since 1970 (integer or float), or ISO 8601 dates and date-times
  (``2020-01-31``, ``2020-01-31T12:00:00.5``, with or without a zone; zone-less means
  UTC); typed tables may hold timestamps or dates. Every value of a column is of one kind:
  text that is all digits is seconds, so ``20200131`` is seconds, not a date. Values
  become int64 seconds, or float64 seconds where the source has fractions of a second.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from metarec.data.raw import Origin

KINDS = ("int", "float", "str", "id", "text_id", "time")
EXPECTED = {
    "int": "an integer",
    "float": "a number",
    "str": "text",
    "id": "an id (an integer or text)",
    "text_id": "an id",
    "time": "a time (seconds since 1970 or an ISO 8601 date/time)",
}
_INTEGER = r"^[+-]?[0-9]+$"
_SECONDS = r"^[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?$"
_FLOAT = r"(?i)^[+-]?(([0-9]+\.?[0-9]*|\.[0-9]+)(e[+-]?[0-9]+)?|inf|infinity|nan)$"
_TICKS_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


@dataclass(frozen=True)
class Column:
    """One expected field: its name and kind (one of `KINDS`)."""

    name: str
    kind: str
    required: bool = True


class _BadValue(Exception):
    """The first value of a column that does not fit its kind: its row and what is wrong."""

    def __init__(self, row: int, message: str) -> None:
        super().__init__(message)
        self.row = row
        self.message = message


def _plain(value: object) -> object:
    """A numpy scalar as the Python value it holds, so messages read ``inf``, not np.float64."""
    return value.item() if isinstance(value, np.generic) else value


def _bad_at(mask: np.ndarray | pa.Array, values: pa.Array, expected: str) -> None:
    """Raise `_BadValue` at the first true row of ``mask`` (bool (n,)), if any."""
    if isinstance(mask, pa.Array):
        mask = _true(mask)
    if mask.any():
        row = int(np.argmax(mask))
        value = values[row].as_py()
        shown = "nothing" if value is None or value == "" else repr(_plain(value))
        raise _BadValue(row, f"expected {expected}, got {shown}")


def _true(mask: pa.Array) -> np.ndarray:
    """A boolean Arrow array as numpy, a missing value counting as false: bool (n,)."""
    return mask.fill_null(False).to_numpy(zero_copy_only=False)


def _text(values: pa.Array) -> pa.Array:
    """String values stripped of surrounding white space (missing values stay missing)."""
    return pc.utf8_trim_whitespace(values.cast(pa.large_string()))


def _matches(text: pa.Array, pattern: str) -> np.ndarray:
    """Which stripped values match ``pattern`` in full: bool (n,)."""
    return _true(pc.match_substring_regex(text, pattern))


def _no_missing(text: pa.Array, expected: str) -> None:
    """Raise `_BadValue` at the first missing (null) value, if any."""
    if text.null_count:
        _bad_at(text.is_null(), text, expected)


def _cast(text: pa.Array, kind: pa.DataType) -> np.ndarray | None:
    """Stripped text as numbers (n,) when Arrow parses every value, else None.

    This is the fast way; the exact checks run only when it fails. Arrow's parsers accept
    what Python's ``int`` and ``float`` do, less ``+5`` for integers (it then fails), plus
    ``0x`` hexadecimal integers, which Python does not: text with an ``x`` is not cast.
    """
    if pc.any(pc.match_substring(text, "x", ignore_case=True)).as_py():
        return None
    try:
        return pc.cast(text, kind).to_numpy(zero_copy_only=False)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None


def _int64_of_text(text: pa.Array, integer: np.ndarray, expected: str) -> np.ndarray:
    """Text integers (every row matched `_INTEGER`) as int64 (n,); too large is a bad value."""
    digits = pc.utf8_ltrim(text, characters="+")
    long = np.flatnonzero(_true(pc.greater(pc.utf8_length(digits), 18)) & integer)
    too_large = np.zeros(len(text), dtype=bool)
    for row in long:  # only values of 19+ digits, near or past the int64 range
        too_large[row] = not -(2**63) <= int(digits[int(row)].as_py()) < 2**63
    _bad_at(too_large, text, expected)
    return pc.cast(digits, pa.int64()).to_numpy(zero_copy_only=False)


def _text_integers(text: pa.Array, expected: str) -> np.ndarray:
    """Stripped text that must be integers, as int64 (n,)."""
    _no_missing(text, expected)
    values = _cast(text, pa.int64())
    if values is not None:
        return values
    integer = _matches(text, _INTEGER)
    _bad_at(~integer, text, expected)
    return _int64_of_text(text, integer, expected)


def _int64_of_numbers(values: pa.Array, expected: str) -> np.ndarray:
    """Typed numbers as int64 (n,): integers as they are, floats when whole and below 2**53."""
    _bad_at(values.is_null(), values, expected)
    if pa.types.is_integer(values.type):
        if pa.types.is_uint64(values.type):
            _bad_at(pc.greater_equal(values, 2**63), values, expected)
        return values.cast(pa.int64()).to_numpy()
    numbers = values.cast(pa.float64()).to_numpy()
    with np.errstate(invalid="ignore"):
        whole = np.isfinite(numbers) & (numbers == np.round(numbers)) & (np.abs(numbers) < 2**53)
    _bad_at(~whole, values, expected)
    return numbers.astype(np.int64)


def _is_number(values: pa.Array) -> bool:
    return pa.types.is_integer(values.type) or pa.types.is_floating(values.type)


def _is_text(values: pa.Array) -> bool:
    return pa.types.is_string(values.type) or pa.types.is_large_string(values.type)


def _wrong_type(values: pa.Array, expected: str) -> _BadValue:
    return _BadValue(0, f"expected {expected}, column has type {values.type}")


def _to_int(values: pa.Array) -> np.ndarray:
    expected = EXPECTED["int"]
    if _is_number(values):
        return _int64_of_numbers(values, expected)
    if not _is_text(values):
        raise _wrong_type(values, expected)
    return _text_integers(_text(values), expected)


def _to_float(values: pa.Array) -> np.ndarray:
    expected = EXPECTED["float"]
    if _is_number(values):
        _bad_at(values.is_null(), values, expected)
        return values.cast(pa.float64()).to_numpy()
    if not _is_text(values):
        raise _wrong_type(values, expected)
    text = _text(values)
    _no_missing(text, expected)
    numbers = _cast(text, pa.float64())
    if numbers is None:
        _bad_at(~_matches(text, _FLOAT), text, expected)
        numbers = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    return numbers


def _to_str(values: pa.Array) -> pd.Series:
    if pa.types.is_list(values.type) or pa.types.is_large_list(values.type):
        values = pc.binary_join(values.cast(pa.large_list(pa.large_string())), ", ")
    try:
        text = _text(values)
    except (pa.ArrowNotImplementedError, pa.ArrowInvalid):
        raise _wrong_type(values, EXPECTED["str"]) from None
    return text.fill_null("").to_pandas()


def _plain_integers(text: pa.Array) -> np.ndarray:
    """Which values are integers written plainly, ``str(int(v)) == v`` (``0``, ``12``,
    ``-7``; not ``007``, ``+7``, ``-0``): bool (n,)."""
    negative = _true(pc.starts_with(text, "-"))
    digits = text
    if negative.any():
        digits = pc.if_else(pa.array(negative), pc.utf8_slice_codeunits(text, 1), text)
    leading_zero = _true(pc.starts_with(digits, "0")) & _true(pc.greater(pc.utf8_length(digits), 1))
    zero = _true(pc.equal(digits, "0"))
    return _true(pc.ascii_is_decimal(digits)) & ~leading_zero & ~(negative & zero)


def _to_id(values: pa.Array, as_text: bool) -> np.ndarray | pd.Series:
    expected = EXPECTED["text_id" if as_text else "id"]
    if _is_number(values):
        ids = _int64_of_numbers(values, expected)
        return pd.Series(ids.astype(str), dtype="str") if as_text else ids
    if not _is_text(values):
        raise _wrong_type(values, expected)
    text = _text(values)
    _bad_at(~_true(pc.greater(pc.utf8_length(text), 0)), text, expected)
    if as_text:
        return text.to_pandas()
    plain = _plain_integers(text)
    if plain.all():
        return _int64_of_text(text, plain, expected)
    if plain.any():
        row = int(np.argmax(plain != plain[0]))
        first, value = text[0].as_py(), text[row].as_py()
        integer, other = (first, value) if plain[0] else (value, first)
        raise _BadValue(
            row,
            f"mixed id kinds: {value!r} is {'an integer' if plain[row] else 'text'} but the "
            f"column's first id {first!r} is {'an integer' if plain[0] else 'text'}; a column "
            f"holds integer ids (written plainly, like {integer}) or text ids (like {other!r}), "
            "or all ids are read as text with --id-type str",
        )
    return text.to_pandas()


def _seconds(ticks: np.ndarray, per_second: int) -> np.ndarray:
    """Ticks since 1970 as int64 seconds (n,), or float64 seconds when any has a fraction."""
    if per_second == 1:
        return ticks.astype(np.int64)
    if (ticks % per_second == 0).all():
        return ticks // per_second
    return ticks / per_second


def _to_time(values: pa.Array) -> np.ndarray:
    expected = EXPECTED["time"]
    if pa.types.is_timestamp(values.type) or pa.types.is_date(values.type):
        _bad_at(values.is_null(), values, expected)
        if pa.types.is_date32(values.type):
            return values.cast(pa.int32()).to_numpy().astype(np.int64) * 86_400
        unit = "ms" if pa.types.is_date64(values.type) else values.type.unit
        return _seconds(values.cast(pa.int64()).to_numpy(), _TICKS_PER_SECOND[unit])
    if pa.types.is_integer(values.type):
        return _int64_of_numbers(values, expected)
    if pa.types.is_floating(values.type):
        _bad_at(values.is_null(), values, expected)
        numbers = values.to_numpy(zero_copy_only=False)
        _bad_at(~np.isfinite(numbers), values, expected)
        return numbers
    if not _is_text(values):
        raise _wrong_type(values, expected)
    return _text_times(_text(values))


def _iso_times(text: pa.Array) -> pd.Series:
    """Stripped text parsed as ISO 8601 in UTC (zone-less = UTC); NaT where it is not."""
    return pd.to_datetime(text.to_pandas(), format="ISO8601", utc=True, errors="coerce")


def _is_seconds(value: str) -> bool:
    return re.fullmatch(_SECONDS, value) is not None


def _text_times(text: pa.Array) -> np.ndarray:
    """Stripped text times, all seconds or all ISO 8601, as seconds (see the module doc)."""
    expected = EXPECTED["time"]
    _no_missing(text, expected)
    if len(text) == 0:
        return np.zeros(0, dtype=np.int64)
    parsed = None
    if _is_seconds(text[0].as_py()):
        numbers = _cast(text, pa.int64())
        if numbers is None:
            numbers = _cast(text, pa.float64())
        if numbers is not None and np.isfinite(numbers).all():
            return numbers
        fits = _matches(text, _SECONDS)
    else:
        parsed = _iso_times(text)
        fits = parsed.notna().to_numpy() & ~_true(pc.ascii_is_decimal(text))
    if not fits.all():
        row = int(np.argmax(~fits))
        value, first = text[row].as_py(), text[0].as_py()
        is_seconds = _is_seconds(value)
        if is_seconds or _iso_times(text[row : row + 1]).notna().all():
            kind_names = {True: "seconds", False: "an ISO 8601 date/time"}
            raise _BadValue(
                row,
                f"mixed time kinds: {value!r} is {kind_names[is_seconds]} but the column's "
                f"first time {first!r} is {kind_names[parsed is None]}; one column, one kind",
            )
        _bad_at(~fits, text, expected)
    if parsed is not None:
        return _seconds(parsed.array.asi8, _TICKS_PER_SECOND[parsed.dt.unit])
    numbers = pc.cast(text, pa.float64()).to_numpy(zero_copy_only=False)
    _bad_at(~np.isfinite(numbers), text, expected)
    return numbers


_CONVERTERS = {
    "int": _to_int,
    "float": _to_float,
    "str": _to_str,
    "id": lambda values: _to_id(values, as_text=False),
    "text_id": lambda values: _to_id(values, as_text=True),
    "time": _to_time,
}


def _plain_array(values: pa.Array | pa.ChunkedArray) -> pa.Array:
    """One contiguous array of plain (not dictionary-encoded, not view) values."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    if pa.types.is_dictionary(values.type):
        values = values.dictionary_decode()
    if pa.types.is_string_view(values.type):
        values = values.cast(pa.large_string())
    return values


def typed_frame(
    cells: Mapping[str, pa.Array | pa.ChunkedArray],
    lines: np.ndarray,
    origin: Origin,
    kinds: Mapping[str, str],
) -> pd.DataFrame:
    """A frame of ``cells`` (name -> values (n,), in the table's column order), each converted
    to its kind in ``kinds`` (default ``str``), plus ``line`` (int64 (n,), as the table
    numbers its rows). The first bad value, by row then column, raises a DataError."""
    converted: dict[str, object] = {}
    bad_values: list[tuple[int, int, str, str]] = []  # (row, column position, name, message)
    for position, (name, values) in enumerate(cells.items()):
        try:
            converted[name] = _CONVERTERS[kinds.get(name, "str")](_plain_array(values))
        except _BadValue as bad:
            bad_values.append((bad.row, position, name, bad.message))
    if bad_values:
        row, _, name, message = min(bad_values)
        raise origin.error(message, int(lines[row]), name)
    frame = pd.DataFrame({name: _unindexed(values) for name, values in converted.items()})
    frame["line"] = np.asarray(lines, dtype=np.int64)
    return frame


def _unindexed(values: object) -> object:
    """Values for a new frame's column: a Series' values, so that no index gets aligned."""
    return values.array if isinstance(values, pd.Series) else values


def missing_columns(
    names: Sequence[str], columns: Sequence[Column], origin: Origin, what: str, line: int | None
) -> None:
    """Raise a DataError naming the required ``columns`` missing from ``names``, if any, and
    listing what the table has (``what``: "header" or "table")."""
    missing = [column.name for column in columns if column.required and column.name not in names]
    if missing:
        listed = ", ".join(names)
        raise origin.error(f"missing column(s) {', '.join(missing)}; {what} has {listed}", line)


def repeated_names(names: Sequence[str], origin: Origin, what: str, line: int | None) -> None:
    """Raise a DataError naming the column names that appear more than once, if any."""
    repeated = sorted({name for name in names if list(names).count(name) > 1})
    if repeated:
        raise origin.error(f"{what} names {', '.join(repeated)} more than once", line)
