"""Waits' pure parts (core/waits.py): tokens sealed by the secret box, one purpose each, rotated
keys; callback bodies; waits in words; the README's example.

Pure: no server. The callback route's answers to these tokens are tests/test_callbacks.py.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml

from core.egress import EgressPolicy
from core.errors import ValidationFailed
from core.graph import parse_graph
from core.secrets import SecretBox, new_key
from core.settings import Settings
from core.waits import (
    CALLBACK_PATH,
    CallbackError,
    CallbackOutput,
    CallbackProgress,
    CallbackUnreadable,
    TokenRefused,
    WaitPurpose,
    approval_token,
    callback_token,
    callback_url,
    decision_comment,
    open_token,
    parse_callback,
    seal_token,
    waiting_on,
)

UNTIL = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)


def _keyed(*keys: str, public_url: str = "") -> Settings:
    return Settings(secret_keys=",".join(keys), public_url=public_url)


def test_a_callback_token_opens_as_what_it_was_made_for() -> None:
    settings = _keyed(new_key())
    token = callback_token(settings, 41, UNTIL)
    opened = open_token(settings.secret_box(), token, WaitPurpose.CALLBACK)
    assert (opened.purpose, opened.step_run_id, opened.expires_at) == (
        WaitPurpose.CALLBACK,
        41,
        UNTIL,
    )
    assert b"step_run_id" not in base64.urlsafe_b64decode(token)  # sealed, not merely signed


def test_the_callback_url_starts_with_the_public_url() -> None:
    key = new_key()
    url = callback_url(_keyed(key, public_url="https://stepwise.example.com/"), 7, UNTIL)
    assert url.startswith(f"https://stepwise.example.com{CALLBACK_PATH}")
    token = url.removeprefix(f"https://stepwise.example.com{CALLBACK_PATH}")
    assert open_token(SecretBox((key,)), token, WaitPurpose.CALLBACK).step_run_id == 7
    # Unset: this machine at the API's port.
    local = Settings(secret_keys=key, api_port=8123)
    assert callback_url(local, 7, UNTIL).startswith("http://127.0.0.1:8123/v1/callbacks/")


@pytest.mark.parametrize("bad", ["ftp://x", "stepwise.example.com", "https://x/?a=1"])
def test_a_public_url_that_is_not_one_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match=r"public_url"):
        Settings(public_url=bad)


def test_the_expiry_is_for_the_caller_to_compare_on_its_clock() -> None:
    settings = _keyed(new_key())
    opened = open_token(
        settings.secret_box(), callback_token(settings, 1, UNTIL), WaitPurpose.CALLBACK
    )
    assert not opened.expired(UNTIL - timedelta(microseconds=1))
    assert opened.expired(UNTIL)
    with pytest.raises(ValueError, match="aware"):
        callback_token(settings, 1, UNTIL.replace(tzinfo=None))


def test_a_token_of_one_purpose_never_opens_as_the_other() -> None:
    settings = _keyed(new_key())
    box = settings.secret_box()
    with pytest.raises(TokenRefused):
        open_token(box, approval_token(settings, 3, UNTIL), WaitPurpose.CALLBACK)
    with pytest.raises(TokenRefused):
        open_token(box, callback_token(settings, 3, UNTIL), WaitPurpose.APPROVAL)
    approval = open_token(box, approval_token(settings, 3, UNTIL), WaitPurpose.APPROVAL)
    assert approval.step_run_id == 3


def test_a_tampered_token_is_refused() -> None:
    settings = _keyed(new_key())
    token = callback_token(settings, 5, UNTIL)
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[40] ^= 1  # a bit of the ciphertext
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode()
    for forged in (tampered, token[:-4], token + "AAAA", "", "x" * 5000, "é" + token):
        with pytest.raises(TokenRefused, match="not valid"):
            open_token(settings.secret_box(), forged, WaitPurpose.CALLBACK)


def test_a_token_under_another_key_is_refused() -> None:
    ours, theirs = _keyed(new_key()), _keyed(new_key())
    with pytest.raises(TokenRefused):
        open_token(ours.secret_box(), callback_token(theirs, 5, UNTIL), WaitPurpose.CALLBACK)


def test_a_token_made_before_a_key_rotation_still_opens() -> None:
    old, new = new_key(), new_key()
    before = callback_token(_keyed(old), 9, UNTIL)
    rotated = _keyed(new, old)  # the new key seals, the old one still opens
    assert open_token(rotated.secret_box(), before, WaitPurpose.CALLBACK).step_run_id == 9
    after = callback_token(rotated, 9, UNTIL)
    with pytest.raises(TokenRefused):  # sealed with the new key only
        open_token(SecretBox((old,)), after, WaitPurpose.CALLBACK)
    # Once the old key is dropped, the old token proves nothing.
    with pytest.raises(TokenRefused):
        open_token(_keyed(new).secret_box(), before, WaitPurpose.CALLBACK)


def test_a_payload_that_is_not_ours_is_refused() -> None:
    box = SecretBox((new_key(),))
    for payload in ('["callback", 1]', '{"purpose":"callback","step_run_id":"1"}', "not json"):
        with pytest.raises(TokenRefused):
            open_token(box, box.seal(payload), WaitPurpose.CALLBACK)
    naive = '{"purpose":"callback","step_run_id":1,"expires_at":"2026-12-07T18:00:00"}'
    with pytest.raises(TokenRefused):
        open_token(box, box.seal(naive), WaitPurpose.CALLBACK)
    assert open_token(box, seal_token(box, WaitPurpose.CALLBACK, 1, UNTIL), WaitPurpose.CALLBACK)


def test_a_callback_body_is_one_of_three_answers() -> None:
    answer = parse_callback(b'{"output": {"a": [1, 2.5, null]}}')
    assert answer == CallbackOutput({"a": [1, 2.5, None]})
    assert parse_callback(b'{"output": null}') == CallbackOutput(None)
    assert parse_callback(b'{"error": "refused"}') == CallbackError("refused")
    assert parse_callback(b'{"progress": 39.6, "note": "x"}') == CallbackProgress(40, "x")
    assert parse_callback(b'{"note": "x"}') == CallbackProgress(None, "x")
    with pytest.raises(CallbackUnreadable):
        parse_callback(b"{'output': 1}")
    with pytest.raises(ValidationFailed) as refused:
        parse_callback(b'{"output": 1, "progress": 3}')
    assert refused.value.for_field("output") == "comes alone: an answer is output or error"


def test_on_whom_a_step_waits_in_words() -> None:
    assert waiting_on({"kind": "async"}, UNTIL) == "the agent"
    assert waiting_on({"kind": "approval", "role": "admin"}, UNTIL) == "approval by an admin"
    assert waiting_on({"kind": "approval"}, UNTIL) == "approval by an editor"
    assert waiting_on({"kind": "sleep"}, UNTIL) == "until 2026-12-07 18:00:00 UTC"
    assert decision_comment("  ") is None and decision_comment(" ok ") == "ok"
    with pytest.raises(ValidationFailed):
        decision_comment("x" * 2001)


def test_the_readmes_waits_example_is_a_graph_with_an_async_and_an_approval_step() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme.split("### Waits: agents that answer later", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    steps = yaml.safe_load(example)["automations"][0]["steps"]
    graph = parse_graph(steps, egress=EgressPolicy())
    kinds = {step.key: str(step.kind) for step in graph.steps}
    assert kinds == {
        "research": "async",
        "sign_off": "approval",
        "cool_down": "sleep",
        "pay": "call",
    }
    # and it shows the callback's three bodies and that no API token is needed
    for body in ('{"progress": 40', '{"output": {', '{"error": "'):
        assert body in section
    assert "callback needs no API token" in section
