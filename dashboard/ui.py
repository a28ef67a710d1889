"""Small helpers shared by the pages: reads and writes, times, badges.

Pages stay thin: every thing shown is one call to a `db` read (through `read`, which
passes the acting person, in its own short transaction) and every change one call to
`service` (through `write`, or directly), with `actor()`. Which controls a page draws
follows the person's role (`can`); the service checks the role again on every write,
so a control a viewer never sees is refused all the same if forged.
"""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import altair as alt
import pandas as pd
import streamlit as st
from streamlit.errors import StreamlitPageNotFoundError

from core.access import LOCAL_ADMIN, Actor, Login
from core.settings import get_settings
from core.vocabulary import ExecutionStatus, Permission, ScheduleState
from db import figures, queries
from db.workspaces import Place
from service import exports, unit, workspaces

LOCAL_ACTOR = LOCAL_ADMIN  # no login configured: the dashboard is this machine's only
ACTOR = "ui_actor"  # session state: who acts, where, as resolved at the start of this run
WORKSPACE = "ui_workspace"  # session state: the workspace chosen in the sidebar
PENDING_WORKSPACE = "ui_pending_workspace"  # switch to it on the next run
BOOTSTRAPPED = "ui_bootstrapped"
T = TypeVar("T")

# The one status palette: tables (`status_column`), badges (`badge_md`), the execution page and
# every chart (`status_scale`) take their colours from here, so a status looks the same
# everywhere. Markdown badges only know named colours: each name matches its hex.
STATUS_COLORS: dict[str, str] = {
    ExecutionStatus.SUCCEEDED: "#2e9d5b",  # green
    ExecutionStatus.FAILED: "#d64545",  # red
    ExecutionStatus.RUNNING: "#7c5cd6",  # violet
    ExecutionStatus.WAITING: "#e8590c",  # orange: on the agent, a person or the clock
    ExecutionStatus.QUEUED: "#3f7fd9",  # blue
    ExecutionStatus.SKIPPED: "#a0a7b4",  # light gray
    ExecutionStatus.CANCELLED: "#6b7280",  # gray
}
STATUS_COLOR_NAMES: dict[str, str] = {
    ExecutionStatus.SUCCEEDED: "green",
    ExecutionStatus.FAILED: "red",
    ExecutionStatus.RUNNING: "violet",
    ExecutionStatus.WAITING: "orange",
    ExecutionStatus.QUEUED: "blue",
    ExecutionStatus.SKIPPED: "gray",
    ExecutionStatus.CANCELLED: "gray",
    ScheduleState.ACTIVE: "green",
    ScheduleState.PAUSED: "orange",
    ScheduleState.COMPLETED: "gray",
}
BACKOFF = "backoff"  # the wait between two attempts of a step, in the run waterfall
BACKOFF_COLOR = "#e0a526"  # amber
# Success rates: green from RATE_GOOD up, amber from RATE_FAIR, red below.
RATE_GOOD = 0.95
RATE_FAIR = 0.80
RATE_COLORS = {"good": "#2e9d5b", "fair": "#e0a526", "poor": "#d64545", "none": "#a0a7b4"}
EXECUTION_PAGE = "views/execution.py"  # an execution's page (`/execution?id=<execution id>`)
SCHEDULE_PAGE = "views/schedule.py"  # a schedule's page (`/schedule?id=<schedule id>`)


def dataframe(data: pd.DataFrame | dict[str, Any], **kwargs: Any) -> Any:
    """`st.dataframe(data, **kwargs)` with every text cell a spreadsheet would run made inert
    (`service.exports.inert_frame`, as the Export page writes it): a table's own "Download
    as CSV" writes what it shows, and a name like =HYPERLINK(...) must not run there."""
    frame = data if isinstance(data, pd.DataFrame) else pd.DataFrame(data)
    return st.dataframe(exports.inert_frame(frame), **kwargs)


def status_column(label: str = "Status", **kwargs: Any) -> Any:
    """A table column showing each cell's status (`status_cell`) as a pill in its colour."""
    return st.column_config.MultiselectColumn(
        label, options=list(STATUS_COLORS), color=list(STATUS_COLORS.values()), **kwargs
    )


def status_cell(status: str | None) -> list[str]:
    """A status as the cell value of a `status_column`."""
    return [status] if status else []


def rate_band(rate: float | None) -> str:
    """Which of RATE_COLORS a success rate is shown in."""
    if rate is None:
        return "none"
    return "good" if rate >= RATE_GOOD else "fair" if rate >= RATE_FAIR else "poor"


def rate_column(label: str, rates: list[float | None], **kwargs: Any) -> Any:
    """A table column of success rates (cells from `rate_cell`), each coloured by band."""
    shown = sorted({fmt_rate(r) for r in rates})
    colors = [RATE_COLORS[rate_band(_rate_of(r, rates))] for r in shown]
    return st.column_config.MultiselectColumn(label, options=shown, color=colors, **kwargs)


