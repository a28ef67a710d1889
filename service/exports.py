"""Execution history and audit rows as files: a DataFrame, CSV, Parquet or Excel, in chunks.

The rows come from `db.exports` a chunk at a time and each chunk is appended to the
file, so exporting a million executions holds one chunk in memory, never the whole
history. Text people or agents wrote is made inert for spreadsheets in CSV and Excel.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import ValidationFailed
from db import exports
from db.audit import AuditRow
from db.queries import ExecutionFilters, count_executions

Format = Literal["csv", "parquet", "xlsx"]
FORMATS: tuple[Format, ...] = ("csv", "parquet", "xlsx")
MEDIA_TYPES = {
    "csv": "text/csv",
    "parquet": "application/vnd.apache.parquet",
    "xlsx": "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
}
EXCEL_MAX_ROWS = 1_048_575  # the sheet's limit, minus the header row
CHUNK_SIZE = 50_000
Progress = Callable[[int, int], None]  # (rows written so far, rows in total)

_TIME = pa.timestamp("us", tz="UTC")
_TYPES = {
    **dict.fromkeys(("scheduled_for", "queued_at", "started_at", "finished_at"), _TIME),
    "duration_s": pa.float64(),
    **dict.fromkeys(("attempt", "current_step", "total_steps"), pa.int64()),
}
# Every other column is text.
SCHEMA = pa.schema([(name, _TYPES.get(name, pa.string())) for name in exports.COLUMNS])
COLUMNS = tuple(SCHEMA.names)
TIME_COLUMNS = tuple(f.name for f in SCHEMA if f.type == _TIME)
# Text a person or an agent wrote. In CSV and Excel a cell starting with one of these
# characters is a formula to a spreadsheet (=HYPERLINK(...) sends data away): such
# cells get a leading apostrophe, as OWASP advises. Parquet and DataFrames keep the text.
USER_TEXT_COLUMNS = ("automation", "error")
FORMULA_START = r"^[=+\-@\t\r]"


def neutralise_formulas(table: pa.Table, columns: tuple[str, ...] = USER_TEXT_COLUMNS) -> pa.Table:
    """`table` with every cell of `columns` that a spreadsheet would run made inert."""
    for name in columns:
        column = table[name]
        risky = pc.fill_null(pc.match_substring_regex(column, FORMULA_START), False)
        quoted = pc.binary_join_element_wise("'", column, "")
        index = table.schema.get_field_index(name)
        table = table.set_column(index, name, pc.if_else(risky, quoted, column))
    return table


def inert_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """`frame` with every text cell a spreadsheet would run made inert, by the rule
    `neutralise_formulas` applies (FORMULA_START gets a leading apostrophe): what a table
    shows, and so what its own "Download as CSV" writes. Other cells are left as they are."""
    risky = re.compile(FORMULA_START)
    return frame.map(lambda v: f"'{v}" if isinstance(v, str) and risky.match(v) else v)


def _frame(rows: Sequence[Sequence[Any]]) -> pd.DataFrame:
    # Column by column from the row tuples (in SCHEMA order): a dict per row made
    # this the slowest step of exporting a million rows (bench/export.py).
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in SCHEMA]
    arrays = [pa.array(values, type=f.type) for values, f in zip(columns, SCHEMA, strict=True)]
    return pa.Table.from_arrays(arrays, schema=SCHEMA).to_pandas()


def iter_history(
    session: Session, filters: ExecutionFilters, *, actor: Actor, chunk_size: int = CHUNK_SIZE
) -> Iterator[pd.DataFrame]:
    """The history as DataFrames of at most `chunk_size` rows, from a server-side cursor."""
    for rows in exports.history_batches(session, filters, actor=actor, batch_size=chunk_size):
        yield _frame(rows)


def history_frame(
    session: Session, filters: ExecutionFilters | None = None, *, actor: Actor
) -> pd.DataFrame:
    """The whole filtered history in one DataFrame (for scripts and notebooks)."""
    chunks = list(iter_history(session, filters or ExecutionFilters(), actor=actor))
    if not chunks:
        return SCHEMA.empty_table().to_pandas()
    return pd.concat(chunks, ignore_index=True)


def write_history(
    session: Session,
    filters: ExecutionFilters,
    path: Path | str,
    fmt: Format,
    *,
    actor: Actor,
    chunk_size: int = CHUNK_SIZE,
    progress: Progress | None = None,
) -> int:
    """Write the filtered history to `path` as `fmt`, chunk by chunk; returns the row count."""
    if fmt not in FORMATS:
        raise ValidationFailed.single("format", f"use one of {', '.join(FORMATS)}")
    path = Path(path)
    total = count_executions(session, filters, actor=actor)
    if fmt == "xlsx" and total > EXCEL_MAX_ROWS:
        raise ValidationFailed.single(
            "format",
            f"{total:,} rows do not fit in one Excel sheet ({EXCEL_MAX_ROWS:,} at most): "
            "narrow the filters or export CSV / Parquet",
        )
    writer = _WRITERS[fmt](path)
    written = 0
    try:
        for chunk in iter_history(session, filters, actor=actor, chunk_size=chunk_size):
            writer.write(chunk)
            written += len(chunk)
            if progress is not None:
                progress(written, max(total, written))
    finally:
        writer.close()
    if progress is not None and written == 0:
        progress(0, 0)
    return written


class _CsvWriter:
    """Arrow's CSV writer: pandas' to_csv formats each value in Python, which made
    most of the time of a million-row export (bench/export.py)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.writer: pa_csv.CSVWriter | None = None

    def write(self, chunk: pd.DataFrame) -> None:
        table = neutralise_formulas(
            pa.Table.from_pandas(chunk, schema=SCHEMA, preserve_index=False)
        )
        for name in TIME_COLUMNS:
            # The text pandas writes for UTC times, without a time-zone lookup per value.
            wall = table[name].cast(pa.timestamp("us")).cast(pa.string())
            text = pc.binary_join_element_wise(wall, "+00:00", "")
            table = table.set_column(table.schema.get_field_index(name), name, text)
        if self.writer is None:
            self.writer = pa_csv.CSVWriter(self.path, table.schema)
        self.writer.write_table(table)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        else:  # nothing written: still give the reader the columns
            pd.DataFrame(columns=list(COLUMNS)).to_csv(self.path, index=False)


