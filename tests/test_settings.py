"""Configuration: Heroku names, the STEPWISE_ prefix, and errors that name the variable."""

from __future__ import annotations

import pytest

from core.errors import ConfigError
from core.settings import Settings, get_settings


def test_heroku_postgres_urls_get_a_driver(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgres://u:p@db.example:5432/app")
    assert Settings().database_url == "postgresql+psycopg://u:p@db.example:5432/app"


@pytest.mark.parametrize(
    ("value", "threshold"), [(None, 5), ("", None), ("none", None), (" None ", None), ("0", 0)]
)
def test_the_prepare_threshold_is_five_or_never(
    monkeypatch: pytest.MonkeyPatch, value: str | None, threshold: int | None
) -> None:
    # Behind PgBouncer < 1.21 in transaction mode psycopg must never prepare (empty / none).
    monkeypatch.delenv("STEPWISE_DB_PREPARE_THRESHOLD", raising=False)
    if value is not None:
        monkeypatch.setenv("STEPWISE_DB_PREPARE_THRESHOLD", value)
    assert Settings().db_prepare_threshold == threshold


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("STEPWISE_WEB_PORT", "eighty", "STEPWISE_WEB_PORT"),
        ("STEPWISE_DISPATCH_HORIZON_S", "30", "STEPWISE_DISPATCH_HORIZON_S"),
        ("DATABASE_URL", "mysql://x/y", "DATABASE_URL"),
        ("REDIS_URL", "http://x", "REDIS_URL"),
        ("STEPWISE_DB_PREPARE_THRESHOLD", "-1", "STEPWISE_DB_PREPARE_THRESHOLD"),
        ("STEPWISE_DB_PREPARE_THRESHOLD", "never", "STEPWISE_DB_PREPARE_THRESHOLD"),
    ],
)
def test_bad_values_fail_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, named: str
) -> None:
    monkeypatch.setenv(variable, value)
    get_settings.cache_clear()
    try:
        with pytest.raises(ConfigError, match=named):
            get_settings()
    finally:
        monkeypatch.undo()
        get_settings.cache_clear()


def test_missing_servers_are_named() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL and REDIS_URL not set"):
        Settings(DATABASE_URL="", REDIS_URL="").require_servers()
