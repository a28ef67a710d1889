"""Execution history as a DataFrame, CSV, Parquet or Excel file, built in chunks.

Rows stream from a server-side cursor `chunk_size` at a time and each chunk is
appended to the file, so exporting a million executions holds one chunk in
memory, never the whole history. Rows and their order are exactly those of
`db.queries.list_executions` for the same filters.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, Literal

import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
from sqlalchemy import Float, Text, cast, func, select
from sqlalchemy.orm import Session

from core.access import Actor
from core.errors import ValidationFailed
from db.models import Automation, Execution
from db.queries import (
    HISTORY_ORDER,
    AnySelect,
    ExecutionFilters,
    count_executions,
    filter_executions,
    scope,
)

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
SCHEMA = pa.schema(
    [
        ("execution_id", pa.string()),
        ("automation_id", pa.string()),
        ("automation", pa.string()),
        ("schedule_id", pa.string()),
        ("trigger", pa.string()),
        ("status", pa.string()),
        ("scheduled_for", _TIME),
        ("queued_at", _TIME),
        ("started_at", _TIME),
        ("finished_at", _TIME),
        ("duration_s", pa.float64()),
        ("attempt", pa.int64()),
        ("current_step", pa.int64()),
        ("total_steps", pa.int64()),
        ("error", pa.string()),
    ]
)
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


def history_select(workspace_id: uuid.UUID, filters: ExecutionFilters) -> AnySelect:
    """The export's rows: one flat line per execution of one workspace, newest first."""
    stmt = select(
        cast(Execution.id, Text).label("execution_id"),
        cast(Execution.automation_id, Text).label("automation_id"),
        Automation.name.label("automation"),
        cast(Execution.schedule_id, Text).label("schedule_id"),
        Execution.trigger,
        Execution.status,
        Execution.scheduled_for,
        Execution.queued_at,
        Execution.started_at,
        Execution.finished_at,
        cast(func.extract("epoch", Execution.finished_at - Execution.started_at), Float).label(
            "duration_s"
        ),
        Execution.attempt,
        Execution.current_step,
        Execution.total_steps,
        Execution.error,
    ).join(Automation, Automation.id == Execution.automation_id)
    return filter_executions(stmt, workspace_id, filters).order_by(*HISTORY_ORDER)


def _frame(rows: list[Any]) -> pd.DataFrame:
    # Column by column from the row tuples (in SCHEMA order): a dict per row made
    # this the slowest step of exporting a million rows (bench/export.py).
    columns = list(zip(*rows, strict=True)) if rows else [() for _ in SCHEMA]
    arrays = [pa.array(values, type=f.type) for values, f in zip(columns, SCHEMA, strict=True)]
    return pa.Table.from_arrays(arrays, schema=SCHEMA).to_pandas()


def iter_history(
    session: Session, filters: ExecutionFilters, *, actor: Actor, chunk_size: int = CHUNK_SIZE
) -> Iterator[pd.DataFrame]:
    """The history as DataFrames of at most `chunk_size` rows, from a server-side cursor."""
    workspace_id = scope(session, actor)
    # Core rows, not the ORM's: no per-row ORM bookkeeping on a million rows.
    result = session.connection().execute(
        history_select(workspace_id, filters).execution_options(
            yield_per=chunk_size, stream_results=True
        )
    )
    for rows in result.partitions(chunk_size):
        yield _frame(list(rows))


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


class _ExcelWriter:
    """openpyxl's write-only mode streams rows to disk instead of building the sheet in memory."""

    def __init__(self, path: Path) -> None:
        from openpyxl import Workbook

        self.path = path
        self.book = Workbook(write_only=True)
        self.sheet = self.book.create_sheet("executions")
        self.sheet.append(list(COLUMNS))

    def write(self, chunk: pd.DataFrame) -> None:
        table = neutralise_formulas(
            pa.Table.from_pandas(chunk, schema=SCHEMA, preserve_index=False)
        )
        chunk = table.to_pandas()
        # Excel has no time zones: write UTC wall times (the column names say so).
        for column in ("scheduled_for", "queued_at", "started_at", "finished_at"):
            chunk[column] = chunk[column].dt.tz_localize(None)
        for row in chunk.astype(object).where(chunk.notna(), None).itertuples(index=False):
            self.sheet.append(list(row))

    def close(self) -> None:
        self.book.save(self.path)


_WRITERS: dict[str, Callable[[Path], Any]] = {
    "csv": _CsvWriter,
    "parquet": _ParquetWriter,
    "xlsx": _ExcelWriter,
}