def _rate_of(shown: str, rates: list[float | None]) -> float | None:
    return next((r for r in rates if fmt_rate(r) == shown), None)


def rate_cell(rate: float | None) -> list[str]:
    return [fmt_rate(rate)]


def status_scale(*, with_backoff: bool = False) -> alt.Scale:
    """The palette as an Altair colour scale (legends list the statuses in this order)."""
    domain = [*STATUS_COLORS, *([BACKOFF] if with_backoff else [])]
    colors = [*STATUS_COLORS.values(), *([BACKOFF_COLOR] if with_backoff else [])]
    return alt.Scale(domain=domain, range=colors)


def page_link(page: str, label: str, **kwargs: Any) -> None:
    """`st.page_link` to another page of app.py's navigation. A page run on its own (as
    AppTest runs one) has no navigation to link into: it then shows no link."""
    with contextlib.suppress(StreamlitPageNotFoundError):
        st.page_link(page, label=label, **kwargs)


def execution_link(execution_id: uuid.UUID | str, label: str | None = None) -> None:
    """A link to an execution's page (its own URL: /execution?id=<execution id>)."""
    page_link(
        EXECUTION_PAGE,
        label or f"Execution {execution_id}",
        icon=":material/open_in_new:",
        query_params={"id": str(execution_id)},
    )


def open_execution(execution_id: uuid.UUID | str) -> None:
    """Go to an execution's page (a click on a row that lists it)."""
    st.switch_page(EXECUTION_PAGE, query_params={"id": str(execution_id)})


def open_schedule(schedule_id: uuid.UUID | str) -> None:
    """Go to a schedule's page (a click on its row in Schedules)."""
    st.switch_page(SCHEDULE_PAGE, query_params={"id": str(schedule_id)})


LOGIN = "ui_login"  # session state: the member this login acts as, once found


def person() -> str | None:
    """Who is here: the member the logged-in identity acts as (None: no member yet), or
    the local admin when no login is configured."""
    settings = get_settings()
    if not settings.login_required:
        return LOCAL_ACTOR
    if not st.user.is_logged_in:
        return None
    login = Login.from_claims(
        st.user.to_dict(),
        issuer=settings.oidc_issuer.rstrip("/"),
        email_always_verified=settings.oidc_email_always_verified,
    )
    known = st.session_state.get(LOGIN)
    if known is not None and known[0] == (login.issuer, login.subject):
        return str(known[1])
    # The configuration's admins are made so once per browser session.
    admins = None if st.session_state.get(BOOTSTRAPPED) else settings.admin_emails()
    name = workspaces.sign_in(login, admins=admins)
    st.session_state[BOOTSTRAPPED] = True
    if name is not None:
        st.session_state[LOGIN] = ((login.issuer, login.subject), name)
    return name


def login_label() -> str:
    """The logged-in account as its provider names it (for "has no access")."""
    return str(st.user.get("email") or st.user.get("sub") or "This account")


def places() -> list[Place]:
    """The workspaces this person is a member of (in local mode the local admin is made
    admin of the default workspace once per browser session)."""
    name = person()
    if name is None:
        return []
    local = not get_settings().login_required and not st.session_state.get(BOOTSTRAPPED)
    admins = {LOCAL_ACTOR} if local else None
    found = workspaces.places(name, admins=admins)
    st.session_state[BOOTSTRAPPED] = True
    return found


def identify() -> Actor | None:
    """The person acting in the workspace chosen in the sidebar (their first by default),
    read afresh; None when they belong to no workspace."""
    mine = places()
    wanted = str(st.session_state.get(WORKSPACE) or "")
    chosen = next((p for p in mine if str(p.workspace_id) == wanted), mine[0] if mine else None)
    name = person()
    acting = None if chosen is None or name is None else chosen.actor(name)
    st.session_state[ACTOR] = acting
    return acting


def actor() -> Actor:
    """Who is acting and where (resolved by the entry script each run; by the page itself
    when it runs alone, as in tests). A person in no workspace sees nothing further."""
    acting = st.session_state.get(ACTOR) or identify()
    if acting is None:
        st.error(f"{text(person() or login_label())} has no access to this Stepwise.")
        st.stop()
    assert isinstance(acting, Actor)
    return acting


def can(permission: Permission) -> bool:
    """Whether to draw controls that need `permission` (the db layer checks again)."""
    return actor().can(permission)


