"""Stepwise dashboard: the entry script `dashboard/server.py` serves (the Procfile's `web`)."""

import sys
from pathlib import Path

# `streamlit run` puts this folder, not the project root, on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st

from core.settings import get_settings
from core.vocabulary import Role
from dashboard import ui

# A file of ours, served by this server: an icon name would be fetched from a third party.
FAVICON = Path(__file__).parent / "favicon.png"
st.set_page_config(page_title="Stepwise", page_icon=str(FAVICON), layout="wide")
settings = get_settings()
# A table's toolbar (search, download, full screen) floats above the table's top edge:
# keep that strip free, so it never covers the heading over the table (on a phone too).
st.html(
    '<style>[data-testid="stElementContainer"]:has([data-testid="stDataFrame"])'
    "{margin-top:1.6rem}</style>"
)
# A page served under a name this deployment does not answer to is a DNS rebinding
# attempt (a hostile site whose name now points here): show nothing.
if not settings.web_host_allowed(st.context.headers.get("host")):
    st.error("This dashboard does not answer on this address.")
    st.stop()
if settings.login_required and not st.user.is_logged_in:
    st.title("Stepwise")
    st.button("Log in", type="primary", icon=":material/login:", on_click=st.login)
    st.stop()
# Who acts, and in which workspace, is read afresh on every run: a person removed
# from a workspace (or demoted) loses it at their next click, not at their next login.
places = ui.places()
if not places:
    st.error(f"{ui.text(ui.person() or ui.login_label())} has no access to this Stepwise.")
    if settings.login_required:
        st.button("Log out", on_click=st.logout)
    st.stop()
if pending := st.session_state.pop(ui.PENDING_WORKSPACE, None):
    st.session_state[ui.WORKSPACE] = pending
with st.sidebar:
    if len(places) > 1:
        by_id = {str(p.workspace_id): p for p in places}
        if st.session_state.get(ui.WORKSPACE) not in by_id:
            st.session_state[ui.WORKSPACE] = next(iter(by_id))
        st.selectbox(
            "Workspace",
            list(by_id),
            format_func=lambda i: f"{by_id[i].name} ({by_id[i].role})",
            key=ui.WORKSPACE,
        )
    acting = ui.identify()
    if settings.login_required:
        st.caption(f"Signed in as {ui.text(ui.person() or ui.login_label())}")
        st.button("Log out", icon=":material/logout:", on_click=st.logout, key="logout")
    if acting is not None and acting.role != Role.ADMIN:
        st.caption(f"Your role here: {acting.role}")
# Not "pages/": Streamlit would serve files there by URL without this entry script.
PAGES = Path(__file__).parent / "views"
page = st.navigation(
    [
        st.Page(PAGES / "overview.py", title="Overview", icon=":material/dashboard:", default=True),
        st.Page(PAGES / "schedules.py", title="Schedules", icon=":material/calendar_month:"),
        st.Page(PAGES / "automations.py", title="Automations", icon=":material/smart_toy:"),
        st.Page(PAGES / "executions.py", title="Executions", icon=":material/history:"),
        st.Page(PAGES / "export.py", title="Export", icon=":material/download:"),
        st.Page(PAGES / "queues.py", title="Queues", icon=":material/inbox:"),
        st.Page(PAGES / "audit.py", title="Audit", icon=":material/policy:"),
        st.Page(PAGES / "workspace.py", title="Workspace", icon=":material/group:"),
        # One execution, by its own URL (/execution?id=<execution id>): reached from any
        # list of executions.
        st.Page(
            PAGES / "execution.py",
            title="Execution",
            icon=":material/receipt_long:",
            url_path="execution",
            visibility="hidden",
        ),
        # Its first URL (/run?id=...), which links already shared still hold.
        st.Page(PAGES / "run.py", title="Execution", url_path="run", visibility="hidden"),
        # One schedule, by its own URL (/schedule?id=<schedule id>): reached from Schedules.
        st.Page(
            PAGES / "schedule.py",
            title="Schedule",
            icon=":material/event_repeat:",
            url_path="schedule",
            visibility="hidden",
        ),
    ]
)
page.run()
