"""Delimited text tables as devices export them: the delimiter and the header are read from the file itself.

A device export may be comma-, tab-, semicolon- or whitespace-separated, with or without a header row, with `#`
comment lines and a few lines of preamble (device name, firmware) before the table. The layout is decided from
the first rows, by rules that do not guess:

- the delimiter is the first of tab, semicolon, comma that splits (nearly) every row into the same number of
  fields, more than one; else whitespace, on the same terms; else the file is one column;
- the first row with a number or a date-time in every column that mostly holds them is the first row of data
  (an all-numeric first row is data: no sample is lost); the row of text just before it, if any, is the header;
  headerless columns are named by their 0-based index; rows before the header (or the data) are preamble,
  skipped and reported;
- blank lines and lines starting with `#` are not rows;
- with a delimiter other than comma, numbers written with a decimal comma (`1,25`) are read as such.

`pick_column` resolves `predict.column` / `predict.time_column`: a column name, else a 0-based index.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ttm_experiments.errors import ConfigError, DataError

SNIFF_BYTES = 1 << 20  # the first MiB decides the layout
SNIFF_ROWS = 200
CONSISTENT = 0.95  # share of the sniffed rows that must have the table's field count
DELIMITERS = {"\t": "tab-separated", ";": "semicolon-separated", ",": "comma-separated"}
WHITESPACE = None  # the delimiter value for runs of spaces and tabs
DECIMAL_COMMA = re.compile(r"[+-]?\d+,\d+([eE][+-]?\d+)?")
DATETIME_LIKE = re.compile(r"\d{1,4}[-/:.]\d{1,2}([-/:.T ]|$)")


@dataclass
class TableLayout:
    delimiter: str | None  # one of DELIMITERS, or WHITESPACE; "" for a one-column file
    header: bool
    decimal_comma: bool
    skip_lines: int  # lines before the first row of the table (the header, or the first row of values)
    preamble: int  # of those, the lines that are not blank or `#` comments (a device name, a firmware version)
    fields: int

    def describe(self) -> str:
        sep = "one column" if self.delimiter == "" else DELIMITERS.get(self.delimiter, "whitespace-separated")
        parts = [sep, "header" if self.header else "no header"]
        if self.decimal_comma:
            parts.append("decimal comma")
        if self.preamble:
            parts.append(f"{self.preamble} preamble line(s) skipped")
        return ", ".join(parts)


@dataclass
class Table:
    names: list[str]  # header names, or "0", "1", ... for a headerless file
    columns: list[np.ndarray]  # one array of str per column (parsed by the caller: numbers, clocks)
    layout: TableLayout

    def listing(self) -> str:
        if self.layout.header:
            return f"{self.names} (0-based indexes 0..{len(self.names) - 1})"
        return f"0..{len(self.names) - 1} (no header: columns are named by their 0-based index)"

    def numbers(self, index: int) -> np.ndarray:
        """Column `index` as float64; what is not a number is NaN."""
        import pandas as pd

        text = pd.Series(self.columns[index], dtype=str).str.strip()
        if self.layout.decimal_comma:
            text = text.str.replace(",", ".", regex=False)
        return pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64)


def _text(path: Path) -> tuple[str, str]:
    raw = path.read_bytes()[:SNIFF_BYTES]
    if b"\0" in raw:
        raise DataError(
            f"predict.input={path} is a binary file, not a text table. Fix: a CSV/TSV/text export, an .npz "
            "(np.savez(path, signal=x, fs=rate)) or a WFDB record"
        )
    for encoding in ("utf-8-sig", "latin-1"):
        try:
            return raw.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise AssertionError("latin-1 decodes any bytes")


def _rows(text: str) -> list[tuple[int, str]]:
    """(line number, line) of the rows that are not blank or `#` comments; the last line may be cut short."""
    lines = text.splitlines()
    if len(text) >= SNIFF_BYTES and lines:
        lines = lines[:-1]
    return [(i, line) for i, line in enumerate(lines) if line.strip() and not line.lstrip().startswith("#")][
        :SNIFF_ROWS
    ]


def _split(line: str, delimiter: str | None) -> list[str]:
    if delimiter == "":
        return [line.strip()]
    parts = line.split() if delimiter is WHITESPACE else line.split(delimiter)
    return [p.strip().strip('"').strip("'").strip() for p in parts]


def _field_count(rows: list[str], delimiter: str | None) -> int | None:
    """The field count (> 1) that nearly every row has with `delimiter`, or None."""
    counts = Counter(len(_split(r, delimiter)) for r in rows)
    fields, n = counts.most_common(1)[0]
    return fields if fields > 1 and n >= CONSISTENT * len(rows) else None


def _is_number(field: str, decimal_comma: bool) -> bool:
    try:
        float(field.replace(",", ".") if decimal_comma else field)
    except ValueError:
        return False
    return True


def _kind(field: str, decimal_comma: bool) -> str:
    if field == "" or _is_number(field, decimal_comma):
        return "value"
    return "value" if DATETIME_LIKE.match(field) else "text"


def sniff(path: Path) -> TableLayout:
    """The layout of a text table (module docstring); DataError for a file without one."""
    text, _ = _text(path)
    rows = _rows(text)
    if not rows:
        raise DataError(f"predict.input={path} holds no rows (empty or only # comments). Fix: the exported file")
    lines = [r for _, r in rows]
    delimiter, fields = "", 1
    for candidate in (*DELIMITERS, WHITESPACE):
        found = _field_count(lines, candidate)
        if found:
            delimiter, fields = candidate, found
            break
    if delimiter == "" and any(len(line.split()) > 1 for line in lines):
        counts = sorted({len(line.split()) for line in lines})
        raise DataError(
            f"predict.input={path}: its rows do not split into the same number of fields by tab, semicolon, comma "
            f"or whitespace (whitespace gives {counts[0]}..{counts[-1]} fields). Fix: an export whose rows have "
            "one delimiter and the same columns"
        )
    table = [(i, _split(r, delimiter)) for i, r in rows if len(_split(r, delimiter)) == fields]
    decimal_comma = delimiter != "," and any(DECIMAL_COMMA.fullmatch(f) for _, row in table for f in row)
    values = np.array([[_kind(f, decimal_comma) == "value" for f in row] for _, row in table])  # [rows, fields]
    numeric = values.mean(axis=0) >= 0.5  # columns of numbers or date-times (not a column of status words)
    data = next((k for k, row in enumerate(values) if row[numeric].all()), 0)
    first = max(data - 1, 0)  # the header is the last row of text before the first row of values
    first_line = table[first][0]
    preamble = sum(1 for i, _ in rows if i < first_line)
    return TableLayout(delimiter, data > 0, decimal_comma, first_line, preamble, fields)


def read_table(path: Path) -> Table:
    """The whole table as text columns, by the sniffed layout."""
    import pandas as pd

    layout = sniff(path)
    _, encoding = _text(path)
    sep = r"\s+" if layout.delimiter is WHITESPACE else (layout.delimiter or ",")
    frame = pd.read_csv(
        path,
        sep=sep,
        header=0 if layout.header else None,
        skiprows=layout.skip_lines,
        comment="#",
        dtype=str,
        keep_default_na=False,
        skipinitialspace=True,
        encoding=encoding,
        on_bad_lines="error",
        engine="c",
    )
    names = [str(c).strip().strip('"') for c in frame.columns] if layout.header else [str(i) for i in frame.columns]
    return Table(names, [frame[c].to_numpy(dtype=str) for c in frame.columns], layout)


def pick_column(table: Table, spec: str | int, key: str, where: str) -> int:
    """`spec` as a column: its name, else a 0-based index. ConfigError naming the columns otherwise."""
    spec = str(spec).strip()
    if spec in table.names:  # a name (a headerless table's names are its indexes)
        return table.names.index(spec)
    if re.fullmatch(r"-?\d+", spec) and 0 <= int(spec) < len(table.names):
        return int(spec)
    what = "has no column" if table.layout.header else "has no column index"
    raise ConfigError(
        f"{where}: {key}={spec}: it {what} {spec!r}; its columns are {table.listing()}. "
        f"Fix: {key}=<a name or a 0-based index of those>"
    )
