"""The Workspace page's notification channels and deliveries, and the Automations form's
choice of channels: thin UI over `service.channels` and the `db.channels` / `db.notices`
reads.

A channel's URL is typed once into a password field and never shown again: lists show
its redacted form (scheme and host). Delivery errors are stored scrubbed and shown as text.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pandas as pd
import streamlit as st

from core.errors import StepwiseError
from core.limits import MAX_FAILURE_THRESHOLD
from core.vocabulary import Permission
from dashboard import ui
from db.channels import ChannelInfo, Notifications, get_notifications, list_channels
from db.notices import list_deliveries
from service import channels

Act = Callable[..., None]


def channels_section(act: Act) -> None:
    """Channels (admins add, delete and test them) and the newest deliveries."""
    st.subheader("Notification channels")
    st.caption(
        "Where failure, recovery and schedule notices go: an apprise URL each "
        "(json://, mailto://, slack://, …). The URL is sealed at rest and never shown again."
    )
    held = ui.read(list_channels)
    if held:
        ui.dataframe(
            pd.DataFrame(
                {
                    "Name": [c.name for c in held],
                    "Target": [c.redacted for c in held],
                    "Added by": [c.created_by for c in held],
                    "Added": [ui.fmt_time(c.created_at) for c in held],
                }
            ),
            hide_index=True,
            width="stretch",
        )
    if ui.can(Permission.MANAGE_CHANNELS):
        _manage(held, act)
    _deliveries()


def _manage(held: list[ChannelInfo], act: Act) -> None:
    # A form: what is typed is sent with the button, whatever focus did before (a password
    # field left with Tab was read as empty).
    with st.form("ws_channel_form", border=False):
        a, b, c = st.columns([2, 3, 1], vertical_alignment="bottom")
        name = a.text_input("Channel name", key="ws_channel_name", placeholder="on-call mail")
        url = b.text_input(
            "Apprise URL",
            key="ws_channel_url",
            type="password",
            placeholder="json://hooks.example.com/…",
        )
        adding = c.form_submit_button("Add channel", key="ws_channel_add", width="stretch")
    if adding:
        act(
            channels.add_channel,
            name,
            url,
            done=f"Channel {ui.text(name)} added.",
            clear=("ws_channel_name", "ws_channel_url"),
        )
    if not held:
        return
    by_label = {f"{c.name} ({c.redacted})": c.id for c in held}
    d, e, f = st.columns([4, 1, 1])
    chosen = d.selectbox("Channel", list(by_label), key="ws_channel_chosen")
    if e.button("Send test", key="ws_channel_test", width="stretch") and chosen:
        _send_test(by_label[chosen], chosen)
    if f.button("Delete", key="ws_channel_delete", width="stretch") and chosen:
        act(channels.delete_channel, by_label[chosen], done=f"Channel {ui.text(chosen)} deleted.")


def _send_test(channel_id: uuid.UUID, label: str) -> None:
    try:
        outcome = channels.send_test(channel_id, actor=ui.actor())
    except StepwiseError as exc:
        st.error(ui.text(exc))
        return
    if outcome.ok:
        st.success(f"Test sent to {ui.text(label)}.")
    else:
        st.error(f"Test to {ui.text(label)} failed: {ui.text(outcome.error)}")


def _deliveries() -> None:
    rows = ui.read(list_deliveries)
    st.markdown("**Deliveries**")
    if not rows:
        st.caption("No notification sent yet.")
        return
    ui.dataframe(
        pd.DataFrame(
            {
                "When": [ui.fmt_time(r.created_at) for r in rows],
                "Channel": [r.channel_name for r in rows],
                "Automation": [r.automation or "" for r in rows],
                "Notice": [r.kind for r in rows],
                "Outcome": [r.status for r in rows],
                "Error": [r.error or "" for r in rows],
            }
        ),
        hide_index=True,
        width="stretch",
    )


def automation_notifications(automation_id: uuid.UUID) -> None:
    """The Automations form's part: which channels, after how many consecutive failures."""
    held = ui.read(list_channels)
    current: Notifications = ui.read(get_notifications, automation_id)
    st.markdown("**Notifications**")
    if not held:
        st.caption("No channel yet: an admin adds them on the Workspace page.")
        return
    names = {c.id: c.name for c in held}
    locked = not ui.can(Permission.EDIT)
    key = f"notify_{automation_id}"
    a, b, c = st.columns([3, 2, 2], vertical_alignment="bottom")  # the button's words fit
    picked = a.multiselect(
        "Channels",
        list(names),
        default=[i for i in current.channel_ids if i in names],
        format_func=lambda i: names[i],
        key=f"{key}_channels",
        disabled=locked,
    )
    threshold = b.number_input(
        "Notify after N consecutive failed runs",
        min_value=1,
        max_value=MAX_FAILURE_THRESHOLD,
        value=current.failure_threshold,
        key=f"{key}_threshold",
        disabled=locked,
    )
    if not locked and c.button("Save notifications", key=f"{key}_save", width="stretch"):
        try:
            channels.set_notifications(automation_id, picked, int(threshold), actor=ui.actor())
        except StepwiseError as exc:
            st.error(ui.text(exc))
        else:
            st.success("Notifications saved.")