class _ParquetWriter:
    def __init__(self, path: Path) -> None:
        self.writer = pq.ParquetWriter(path, SCHEMA)

    def write(self, chunk: pd.DataFrame) -> None:
        self.writer.write_table(pa.Table.from_pandas(chunk, schema=SCHEMA, preserve_index=False))

    def close(self) -> None:
        self.writer.close()


# Excel has no time zones: its times are UTC wall times, and their headers say so.
EXCEL_HEADER = tuple(f"{c} (UTC)" if c in TIME_COLUMNS else c for c in COLUMNS)
# Each column wide enough for what it holds (a time "2026-12-07 09:30:00", an id's 36
# characters); an error is cut to its column on screen and whole in its cell.
EXCEL_WIDTHS = {
    **dict.fromkeys(TIME_COLUMNS, 21),
    **dict.fromkeys(("execution_id", "automation_id", "schedule_id"), 38),
    "automation": 30,
    "trigger": 11,
    "status": 11,
    "error": 60,
}
EXCEL_TIME_FORMAT = "yyyy-mm-dd hh:mm:ss"


class _ExcelWriter:
    """openpyxl's write-only mode streams rows to disk instead of building the sheet in memory."""

    def __init__(self, path: Path) -> None:
        from openpyxl import Workbook
        from openpyxl.utils import get_column_letter

        self.path = path
        self.book = Workbook(write_only=True)
        self.sheet = self.book.create_sheet("executions")
        for n, name in enumerate(COLUMNS, start=1):
            width = max(EXCEL_WIDTHS.get(name, 0), len(EXCEL_HEADER[n - 1]) + 2)
            self.sheet.column_dimensions[get_column_letter(n)].width = width
        self.sheet.freeze_panes = "A2"
        self.sheet.append(list(EXCEL_HEADER))
        self.times = {COLUMNS.index(c) for c in TIME_COLUMNS}

    def write(self, chunk: pd.DataFrame) -> None:
        table = neutralise_formulas(
            pa.Table.from_pandas(chunk, schema=SCHEMA, preserve_index=False)
        )
        chunk = table.to_pandas()
        # Excel has no time zones: write UTC wall times (the headers say so).
        for column in TIME_COLUMNS:
            chunk[column] = chunk[column].dt.tz_localize(None)
        for row in chunk.astype(object).where(chunk.notna(), None).itertuples(index=False):
            self.sheet.append([self._cell(n, value) for n, value in enumerate(row)])

    def _cell(self, n: int, value: Any) -> Any:
        if n not in self.times or value is None:
            return value
        from openpyxl.cell import WriteOnlyCell

        cell = WriteOnlyCell(self.sheet, value=value)
        cell.number_format = EXCEL_TIME_FORMAT
        return cell

    def close(self) -> None:
        self.book.save(self.path)


_WRITERS: dict[str, Callable[[Path], Any]] = {
    "csv": _CsvWriter,
    "parquet": _ParquetWriter,
    "xlsx": _ExcelWriter,
}


# --- the audit log ------------------------------------------------------------------------

AUDIT_SCHEMA = pa.schema(
    [
        ("at", _TIME),
        ("actor", pa.string()),
        ("action", pa.string()),
        ("target_type", pa.string()),
        ("target_id", pa.string()),
        ("details", pa.string()),
    ]
)


def audit_csv(rows: list[AuditRow]) -> bytes:
    """The rows as CSV, with names people typed unable to act as spreadsheet formulas."""
    table = pa.Table.from_pylist(
        [
            {
                "at": r.at,
                "actor": r.actor,
                "action": r.action,
                "target_type": r.target_type,
                "target_id": str(r.target_id),
                "details": json.dumps(r.details, ensure_ascii=False, sort_keys=True),
            }
            for r in rows
        ],
        schema=AUDIT_SCHEMA,
    )
    sink = pa.BufferOutputStream()
    pa_csv.write_csv(neutralise_formulas(table, ("actor", "details")), sink)
    return bytes(sink.getvalue().to_pybytes())
