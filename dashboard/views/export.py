"""Export: the filtered history as CSV, Parquet or Excel, built in chunks with progress."""

from __future__ import annotations

import tempfile
from datetime import UTC, datetime
from pathlib import Path

import streamlit as st

from core.errors import StepwiseError
from dashboard import ui
from dashboard.filters import history_filters, selection
from db import queries
from service import exports

LABELS: dict[exports.Format, str] = {"csv": "CSV", "parquet": "Parquet", "xlsx": "Excel (.xlsx)"}
EXPORT_DIR = Path(tempfile.gettempdir()) / "stepwise-exports"

st.title("Export")
st.caption(
    "Download the execution history for a spreadsheet or a notebook. The same export runs from "
    "scripts: `stepwise export --format parquet --out executions.parquet --status failed`, or "
    "`service.exports.history_frame(session, filters)` in Python. Times in the file are UTC "
    "(the dashboard shows them in your browser's zone): CSV and Parquet carry the zone, Excel "
    "has none, so its time columns say `(UTC)` in their headers."
)
filters = history_filters("exp")
fmt: exports.Format = st.radio(
    "Format", list(LABELS), format_func=LABELS.__getitem__, horizontal=True, key="exp_format"
)
total = ui.read(queries.count_executions, filters)
if total == 0:
    ui.empty_state(
        "No execution matches these filters.",
        "Widen the time range or clear filters; once executions exist they can be exported.",
    )
    st.stop()
st.markdown(f"**{total:,}** execution(s) match.")
sample = ui.read(queries.list_executions, filters, limit=5)
ui.dataframe(
    {
        "Status": [ui.badge(r.status) for r in sample.rows],
        "Automation": [r.automation_name for r in sample.rows],
        "Queued": [ui.fmt_time(r.queued_at) for r in sample.rows],
        "Error": [r.error or "" for r in sample.rows],
    },
    hide_index=True,
    width="stretch",
)
if total > 5:
    st.caption(f"…and {total - 5:,} more (first 5 shown).")

if st.button("Build file", type="primary", key="exp_build"):
    EXPORT_DIR.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    path = EXPORT_DIR / f"stepwise-executions-{stamp}.{fmt}"
    bar = st.progress(0.0, text="Building…")

    def progress(done: int, of: int) -> None:
        bar.progress(done / of if of else 1.0, text=f"{done:,} of {of:,} rows")

    try:
        rows = ui.read(exports.write_history, filters, path, fmt, progress=progress)
    except StepwiseError as exc:
        bar.empty()
        st.error(ui.text(exc))
    else:
        bar.progress(1.0, text=f"{rows:,} rows written")
        st.session_state["exp_file"] = {
            "path": str(path),
            "rows": rows,
            "format": fmt,
            "filters": selection("exp"),
        }

built = st.session_state.get("exp_file")
# A file built for other filters or another format is not what the page now describes
# (compared as chosen: "last 24 hours" is the same choice a minute later).
if built and (built["filters"] != selection("exp") or built["format"] != fmt):
    st.session_state.pop("exp_file")
    built = None
if built and Path(built["path"]).exists():
    path = Path(built["path"])
    size_mb = path.stat().st_size / 1e6
    st.download_button(
        f"Download {path.name} ({built['rows']:,} rows, {size_mb:.1f} MB)",
        data=path.read_bytes(),
        file_name=path.name,
        mime=exports.MEDIA_TYPES[built["format"]],
        key="exp_download",
        icon=":material/download:",
    )
