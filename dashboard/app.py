"""Stepwise dashboard: `streamlit run dashboard/app.py` (the Procfile's `web`)."""

import sys
from pathlib import Path

# `streamlit run` puts this folder, not the project root, on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st

from core.settings import get_settings
from dashboard import ui

st.set_page_config(page_title="Stepwise", page_icon=":material/stairs:", layout="wide")
settings = get_settings()
# A page served under a name this deployment does not answer to is a DNS rebinding
# attempt (a hostile site whose name now points here): show nothing.
if not settings.web_host_allowed(st.context.headers.get("host")):
    st.error("This dashboard does not answer on this address.")
    st.stop()
if settings.login_required:
    if not st.user.is_logged_in:
        st.title("Stepwise")
        st.button("Log in", type="primary", icon=":material/login:", on_click=st.login)
        st.stop()
    email = str(st.user.get("email") or "")
    if email.lower() not in settings.admin_emails():
        st.error(f"{ui.text(email or 'This account')} has no access to this Stepwise.")
        st.button("Log out", on_click=st.logout)
        st.stop()
    with st.sidebar:
        st.caption(f"Signed in as {ui.text(email)}")
        st.button("Log out", icon=":material/logout:", on_click=st.logout, key="logout")
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
    ]
)
page.run()
