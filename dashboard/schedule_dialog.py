"""The schedule dialog, for create and edit: timing, zone, bounds, policies, live preview.

The form's values live in `st.session_state` (keys `sd_*`), filled when the
dialog opens, so each rerun can validate the whole form *before* drawing it and
put every message next to its field. Saving writes only a form without errors.
"""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

import pandas as pd
import streamlit as st

from core.errors import StepwiseError, ValidationFailed
from core.limits import MAX_RUN_ALL
from core.schedule import ScheduleDefinition, parse_schedule
from core.settings import get_settings
from core.timing import Timing, describe, preview
from core.vocabulary import MisfirePolicy, OverlapPolicy
from dashboard import forms, ui
from db import queries
from service import schedules

STATE = "schedule_dialog"  # {"id": schedule id or None}; the dialog is open while set
ROW_PX = 35  # a dataframe row (and its header), for sizing a table to its rows
LIMITS = "sd_limits"  # whether "Limits and policies" is open
MISFIRE_HELP: dict[str, str] = {
    MisfirePolicy.RUN_ONCE: "run once for all missed slots",
    MisfirePolicy.SKIP: "skip missed slots",
    MisfirePolicy.RUN_ALL: f"run every missed slot (at most {MAX_RUN_ALL})",
}
OVERLAP_HELP: dict[str, str] = {
    OverlapPolicy.SKIP: "skip the new run",
    OverlapPolicy.BUFFER_ONE: "keep one waiting run",
    OverlapPolicy.ALLOW: "run concurrently",
}


def open_dialog(schedule: queries.ScheduleRow | None = None, automation_id: Any = None) -> None:
    """Button callback: fill the form (defaults, or the schedule's values) and open the dialog."""
    form = (
        forms.form_of_schedule(schedule)
        if schedule
        else forms.ScheduleForm(timezone=ui.viewer_timezone())
    )
    today = datetime.now(UTC).date()
    values: dict[str, Any] = {
        "sd_automation": str(automation_id or (schedule.automation_id if schedule else "")),
        "sd_timing": form.timing,
        "sd_cron": form.cron_expr or (forms.cron_of(form) or ""),
        "sd_interval": form.interval_s,
        "sd_run_date": (form.run_at or (today + timedelta(days=1), time(9)))[0],
        "sd_run_time": (form.run_at or (today, time(9)))[1],
        "sd_tz": form.timezone,
        "sd_tz_other": "",
        "sd_has_start": form.start is not None,
        "sd_start_date": (form.start or (today, time(0)))[0],
        "sd_start_time": (form.start or (today, time(0)))[1],
        "sd_has_end": form.end is not None,
        "sd_end_date": (form.end or (today + timedelta(days=30), time(0)))[0],
        "sd_end_time": (form.end or (today, time(0)))[1],
        "sd_max_runs": form.max_runs,
        "sd_misfire": form.misfire_policy,
        "sd_catchup": form.catchup_window_min,
        "sd_overlap": form.overlap_policy,
        "sd_jitter": form.jitter_s,
        "sd_enabled": form.enabled,
        "sd_input": form.input_text,
    }
    st.session_state.update(values)
    st.session_state.pop(LIMITS, None)
    st.session_state[STATE] = {"id": str(schedule.id) if schedule else None}


def close_dialog() -> None:
    st.session_state.pop(STATE, None)


def limits_summary(form: forms.ScheduleForm) -> str:
    """What "Limits and policies" holds, in words, for when it is collapsed."""
    parts = [
        f"starts {_wall(form.start)}" if form.start else "starts at once",
        f"ends {_wall(form.end)}" if form.end else "never ends",
        f"at most {form.max_runs} runs" if form.max_runs else "no limit on runs",
        f"missed runs: {MISFIRE_HELP.get(form.misfire_policy, form.misfire_policy)}",
        f"overlap: {OVERLAP_HELP.get(form.overlap_policy, form.overlap_policy)}",
    ]
    if form.jitter_s:
        parts.append(f"up to {form.jitter_s} s jitter")
    return "Limits: " + "; ".join(parts) + "."


def _wall(value: tuple[date, time]) -> str:
    day, clock = value
    return f"{day:%Y-%m-%d} {clock:%H:%M}"


