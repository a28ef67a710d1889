"""Audit: who did what to which automation, schedule or execution, and when."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pandas as pd
import streamlit as st

from core.vocabulary import AuditAction, AuditTarget
from dashboard import ui
from db.audit import AuditFilters, AuditRow, list_audit, target_names
from service.exports import audit_csv

LIMIT = 500
RANGES = {"24h": timedelta(days=1), "7d": timedelta(days=7), "30d": timedelta(days=30)}

st.title("Audit")
st.caption("Every change made through the dashboard or the command line, newest first.")
cols = st.columns([2, 2, 2, 1])
cols[0].text_input("Who", key="au_actor", placeholder="any actor")
cols[1].multiselect("What", list(AuditAction), key="au_actions", placeholder="any action")
cols[2].multiselect("On", list(AuditTarget), key="au_targets", placeholder="anything")
cols[3].selectbox(
    "When", ["", *RANGES], key="au_range", format_func=lambda r: f"last {r}" if r else "any time"
)
s = st.session_state
since = datetime.now(UTC) - RANGES[s["au_range"]] if s.get("au_range") else None
filters = AuditFilters(
    actor=s.get("au_actor") or "",
    actions=tuple(s.get("au_actions") or ()),
    target_types=tuple(s.get("au_targets") or ()),
    since=since,
)
rows = ui.read(list_audit, filters, limit=LIMIT)
if not rows:
    ui.empty_state("Nothing recorded for these filters.", "Widen them, or change something first.")
    st.stop()
names = ui.read(target_names, rows)
# Where each named object is seen: a schedule and a run have their own page, an
# automation its runs.
PAGES = {
    AuditTarget.SCHEDULE: "schedule?id={}",
    AuditTarget.EXECUTION: "execution?id={}",
    AuditTarget.AUTOMATION: "executions?automation={}",
}


def link(row: AuditRow) -> str | None:
    page = PAGES.get(AuditTarget(row.target_type)) if row.target_id in names else None
    return page.format(row.target_id) if page else None


ui.dataframe(
    pd.DataFrame(
        {
            "When": [ui.fmt_time(r.at) for r in rows],
            "Who": [r.actor for r in rows],
            "What": [r.action for r in rows],
            "On": [r.target_type for r in rows],
            "Name": [names.get(r.target_id) or str(r.details.get("name") or "") for r in rows],
            "Open": [link(r) for r in rows],
            "Details": [json.dumps(r.details, ensure_ascii=False, sort_keys=True) for r in rows],
            "Id": [str(r.target_id) for r in rows],
        }
    ),
    hide_index=True,
    width="stretch",
    column_config={"Open": st.column_config.LinkColumn(display_text="open", width=60)},
)
st.caption(f"{len(rows)} row(s){' (the newest ' + str(LIMIT) + ')' if len(rows) == LIMIT else ''}.")
st.download_button(
    "Download CSV",
    data=audit_csv(rows),
    file_name=f"stepwise-audit-{datetime.now(UTC):%Y%m%d-%H%M%S}.csv",
    mime="text/csv",
    icon=":material/download:",
    key="au_download",
)