def read(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """`fn(session, *args, actor=<the acting person>, **kwargs)` in its own short transaction."""
    return unit.read(fn, *args, actor=actor(), **kwargs)


def read_deployment(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A read about the deployment, not a workspace (the scheduler's last tick)."""
    return unit.read(fn, *args, **kwargs)


def write(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """A `service` write, `fn(*args, **kwargs)` (it owns its transaction); cached reads
    are dropped afterwards."""
    result = fn(*args, **kwargs)
    st.cache_data.clear()
    return result


def uuid_or_none(value: object) -> uuid.UUID | None:
    """An id from a link or a widget, or None when it is not one (never a traceback)."""
    try:
        return uuid.UUID(str(value))
    except ValueError:
        return None


def viewer_timezone() -> str:
    """The browser's zone (Streamlit reports it), UTC when unknown."""
    zone = st.context.timezone
    try:
        ZoneInfo(zone or "UTC")
    except (KeyError, ValueError):
        return "UTC"
    return zone or "UTC"


def fmt_time(value: datetime | None, zone: str | None = None) -> str:
    if value is None:
        return "—"
    try:
        local = value.astimezone(ZoneInfo(zone or viewer_timezone()))
    except (KeyError, ValueError):
        local = value
    return local.strftime("%Y-%m-%d %H:%M:%S %Z")


def fmt_short(value: datetime | None, zone: str | None = None) -> str:
    """A time for a narrow table column: "Nov 27, 09:00 CET"."""
    if value is None:
        return "—"
    try:
        local = value.astimezone(ZoneInfo(zone or viewer_timezone()))
    except (KeyError, ValueError):
        local = value
    return local.strftime("%b %d, %H:%M %Z")


def fmt_column_time(value: datetime, zone: str | None = None) -> str:
    """A time for a chart's column: "12-07 09:00:05" in the viewer's zone."""
    try:
        local = value.astimezone(ZoneInfo(zone or viewer_timezone()))
    except (KeyError, ValueError):
        local = value
    return local.strftime("%m-%d %H:%M:%S")


def fmt_ago(value: datetime | None, now: datetime) -> str:
    if value is None:
        return "never"
    seconds = int((now - value).total_seconds())
    if seconds < 0:
        return f"in {fmt_duration(-seconds)}"
    return f"{fmt_duration(seconds)} ago"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes} min"


def fmt_rate(rate: float | None) -> str:
    return "—" if rate is None else f"{rate:.0%}"


# Every ASCII punctuation mark can be backslash-escaped in Markdown; these are the ones
# Streamlit's Markdown, its directives (:red[..], :material/..:) and LaTeX ($) use.
_MARKDOWN = re.compile(r"([\\`*_{}\[\]()<>#+\-.!|~:$&=@/\"'])")
# GFM turns bare addresses into links after escapes are read (http://x, www.x, a@b.c):
# an invisible word joiner inside each trigger keeps them text, looking the same.
_AUTOLINK = re.compile(r"(?<=\\:)(?=\\/\\/)|(?<=www)(?=\\\.)|(?<=\\@)", re.IGNORECASE)
WORD_JOINER = "\u2060"


def text(value: object) -> str:
    """User- or agent-controlled text for a Markdown context, shown literally.

    Names, agent reason phrases, redirect targets and error texts pass through here
    before `st.markdown`, `st.error`, titles and captions, so that an image, a link,
    an address or a colour in them is shown as the characters typed, never rendered.
    """
    escaped = _AUTOLINK.sub(WORD_JOINER, _MARKDOWN.sub(r"\\\1", str(value)))
    return escaped.replace("\n", "  \n")  # keep line breaks as breaks, not paragraphs


def badge(status: str | None) -> str:
    """The status as table text (tables cannot colour; an em dash when there is none)."""
    return status or "—"


def badge_md(status: str | None) -> str:
    """The status as a coloured Markdown badge."""
    if not status:
        return "—"
    return f":{STATUS_COLOR_NAMES.get(status, 'gray')}-badge[{status}]"


def step_columns(steps: list[queries.StepRunRow]) -> dict[str, list[Any]]:
    """The columns every step timeline shows, one row per attempt of a step (Status is a
    `status_column`)."""
    return {
        "Step": [f"{s.step_number}. {s.step_name}" for s in steps],
        "Attempt": [s.attempt for s in steps],
        "Status": [status_cell(s.status) for s in steps],
        "HTTP": [s.response_status for s in steps],
        "Duration": [
            fmt_duration(None if s.duration_ms is None else s.duration_ms / 1000) for s in steps
        ],
    }


def empty_state(message: str, next_step: str) -> None:
    """What an empty list means and what to do next."""
    st.info(f"**{message}**  \n{next_step}", icon=":material/lightbulb:")


def field_error(errors: dict[str, str], field: str) -> None:
    """Show the validation message for `field` right under its input."""
    if field in errors:
        st.error(text(errors[field]), icon=":material/error:")


def scheduler_warning() -> None:
    """Warn when the scheduler's last dispatch tick is over two minutes old (or never ran)."""
    live = read_deployment(figures.scheduler_liveness)
    if not live.stale():
        return
    if live.dispatch_at is None:
        when = "has never ticked"
    else:
        when = f"last ticked {fmt_ago(live.dispatch_at, live.now)}"
    st.warning(
        f"The scheduler {when}: schedules are not being dispatched. "
        "Start it with `make run` (or the `scheduler` and `dispatcher` Procfile processes).",
        icon=":material/schedule:",
    )
