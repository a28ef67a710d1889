"""Workspace: its members and their roles, its secrets (names only), API tokens, notification
channels with their deliveries, and quotas.

Everyone sees who is in; admins add, change and remove members, set, bind (to the
agent origins each may be sent to) and delete secrets (values are write-only) and
change quotas, each change audited (`service`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import pandas as pd
import streamlit as st

from core.errors import StepwiseError
from core.limits import TOKEN_LIFETIMES_DAYS
from core.vocabulary import Permission, Role
from dashboard import notifications, ui
from db.secrets import list_secrets
from db.tokens import list_tokens
from db.workspaces import Quotas, list_members, workspace_quotas
from service import secrets, tokens, workspaces

st.title("Workspace")
if flash := st.session_state.pop("flash", None):
    st.success(flash)
# A secret's value does not stay in the session once saved (nor a typed address).
for key in st.session_state.pop("ws_clear", ()):
    st.session_state[key] = ""
me = ui.actor()
admin = ui.can(Permission.MANAGE_MEMBERS)
here = next((p for p in ui.places() if p.workspace_id == me.workspace_id), None)
st.caption(f"{ui.text(here.name if here else '')} · you are {me.role} here.")


def act(fn: Callable[..., None], *args: object, done: str, clear: tuple[str, ...] = ()) -> None:
    """One admin change (a `service` call), its error shown, or its confirmation on the
    next run."""
    try:
        fn(*args, actor=me)
    except StepwiseError as exc:
        st.error(ui.text(exc))
        return
    st.session_state["flash"] = done
    st.session_state["ws_clear"] = clear
    st.rerun()


st.subheader("Members")
members = ui.read(list_members)
ui.dataframe(
    pd.DataFrame({"Member": [m.subject for m in members], "Role": [m.role for m in members]}),
    hide_index=True,
    width="stretch",
)
if admin:
    a, b, c = st.columns([3, 1, 1])
    email = a.text_input("E-mail", key="ws_member", placeholder="person@example.com")
    role = b.selectbox("Role", list(Role), key="ws_role")
    if c.button("Add or change", key="ws_set_member", width="stretch"):
        act(
            workspaces.set_member,
            email,
            role,
            done=f"{ui.text(email)} is now {role}.",
            clear=("ws_member",),
        )
    others = [m.subject for m in members]
    d, e = st.columns([4, 1])
    leaving = d.selectbox("Member to remove", others, key="ws_leaving")
    if e.button("Remove", key="ws_remove", width="stretch") and leaving:
        act(workspaces.remove_member, leaving, done=f"{ui.text(leaving)} was removed.")

st.subheader("Secrets")
st.caption(
    "Referenced in an agent's request headers as `{{ secret.NAME }}`; values never shown. "
    "A secret is sent only to the agent origins an admin allows here."
)
names = ui.read(list_secrets)
if names:
    ui.dataframe(
        pd.DataFrame(
            {
                "Name": [s.name for s in names],
                "Set": [ui.fmt_time(s.updated_at) for s in names],
                "May be sent to": [", ".join(s.origins) or "nowhere yet" for s in names],
            }
        ),
        hide_index=True,
        width="stretch",
    )


def origins(text: str) -> list[str]:
    return [part for part in text.replace(",", " ").split() if part]


if ui.can(Permission.MANAGE_SECRETS):
    # A form, as for channels: a password field left with Tab must not be read as empty.
    with st.form("ws_secret_form", border=False):
        a, b = st.columns([2, 3])
        name = a.text_input("Name", key="ws_secret_name", placeholder="AGENT_TOKEN")
        value = b.text_input("Value", key="ws_secret_value", type="password")
        c, g = st.columns([5, 1], vertical_alignment="bottom")
        sent_to = c.text_input(
            "May be sent to (agent origins, separated by spaces; empty keeps a secret's own)",
            key="ws_secret_origins",
            placeholder="https://agent.example.com",
        )
        saving = g.form_submit_button("Save secret", key="ws_secret_save", width="stretch")
    if saving:
        act(
            partial(secrets.set_secret, origins=origins(sent_to) if sent_to.strip() else None),
            name,
            value,
            done=f"Secret {ui.text(name)} saved.",
            clear=("ws_secret_name", "ws_secret_value", "ws_secret_origins"),
        )
    if names:
        d, e, f = st.columns([2, 3, 1])
        bound = d.selectbox("Secret", [s.name for s in names], key="ws_secret_bound")
        where = e.text_input(
            "Now sent only to", key="ws_secret_where", placeholder="https://agent.example.com"
        )
        if f.button("Allow", key="ws_secret_allow", width="stretch") and bound:
            act(
                secrets.set_secret_origins,
                bound,
                origins(where),
                done=f"Secret {ui.text(bound)} may be sent to {ui.text(where) or 'nowhere'}.",
                clear=("ws_secret_where",),
            )
        d, e = st.columns([5, 1])
        gone = d.selectbox("Secret to delete", [s.name for s in names], key="ws_secret_gone")
        if e.button("Delete", key="ws_secret_delete", width="stretch") and gone:
            act(secrets.delete_secret, gone, done=f"Secret {ui.text(gone)} deleted.")

if ui.can(Permission.MANAGE_TOKENS):
    st.subheader("API tokens")
    st.caption(
        "For scripts calling the REST API (`Authorization: Bearer <token>`): each acts in this "
        "workspace with its role. A token is shown once, when made; only its hash is kept."
    )
    # Shown on this run only: popped, so a rerun or another page never shows it again.
    if made := st.session_state.pop("ws_new_token", None):
        st.success("Copy the token now: it is not shown again.")
        st.code(made, language=None)
    held = ui.read(list_tokens)
    if held:
        ui.dataframe(
            pd.DataFrame(
                {
                    "Name": [t.name for t in held],
                    "Role": [str(t.role) for t in held],
                    "Made by": [t.created_by for t in held],
                    "Made": [ui.fmt_time(t.created_at) for t in held],
                    "Last used": [
                        "never" if t.last_used_at is None else ui.fmt_time(t.last_used_at)
                        for t in held
                    ],
                    "Expires": [
                        "never" if t.expires_at is None else ui.fmt_time(t.expires_at) for t in held
                    ],
                    "Revoked": [ui.fmt_time(t.revoked_at) for t in held],
                }
            ),
            hide_index=True,
            width="stretch",
        )
    a, b, f, c = st.columns([3, 1, 1, 1])
    token_name = a.text_input("Token name", key="ws_token_name", placeholder="deploy script")
    token_role = b.selectbox("Token role", list(Role), key="ws_token_role")
    lifetime = f.selectbox(
        "Expires after",
        [None, *TOKEN_LIFETIMES_DAYS],
        format_func=lambda days: "never" if days is None else f"{days} days",
        key="ws_token_days",
    )
    if c.button("Make token", key="ws_token_make", width="stretch"):
        try:
            new = tokens.create_token(
                token_name, token_role or "", actor=me, expires_in_days=lifetime
            )
        except StepwiseError as exc:
            st.error(ui.text(exc))
        else:
            st.session_state["ws_new_token"] = new.token
            st.session_state["ws_clear"] = ("ws_token_name",)
            st.rerun()
    live = {f"{t.name} ({t.role})": t.id for t in held if t.revoked_at is None}
    if live:
        d, e = st.columns([4, 1])
        ending = d.selectbox("Token to revoke", list(live), key="ws_token_gone")
        if e.button("Revoke", key="ws_token_revoke", width="stretch") and ending:
            act(tokens.revoke_token, live[ending], done=f"Token {ui.text(ending)} revoked.")

notifications.channels_section(act)

st.subheader("Quotas")
limits = ui.read(workspace_quotas)
a, b, c = st.columns(3)
locked = not ui.can(Permission.MANAGE_QUOTAS)
autos = a.number_input("Automations", 0, value=limits.max_automations, disabled=locked)
scheds = b.number_input("Schedules", 0, value=limits.max_schedules, disabled=locked)
runs = c.number_input("Runs per minute", 0, value=limits.max_runs_per_minute, disabled=locked)
if not locked and st.button("Save quotas", key="ws_quotas"):
    act(
        workspaces.set_quotas,
        Quotas(int(autos), int(scheds), int(runs)),
        done="Quotas saved.",
    )

if admin:
    st.subheader("New workspace")
    a, b = st.columns([4, 1])
    new_name = a.text_input("Name", key="ws_new_name")
    if b.button("Create", key="ws_create", width="stretch"):
        try:
            there = workspaces.create_workspace(new_name, actor=me)
        except StepwiseError as exc:
            st.error(ui.text(exc))
        else:
            st.session_state[ui.PENDING_WORKSPACE] = str(there.workspace_id)
            st.session_state["flash"] = "Workspace created; you are its admin."
            st.rerun()
