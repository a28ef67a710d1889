"""Waits' tokens (core/waits.py): sealed by the secret box, one purpose each, rotated keys.

Pure: no server. The callback route's answers to these tokens are tests/test_callbacks.py.
"""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import pytest

from core.secrets import SecretBox, new_key
from core.settings import Settings
from core.waits import (
    CALLBACK_PATH,
    TokenRefused,
    WaitPurpose,
    approval_token,
    callback_token,
    callback_url,
    open_token,
    seal_token,
)

UNTIL = datetime(2026, 12, 7, 18, 0, tzinfo=UTC)


def _settings(*keys: str, public_url: str = "") -> Settings:
    return Settings(secret_keys=",".join(keys), public_url=public_url)


def test_a_callback_token_opens_as_what_it_was_made_for() -> None:
    settings = _settings(new_key())
    token = callback_token(settings, 41, UNTIL)
    opened = open_token(settings.secret_box(), token, WaitPurpose.CALLBACK)
    assert (opened.purpose, opened.step_run_id, opened.expires_at) == (
        WaitPurpose.CALLBACK,
        41,
        UNTIL,
    )
    assert "41" not in token  # sealed, not merely signed


def test_the_callback_url_starts_with_the_public_url() -> None:
    key = new_key()
    url = callback_url(_settings(key, public_url="https://stepwise.example.com/"), 7, UNTIL)
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
    settings = _settings(new_key())
    opened = open_token(
        settings.secret_box(), callback_token(settings, 1, UNTIL), WaitPurpose.CALLBACK
    )
    assert not opened.expired(UNTIL - timedelta(microseconds=1))
    assert opened.expired(UNTIL)
    with pytest.raises(ValueError, match="aware"):
        callback_token(settings, 1, UNTIL.replace(tzinfo=None))


def test_a_token_of_one_purpose_never_opens_as_the_other() -> None:
    settings = _settings(new_key())
    box = settings.secret_box()
    with pytest.raises(TokenRefused):
        open_token(box, approval_token(settings, 3, UNTIL), WaitPurpose.CALLBACK)
    with pytest.raises(TokenRefused):
        open_token(box, callback_token(settings, 3, UNTIL), WaitPurpose.APPROVAL)
    approval = open_token(box, approval_token(settings, 3, UNTIL), WaitPurpose.APPROVAL)
    assert approval.step_run_id == 3


def test_a_tampered_token_is_refused() -> None:
    settings = _settings(new_key())
    token = callback_token(settings, 5, UNTIL)
    raw = bytearray(base64.urlsafe_b64decode(token))
    raw[40] ^= 1  # a bit of the ciphertext
    tampered = base64.urlsafe_b64encode(bytes(raw)).decode()
    for forged in (tampered, token[:-4], token + "AAAA", "", "x" * 5000, "é" + token):
        with pytest.raises(TokenRefused, match="not valid"):
            open_token(settings.secret_box(), forged, WaitPurpose.CALLBACK)


def test_a_token_under_another_key_is_refused() -> None:
    ours, theirs = _settings(new_key()), _settings(new_key())
    with pytest.raises(TokenRefused):
        open_token(ours.secret_box(), callback_token(theirs, 5, UNTIL), WaitPurpose.CALLBACK)


def test_a_token_made_before_a_key_rotation_still_opens() -> None:
    old, new = new_key(), new_key()
    before = callback_token(_settings(old), 9, UNTIL)
    rotated = _settings(new, old)  # the new key seals, the old one still opens
    assert open_token(rotated.secret_box(), before, WaitPurpose.CALLBACK).step_run_id == 9
    after = callback_token(rotated, 9, UNTIL)
    with pytest.raises(TokenRefused):  # sealed with the new key only
        open_token(SecretBox((old,)), after, WaitPurpose.CALLBACK)
    # Once the old key is dropped, the old token proves nothing.
    with pytest.raises(TokenRefused):
        open_token(_settings(new).secret_box(), before, WaitPurpose.CALLBACK)


def test_a_payload_that_is_not_ours_is_refused() -> None:
    box = SecretBox((new_key(),))
    for payload in ('["callback", 1]', '{"purpose":"callback","step_run_id":"1"}', "not json"):
        with pytest.raises(TokenRefused):
            open_token(box, box.seal(payload), WaitPurpose.CALLBACK)
    naive = '{"purpose":"callback","step_run_id":1,"expires_at":"2026-12-07T18:00:00"}'
    with pytest.raises(TokenRefused):
        open_token(box, box.seal(naive), WaitPurpose.CALLBACK)
    assert open_token(box, seal_token(box, WaitPurpose.CALLBACK, 1, UNTIL), WaitPurpose.CALLBACK)
