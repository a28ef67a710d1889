"""The execution page's first address (`/run?id=<execution id>`): it sends the browser on
to `/execution?id=<execution id>`, so that links shared before the rename keep working."""

from __future__ import annotations

import streamlit as st

from dashboard import ui

st.switch_page(ui.EXECUTION_PAGE, query_params=st.query_params.to_dict())
