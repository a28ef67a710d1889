"""All configuration, read once from the environment.

`DATABASE_URL` and `REDIS_URL` keep their Heroku names; everything else has the
`STEPWISE_` prefix. Nothing else in the code base reads `os.environ` for
configuration. A bad value fails at start-up with a message naming the variable.

The one module of `core` that touches the outside world: it reads the environment,
once, on first call; it imports no database, queue or HTTP library (import-linter
checks that for all of `core`), so every layer can read its configuration here.
"""

from __future__ import annotations

import ipaddress
import tempfile
from functools import lru_cache
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from core.egress import EgressPolicy, parse_allowlist
from core.errors import ConfigError
from core.secrets import SecretBox, parse_keys

DEFAULT_API_PORT = 8000


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="STEPWISE_", extra="ignore")

    # Heroku names, no prefix. Empty means "start the embedded server" (run command only).
    database_url: str = Field(default="", validation_alias="DATABASE_URL")
    # psycopg prepares a statement on a connection once it ran this many times there;
    # None (empty or `none`): never. Off behind PgBouncer < 1.21 in transaction mode,
    # where the next transaction may get another server connection (docs/SCALING.md).
    db_prepare_threshold: int | None = Field(default=5, ge=0)
    redis_url: str = Field(default="", validation_alias="REDIS_URL")

    data_dir: Path = Path(".data")
    web_port: int = Field(default=8501, ge=1, le=65535)
    # The Procfile's `web` listens on PORT (Heroku sets it) at this address.
    port: int | None = Field(default=None, ge=1, le=65535, validation_alias="PORT")
    web_address: str = "127.0.0.1"
    # The Procfile's `api` (REST API): every call but health and docs needs a token, so it
    # may listen beyond loopback; it still starts on this machine only unless told.
    api_address: str = "127.0.0.1"
    # Its port: this, else PORT (Heroku's), else 8000. `stepwise run` sets it.
    api_port: int | None = Field(default=None, ge=1, le=65535)
    # The API's address as agents and people reach it (http(s)://host[:port][/prefix]):
    # an async step's callback URL starts with it. Empty: http://127.0.0.1:<API port>.
    public_url: str = ""
    # Calls one API token (or webhook, or async step's callback URL) may make per minute
    # (over every api process, counted in Redis).
    api_rate_per_minute: int = Field(default=600, ge=1, le=1_000_000)
    # `stepwise api ...` (the CLI for scripts): the REST API's base URL and a token for it.
    api_url: str = ""
    api_token: str = ""
    # Host names the dashboard answers on besides this machine's own (comma-separated).
    web_hosts: str = ""
    # Login with OpenID Connect: issuer, client id and secret set = every person logs in.
    oidc_issuer: str = ""  # its /.well-known/openid-configuration is read
    oidc_client_id: str = ""
    oidc_client_secret: str = ""
    oidc_redirect_uri: str = ""  # default http://localhost:<port>/oauth2callback
    # An e-mail finds an invitation only when the provider says `email_verified: true`. On:
    # one that never sends the claim is taken at its word (an explicit false still counts).
    oidc_email_always_verified: bool = False
    # Admins of the default workspace (e-mail addresses, comma-separated), made so on first use.
    admins: str = ""
    redis_port: int = Field(default=6390, ge=1, le=65535)  # embedded Redis only
    demo: bool = True  # bundled demo agent + demo automation on first start
    demo_agent_port: int = Field(default=8787, ge=1, le=65535)

    # Dispatch: slots due before now + horizon are materialised each tick; the
    # horizon exceeds the one-minute tick so every slot is enqueued before its time.
    dispatch_horizon_s: int = Field(default=90, ge=61)
    dispatch_batch: int = Field(default=500, ge=1)
    # Dispatch transactions one tick runs side by side (SKIP LOCKED shares the batches).
    dispatch_lanes: int = Field(default=2, ge=1)
    # A slot older than this when dispatched is "missed" (misfire policy applies).
    misfire_grace_s: int = Field(default=60, ge=0)

    # Runs.
    worker_processes: int = Field(default=2, ge=1)
    # Dramatiq threads per worker process: they only claim runs and hand them on.
    worker_threads: int = Field(default=32, ge=1)
    # Runs a worker process holds in flight at once (agent calls on its event loop).
    worker_in_flight: int = Field(default=1000, ge=1)
    # Threads per worker process writing runs' steps to the database.
    # Few on purpose: each writes the runs' pending steps as one transaction, so fewer
    # threads mean bigger groups and fewer commits (bench/RESULTS.md: 2 to 8 threads).
    worker_db_threads: int = Field(default=3, ge=1)
    # A running run's lease: its worker renews it every third of this while alive;
    # a killed worker's runs restart this long after its last renewal.
    lease_s: int = Field(default=30, ge=3)
    execution_time_limit_s: int = Field(default=3600, ge=10)
    min_backoff_ms: int = Field(default=2000, ge=0)
    max_backoff_ms: int = Field(default=300_000, ge=0)
    max_response_bytes: int = Field(default=64 * 1024, ge=1024)
    # Agent addresses allowed although internal (host, address or CIDR, optional :port).
    agent_allow: str = ""
    # Keys that seal secrets at rest, comma-separated; the first seals (core.secrets).
    secret_keys: str = ""

    # Failure notifications (apprise): one delivery's wall-clock limit, and how long a
    # finished run settles before the evaluator reads it (runs commit out of order).
    notify_timeout_s: int = Field(default=10, ge=1, le=30)
    notify_settle_s: int = Field(default=5, ge=0, le=300)

    # Metrics (docs/METRICS.md): each process serves Prometheus metrics on its own port at
    # this address: this machine only unless told (they count work, they carry no secret).
    metrics_address: str = "127.0.0.1"
    api_metrics_port: int = Field(default=9190, ge=1, le=65535)
    worker_metrics_port: int = Field(default=9191, ge=1, le=65535)
    dispatcher_metrics_port: int = Field(default=9192, ge=1, le=65535)
    # Where `stepwise metered` keeps each process group's multiprocess files; empty: a
    # `stepwise-metrics` folder in the system's temporary directory.
    metrics_dir: str = ""
    # Set by `stepwise metered` for the processes it starts (prometheus-client reads it).
    prometheus_multiproc_dir: str = Field(default="", validation_alias="PROMETHEUS_MULTIPROC_DIR")

    # Logs (core/logs.py): `json` or `text`; empty: JSON unless stderr is a terminal.
    log_format: Literal["", "json", "text"] = ""
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    # Traces (tasks/tracing.py): OTLP/HTTP to this collector when set (the standard name,
    # without the prefix); the exporter reads the other OTEL_* variables itself.
    otel_exporter_otlp_endpoint: str = Field(
        default="", validation_alias="OTEL_EXPORTER_OTLP_ENDPOINT"
    )

    # Housekeeping.
    requeue_after_s: int = Field(default=60, ge=5)
    retention_days: int = Field(default=90, ge=1)
    retention_batch: int = Field(default=5000, ge=1)
    # An API Idempotency-Key older than this many hours is forgotten (a repeat makes anew).
    idempotency_retention_h: int = Field(default=24, ge=1)

    @field_validator("database_url")
    @classmethod
    def _sqlalchemy_url(cls, value: str) -> str:
        # Heroku hands out postgres://; SQLAlchemy wants an explicit driver.
        for prefix in ("postgres://", "postgresql://"):
            if value.startswith(prefix):
                return "postgresql+psycopg://" + value[len(prefix) :]
        if value and not value.startswith("postgresql+psycopg://"):
            raise ValueError("must be a postgres:// or postgresql:// URL")
        return value

    @field_validator("db_prepare_threshold", mode="before")
    @classmethod
    def _never_prepare(cls, value: object) -> object:
        if isinstance(value, str) and value.strip().lower() in ("", "none"):
            return None
        return value

    @field_validator("agent_allow")
    @classmethod
    def _allowlist(cls, value: str) -> str:
        try:
            parse_allowlist(value)
        except ConfigError as exc:
            raise ValueError(str(exc).split(": ", 1)[-1]) from exc
        return value

    @field_validator("secret_keys")
    @classmethod
    def _keys(cls, value: str) -> str:
        parse_keys(value)
        return value

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str) -> str:
        value = value.strip()
        if not value:
            return ""
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "must be an http:// or https:// URL, like https://stepwise.example.com"
            )
        if parts.query or parts.fragment:
            raise ValueError("must have no ?query or #fragment")
        return value.rstrip("/")

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be a redis://, rediss:// or unix:// URL")
        return value

    def require_servers(self) -> None:
        """Fail clearly when a process that needs both servers has no URL for them."""
        missing = [
            name
            for name, value in (("DATABASE_URL", self.database_url), ("REDIS_URL", self.redis_url))
            if not value
        ]
        if missing:
            raise ConfigError(
                f"{' and '.join(missing)} not set: start Stepwise with `make run` "
                "(embedded servers) or set them to your PostgreSQL / Redis"
            )

    def egress_policy(self) -> EgressPolicy:
        """Where agent calls may go (ConfigError naming STEPWISE_AGENT_ALLOW if unreadable)."""
        return parse_allowlist(self.agent_allow)

    def secret_box(self) -> SecretBox:
        """What seals and opens stored secrets; ConfigError if no key is configured."""
        keys = parse_keys(self.secret_keys)
        if not keys:
            raise ConfigError(
                "STEPWISE_SECRET_KEYS not set: it seals secrets at rest. Create a key with "
                "`stepwise new-key` and set it (`stepwise run` keeps one under the data directory)"
            )
        return SecretBox(keys)

    def web_host_allowed(self, host_header: str | None) -> bool:
        """Whether a request's Host names this dashboard (loopback names, or STEPWISE_WEB_HOSTS).

        No Host at all is not an HTTP request (the in-process test runner): allowed.
        """
        if host_header is None:
            return True
        host = host_header.strip().lower()
        host = host.rpartition("]")[0].lstrip("[") if host.startswith("[") else host.split(":")[0]
        extra = {h.strip().lower() for h in self.web_hosts.split(",") if h.strip()}
        return host in {"localhost", "127.0.0.1", "::1"} | extra

    @property
    def login_required(self) -> bool:
        """Whether the dashboard asks every person to log in (OpenID Connect configured)."""
        return bool(self.oidc_issuer or self.oidc_client_id or self.oidc_client_secret)

    def admin_emails(self) -> frozenset[str]:
        return frozenset(e.strip().lower() for e in self.admins.split(",") if e.strip())

    def require_login_config(self) -> None:
        """Fail clearly on a half-configured login, or one that would let anyone in."""
        if not self.login_required:
            return
        missing = [
            name
            for name, value in (
                ("STEPWISE_OIDC_ISSUER", self.oidc_issuer),
                ("STEPWISE_OIDC_CLIENT_ID", self.oidc_client_id),
                ("STEPWISE_OIDC_CLIENT_SECRET", self.oidc_client_secret),
                ("STEPWISE_ADMINS", self.admins.strip()),
            )
            if not value
        ]
        if missing:
            raise ConfigError(f"login is half configured: set {', '.join(missing)}")

    def require_private_web(self) -> None:
        """Refuse a dashboard reachable beyond this machine unless every person logs in."""
        self.require_login_config()
        if _is_loopback(self.web_address) or self.login_required:
            return
        raise ConfigError(
            f"STEPWISE_WEB_ADDRESS={self.web_address} would let anyone who reaches it control "
            "every automation: there is no login. Set STEPWISE_OIDC_ISSUER, "
            "STEPWISE_OIDC_CLIENT_ID, STEPWISE_OIDC_CLIENT_SECRET and STEPWISE_ADMINS, or keep "
            "STEPWISE_WEB_ADDRESS at 127.0.0.1 (the default)"
        )

    def web_listen_port(self) -> int:
        """The dashboard's port: PORT (Heroku's), else STEPWISE_WEB_PORT."""
        return self.port or self.web_port

    def api_listen_port(self) -> int:
        """The REST API's port: STEPWISE_API_PORT, else PORT, else 8000."""
        return self.api_port or self.port or DEFAULT_API_PORT

    def public_base_url(self) -> str:
        """Where agents and people reach the API (no trailing slash): STEPWISE_PUBLIC_URL,
        else this machine at the API's port."""
        return self.public_url or f"http://127.0.0.1:{self.api_listen_port()}"

    def metrics_base(self) -> Path:
        """Where each metered process group gets its multiprocess folder."""
        return Path(self.metrics_dir or Path(tempfile.gettempdir()) / "stepwise-metrics")

    def metrics_port(self, role: str) -> int:
        """The metrics port of a Procfile process: `api`, `worker` or `dispatcher`."""
        ports = {
            "api": self.api_metrics_port,
            "worker": self.worker_metrics_port,
            "dispatcher": self.dispatcher_metrics_port,
        }
        if role not in ports:
            raise ConfigError(f"no metrics port for {role!r}: one of {', '.join(ports)}")
        return ports[role]

    def require_redis(self) -> None:
        """Fail clearly when a process that sends or consumes messages has no Redis."""
        if not self.redis_url:
            raise ConfigError(
                "REDIS_URL not set: start Stepwise with `make run` (embedded servers) "
                "or set it to your Redis"
            )


def _is_loopback(address: str) -> bool:
    if address.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(address.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name: it may resolve anywhere


def variable_name(field: str) -> str:
    """The environment variable a settings field is read from."""
    unprefixed = {
        "database_url",
        "redis_url",
        "port",
        "prometheus_multiproc_dir",
        "otel_exporter_otlp_endpoint",
    }
    return field.upper() if field in unprefixed else f"STEPWISE_{field.upper()}"


def _variable_name(loc: tuple[int | str, ...]) -> str:
    return variable_name(str(loc[0]) if loc else "?")


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The process's settings; raises ConfigError naming the bad variable."""
    try:
        return Settings()
    except ValidationError as exc:
        problems = "; ".join(f"{_variable_name(err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"bad configuration: {problems}") from exc