def form_from_state() -> forms.ScheduleForm:
    s = st.session_state

    def pair(flag: str, day: str, clock: str) -> tuple[date, time] | None:
        return (s[day], s[clock]) if s.get(flag, True) and s.get(day) and s.get(clock) else None

    zone = s["sd_tz_other"] if s["sd_tz"] == forms.OTHER_ZONE else s["sd_tz"]
    return forms.ScheduleForm(
        timing=s["sd_timing"],
        cron_expr=s["sd_cron"],
        interval_s=int(s["sd_interval"]),
        run_at=pair("sd_has_run_at", "sd_run_date", "sd_run_time"),
        timezone=zone or "",
        start=pair("sd_has_start", "sd_start_date", "sd_start_time"),
        end=pair("sd_has_end", "sd_end_date", "sd_end_time"),
        max_runs=int(s["sd_max_runs"]),
        misfire_policy=s["sd_misfire"],
        catchup_window_min=int(s["sd_catchup"]),
        overlap_policy=s["sd_overlap"],
        jitter_s=int(s["sd_jitter"]),
        enabled=bool(s["sd_enabled"]),
        input_text=s.get("sd_input", ""),
    )


Checked = tuple[ScheduleDefinition | None, dict[str, str]]


def check(form: forms.ScheduleForm) -> Checked:
    """The parsed schedule, or every field's problem, without touching the database."""
    try:
        data = parse_schedule(
            forms.schedule_input(form), retention_days=get_settings().retention_days
        )
    except ValidationFailed as exc:
        return None, forms.errors_by_field(exc)
    return data, {}


@st.dialog("Schedule", width="large", on_dismiss=close_dialog)
def schedule_dialog() -> None:
    render_form()


def render_form() -> None:
    schedule_id = st.session_state[STATE].get("id")
    now = datetime.now(UTC)
    form = form_from_state()
    data, errors = check(form)
    names = ui.read(queries.automation_names)
    if schedule_id is None:
        st.selectbox(
            "Automation",
            [str(i) for i in names],
            format_func=lambda i: names.get(uuid.UUID(i), i) if i else "—",
            key="sd_automation",
        )
    else:
        edited = ui.uuid_or_none(st.session_state.get("sd_automation"))
        name = names.get(edited, "an archived automation") if edited else "—"
        st.markdown(f"Editing a schedule of **{ui.text(name)}**")
    st.selectbox(
        "When", list(forms.TIMINGS), format_func=forms.TIMINGS.__getitem__, key="sd_timing"
    )
    _timing_inputs(form, errors)
    zones = forms.timezone_options(ui.viewer_timezone())
    if st.session_state["sd_tz"] not in zones:
        st.session_state["sd_tz_other"] = st.session_state["sd_tz"]
        st.session_state["sd_tz"] = forms.OTHER_ZONE
    st.selectbox("Timezone", zones, key="sd_tz", help="Common zones first; type to search all.")
    if st.session_state["sd_tz"] == forms.OTHER_ZONE:
        st.text_input("IANA timezone name", key="sd_tz_other", placeholder="e.g. Asia/Kathmandu")
    ui.field_error(errors, "timezone")
    if data is not None:
        _preview(data, now)
    # Opened for an error inside, it stays open once the error is fixed (the person is
    # still working there); collapsed, its caption says what is set.
    if errors.keys() - {"cron_expr", "timezone", "interval_s", "run_at", "input"}:
        st.session_state[LIMITS] = True
    with st.expander("Limits and policies", key=LIMITS, on_change="rerun"):
        _limits(errors)
    st.caption(limits_summary(form))
    st.text_area(
        "Run input (JSON object, optional)",
        key="sd_input",
        height=100,
        placeholder='{"report": "weekly", "recipients": ["ops@example.com"]}',
        help="Every run of this schedule sends it to the agent with each step, as `input`.",
    )
    ui.field_error(errors, "input")
    st.checkbox("Enabled", key="sd_enabled")
    left, right = st.columns(2)
    if left.button("Save schedule", type="primary", key="sd_save", width="stretch"):
        _save(schedule_id, data, errors)
    if right.button("Cancel", key="sd_cancel", width="stretch"):
        close_dialog()
        st.rerun()


