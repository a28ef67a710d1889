"""Dashboard pages in AppTest: opened as a link opens them, read as a person reads them."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import streamlit as st
from streamlit.testing.v1 import AppTest

from core.access import Actor
from dashboard import ui

VIEWS = Path(__file__).resolve().parent.parent / "dashboard" / "views"
# A page's first run imports the dashboard and reaches the database: generous on a busy machine.
TIMEOUT_S = 60
# The elements whose text a reader sees.
_TEXT = ("markdown", "info", "error", "warning", "success", "caption", "subheader")


def load_view(
    name: str, *, query: Mapping[str, str | list[str]] | None = None, acting: Actor | None = None
) -> AppTest:
    """`dashboard/views/<name>.py`, not yet run: with `query` in its URL, seen by `acting`
    (the local admin if None), and with nothing cached from an earlier page."""
    st.cache_data.clear()
    at = AppTest.from_file(str(VIEWS / f"{name}.py"), default_timeout=TIMEOUT_S)
    for key, value in (query or {}).items():
        at.query_params[key] = value
    if acting is not None:
        at.session_state[ui.ACTOR] = acting
    return at


def open_view(
    name: str, *, query: Mapping[str, str | list[str]] | None = None, acting: Actor | None = None
) -> AppTest:
    """`load_view`, run once; fails the test if the page raised."""
    at = load_view(name, query=query, acting=acting)
    at.run()
    assert not at.exception, at.exception
    return at


def execution_page(execution_id: object, *, acting: Actor | None = None) -> AppTest:
    """An execution's page opened by its link (`/execution?id=<execution_id>`)."""
    return open_view("execution", query={"id": str(execution_id)}, acting=acting)


def schedule_page(schedule_id: object, *, acting: Actor | None = None) -> AppTest:
    """The schedule page opened by its link (`/schedule?id=<schedule_id>`)."""
    return open_view("schedule", query={"id": str(schedule_id)}, acting=acting)


def open_new_schedule() -> AppTest:
    """The Schedules page with its "New schedule" dialog open."""
    at = open_view("schedules")
    next(b for b in at.button if b.label == "New schedule").click().run()
    assert not at.exception, at.exception
    return at


def texts(at: AppTest, *, bold: bool = True) -> str:
    """The page's text as written (Markdown, alerts, captions, headings) with Markdown
    escapes read and invisible word joiners gone; with `bold=False`, as a reader sees it:
    without the page's bold marks (a `**` typed by a person, escaped, stays)."""
    text = "\n".join(str(e.value) for kind in _TEXT for e in getattr(at, kind))
    if not bold:
        text = text.replace("**", "")  # before the escapes are read: `\*\*` is not a mark
    return re.sub(r"\\(.)", r"\1", text).replace(ui.WORD_JOINER, "")
