"""An automation's inbound webhook on the Automations page: its URL, and enable, rotate
and disable for editors. The secret is shown once, right after it is made."""

from __future__ import annotations

import uuid

import streamlit as st

from core.errors import StepwiseError
from core.secrets import SIGNATURE_HEADER
from core.settings import get_settings
from dashboard import ui
from db.webhooks import webhook_of
from service import webhooks

WEBHOOK_SECRET_ONCE = "auto_webhook_secret_once"  # a webhook secret to show on the next run, once


def webhook_url(webhook_id: uuid.UUID) -> str:
    """Where the `api` process serves the webhook (behind a proxy: its public address)."""
    settings = get_settings()
    return f"http://{settings.api_address}:{settings.api_listen_port()}/v1/hooks/{webhook_id}"


def webhook_section(automation_id: uuid.UUID, key: str) -> None:
    st.markdown("**Webhook**: other systems start a run by POSTing a JSON object")
    if secret := st.session_state.pop(WEBHOOK_SECRET_ONCE, None):
        st.info(
            f"**Webhook secret**, shown this once: the sender puts it in the "
            f"`{webhooks.SECRET_HEADER}` header, or signs each body with it "
            f"(`{SIGNATURE_HEADER}`, see docs/SECURITY.md).",
            icon=":material/key:",
        )
        st.code(secret, language=None)
    info = ui.read(webhook_of, automation_id)
    try:
        if info is None:
            st.caption("Off: no URL starts this automation.")
            if st.button("Enable webhook", icon=":material/webhook:", key=key + "webhook_on"):
                _show_once(webhooks.enable_webhook(automation_id, actor=ui.actor()).secret)
            return
        st.code(webhook_url(info.id), language=None, wrap_lines=True)
        st.caption("Served by the `api` process; behind a proxy, use its public address.")
        used = ui.fmt_time(info.last_used_at) if info.last_used_at else "never"
        st.caption(
            f"Enabled by {ui.text(info.created_by)} · last call {used} · the body becomes the "
            f"run's input; a repeated `{webhooks.DELIVERY_HEADER}` header starts no second run."
        )
        row = st.container(horizontal=True)
        if row.button("New webhook secret", icon=":material/key:", key=key + "webhook_rotate"):
            _show_once(webhooks.rotate_webhook(automation_id, actor=ui.actor()).secret)
        if row.button("Disable webhook", icon=":material/block:", key=key + "webhook_off"):
            webhooks.disable_webhook(automation_id, actor=ui.actor())
            st.session_state["flash"] = "Webhook disabled: its URL answers 404 from now on."
            st.rerun()
    except StepwiseError as exc:
        st.error(ui.text(exc))


def _show_once(secret: str) -> None:
    st.session_state[WEBHOOK_SECRET_ONCE] = secret
    st.rerun()
