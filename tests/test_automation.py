"""What an automation may be made of, and what of its URL may be shown."""

from __future__ import annotations

import pytest

from core.automation import REDACTED, redact_url


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (
            "https://a.example/x?api_key=K&region=eu",
            f"https://a.example/x?api_key={REDACTED}&region=eu",
        ),
        (
            "https://a.example/x?TOKEN=t&Sig=s",
            f"https://a.example/x?TOKEN={REDACTED}&Sig={REDACTED}",
        ),
        (
            "https://a.example/x?access-key=1&password=2",
            f"https://a.example/x?access-key={REDACTED}&password={REDACTED}",
        ),
        ("https://bob:pw@a.example/x", f"https://bob:{REDACTED}@a.example/x"),
        ("https://a.example/x?q=1", "https://a.example/x?q=1"),
        ("https://a.example/agent", "https://a.example/agent"),
    ],
)
def test_secret_looking_parts_of_a_url_are_redacted(url: str, shown: str) -> None:
    assert redact_url(url) == shown
