"""Stepwise dashboard: `streamlit run dashboard/app.py` (the Procfile's `web`)."""

import sys
from pathlib import Path

# `streamlit run` puts this folder, not the project root, on sys.path.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import streamlit as st

st.set_page_config(page_title="Stepwise", page_icon=":material/stairs:", layout="wide")
PAGES = Path(__file__).parent / "pages"
page = st.navigation(
    [
        st.Page(PAGES / "overview.py", title="Overview", icon=":material/dashboard:", default=True),
        st.Page(PAGES / "schedules.py", title="Schedules", icon=":material/calendar_month:"),
        st.Page(PAGES / "automations.py", title="Automations", icon=":material/smart_toy:"),
        st.Page(PAGES / "executions.py", title="Executions", icon=":material/history:"),
        st.Page(PAGES / "export.py", title="Export", icon=":material/download:"),
        st.Page(PAGES / "queues.py", title="Queues", icon=":material/inbox:"),
    ]
)
page.run()
