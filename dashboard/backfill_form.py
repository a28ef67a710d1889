"""The backfill form of a schedule's page: a range in the schedule's zone, a preview of the
slots it holds (and those that already have a run), then one confirmation."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo

import streamlit as st

from core.errors import StepwiseError, ValidationFailed
from core.limits import MAX_BACKFILL_SLOTS
from dashboard import ui
from db import queries
from service import schedules


def _instant(day: date, clock: time, zone: str) -> datetime:
    return datetime.combine(day, clock, tzinfo=ZoneInfo(zone))


def render(row: queries.ScheduleRow) -> None:
    st.subheader("Backfill")
    st.caption(
        f"Run the slots of a past range that have no run yet (at most {MAX_BACKFILL_SLOTS}); "
        "a slot that already has one is never run twice."
    )
    today = datetime.now(UTC).astimezone(ZoneInfo(row.timezone)).date()
    a, b, c, d = st.columns([3, 2, 3, 2])
    start_day = a.date_input(
        f"From ({row.timezone})", value=today - timedelta(days=1), key="bf_from_date"
    )
    start_clock = b.time_input("at", value=time(0), key="bf_from_time", step=60)
    end_day = c.date_input(f"To, not included ({row.timezone})", value=today, key="bf_to_date")
    end_clock = d.time_input("at ", value=time(0), key="bf_to_time", step=60)
    start = _instant(start_day, start_clock, row.timezone)
    end = _instant(end_day, end_clock, row.timezone)
    try:
        seen = schedules.preview_backfill(row.id, start, end, actor=ui.actor())
    except ValidationFailed as exc:
        for error in exc.errors:
            # "From must be …": the field as the form labels it, not as the code names it.
            st.error(
                ui.text(f"{error.field.capitalize()} {error.message}"), icon=":material/error:"
            )
        return
    new = max(seen.slots - seen.present, 0)
    if seen.slots > MAX_BACKFILL_SLOTS:
        st.error(
            f"This range holds {seen.slots} slots; a backfill makes at most "
            f"{MAX_BACKFILL_SLOTS} runs: choose a shorter range.",
            icon=":material/error:",
        )
        return
    st.info(
        f"This range holds **{seen.slots}** slot(s); {seen.present} already have a run, "
        f"so **{new}** run(s) will be made.",
        icon=":material/history:",
    )
    if st.button(
        f"Backfill {new} run(s)",
        icon=":material/fast_rewind:",
        key="bf_confirm",
        disabled=new == 0,
        type="primary",
    ):
        try:
            done = schedules.backfill(row.id, start, end, actor=ui.actor())
        except StepwiseError as exc:
            st.error(ui.text(exc))
            return
        st.cache_data.clear()
        st.session_state["sp_flash"] = (
            f"Backfill: {len(done.created)} run(s) queued; "
            f"{done.present} slot(s) already had their run."
        )
        st.rerun()