def _timing_inputs(form: forms.ScheduleForm, errors: dict[str, str]) -> None:
    timing = st.session_state["sd_timing"]
    if timing == forms.CUSTOM_CRON:
        st.text_input(
            "Cron expression",
            key="sd_cron",
            placeholder="*/10 9-17 * * 1-5",
            help="minute hour day-of-month month day-of-week, or @hourly / @daily / @weekly",
        )
        ui.field_error(errors, "cron_expr")
    elif timing == forms.INTERVAL:
        st.number_input("Every (seconds)", min_value=1, step=10, key="sd_interval")
        ui.field_error(errors, "interval_s")
    elif timing == forms.ONCE:
        day, clock = st.columns(2)
        day.date_input("Run on", key="sd_run_date")
        clock.time_input("at", key="sd_run_time", step=60)
        ui.field_error(errors, "run_at")
    else:
        st.caption(f"Cron: `{forms.cron_of(form)}`")


def _preview(data: ScheduleDefinition, now: datetime) -> None:
    # A new interval schedule counts from its creation: preview it as if created now.
    timing = data.timing.anchored(now)
    st.info(f"**{describe(timing)}**", icon=":material/event_repeat:")
    if not next_runs(timing, now):
        st.warning("This schedule has no run in the future: it would be completed at once.")


def next_runs(timing: Timing, now: datetime, label: str = "Next runs") -> bool:
    """The next 10 runs of `timing` from `now`, in its zone and the viewer's; False if none."""
    slots = preview(timing, now, 10)
    if not slots:
        return False
    viewer = ui.viewer_timezone()
    table = pd.DataFrame(
        {
            f"{label} ({timing.timezone})": [ui.fmt_time(s, timing.timezone) for s in slots],
            f"Your time ({viewer})": [ui.fmt_time(s, viewer) for s in slots],
        }
    )
    # As tall as its rows: a one-off schedule has one run, not one and nine blank rows.
    ui.dataframe(table, hide_index=True, width="stretch", height=ROW_PX * (len(slots) + 1) + 3)
    return True


def _limits(errors: dict[str, str]) -> None:
    left, right = st.columns(2)
    with left:
        st.checkbox("Start at", key="sd_has_start")
        if st.session_state["sd_has_start"]:
            st.date_input("Start date", key="sd_start_date")
            st.time_input("Start time", key="sd_start_time", step=60)
        ui.field_error(errors, "start_at")
    with right:
        st.checkbox("End at", key="sd_has_end")
        if st.session_state["sd_has_end"]:
            st.date_input("End date", key="sd_end_date")
            st.time_input("End time", key="sd_end_time", step=60)
        ui.field_error(errors, "end_at")
    a, b, c = st.columns(3)
    a.number_input("Max runs (0 = no limit)", min_value=0, step=1, key="sd_max_runs")
    with a:
        ui.field_error(errors, "max_runs")
    b.selectbox(
        "Missed runs (misfire)",
        list(MisfirePolicy),
        format_func=lambda p: f"{p}: {MISFIRE_HELP[p]}",
        key="sd_misfire",
    )
    b.number_input("Catch-up window (minutes)", min_value=0, step=5, key="sd_catchup")
    with b:
        ui.field_error(errors, "catchup_window")
    c.selectbox(
        "If the previous run still runs",
        list(OverlapPolicy),
        format_func=lambda p: f"{p}: {OVERLAP_HELP[p]}",
        key="sd_overlap",
    )
    c.number_input("Jitter (seconds)", min_value=0, step=5, key="sd_jitter")
    with c:
        ui.field_error(errors, "jitter_s")


def _save(schedule_id: str | None, data: ScheduleDefinition | None, errors: dict[str, str]) -> None:
    if data is None or errors:
        st.error("Nothing was saved: fix the fields marked above.", icon=":material/block:")
        return
    try:
        if schedule_id is None:
            automation = st.session_state.get("sd_automation")
            if not automation:
                st.error("Choose an automation first (create one on the Automations page).")
                return
            ui.write(schedules.create, uuid.UUID(automation), data, actor=ui.actor())
            message = "Schedule created."
        else:
            ui.write(schedules.update, uuid.UUID(schedule_id), data, actor=ui.actor())
            message = "Schedule saved."
    except ValidationFailed as exc:
        for field, text in forms.errors_by_field(exc).items():
            st.error(ui.text(f"{forms.FIELD_LABELS.get(field, field)}: {text}"))
        return
    except StepwiseError as exc:
        st.error(ui.text(exc))
        return
    st.session_state["flash"] = message
    close_dialog()
    st.rerun()
