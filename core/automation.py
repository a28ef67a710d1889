"""What an automation is made of, and the checks every input passes before a write."""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from core.egress import EgressPolicy
from core.errors import FieldError, ValidationFailed
from core.limits import (
    DEFAULT_MAX_RETRIES,
    DEFAULT_STEP_TIMEOUT_S,
    MAX_CONCURRENCY,
    MAX_HEADER_NAME,
    MAX_HEADER_VALUE,
    MAX_HEADERS,
    MAX_MESSAGE,
    MAX_NAME,
    MAX_RATE_PER_S,
    MAX_RETRIES,
    MAX_STEP_TIMEOUT_S,
    MAX_STEPS,
    MAX_TEXT,
    MAX_URL,
    MIN_RATE_PER_S,
    MIN_STEP_TIMEOUT_S,
)
from core.secrets import SECRET_REFERENCE, secret_names
from core.text import UNSTORABLE, storable, text_errors


@dataclass(frozen=True)
class Step:
    name: str
    message: str


# A graph's step in its plain form (`core.graph.to_data`): an object with a `key`.
PlainStep = Mapping[str, Any]
# An automation's steps: a line of Steps (messages sent exactly as written), or a graph's
# steps in their plain form, checked whole at save (`core.graph.parse_graph`).
Steps = tuple[Step, ...] | tuple[PlainStep, ...]
STEP_FIELDS = frozenset({"name", "message"})  # a step of a line: nothing else


@dataclass(frozen=True)
class AutomationInput:
    name: str
    agent_url: str
    steps: Steps
    description: str = ""
    project_context: str = ""
    step_timeout_s: int = DEFAULT_STEP_TIMEOUT_S
    max_retries: int = DEFAULT_MAX_RETRIES
    owner_id: str = "local"
    # Sent with every call, as (name, value); a value may reference workspace secrets
    # as {{ secret.NAME }}, filled in by the worker at call time only.
    request_headers: tuple[tuple[str, str], ...] = ()
    # Flow control, over every worker: calls at the agent at once, and calls per second.
    concurrency_limit: int | None = None
    rate_limit_per_s: float | None = None
    # Runs go to the urgent queue, ahead of any backlog of other automations' runs.
    urgent: bool = False


# Query parameter names whose values are credentials in practice (api_key, token, sig...).
_SECRET_PARAM = re.compile(
    r"(key|token|secret|passw|pwd|auth|sig|credential|session|cookie|bearer)", re.IGNORECASE
)
REDACTED = "REDACTED"


@functools.lru_cache(maxsize=4096)  # every step run stores its agent's URL redacted
def redact_url(url: str) -> str:
    """`url` with the values of secret-looking query parameters and any password replaced.

    What is shown on a page or stored with a run; the automation keeps the real URL.
    """
    parts = urlsplit(url)
    pairs = parse_qsl(parts.query, keep_blank_values=True)
    query = urlencode(
        [(name, REDACTED if _SECRET_PARAM.search(name) else value) for name, value in pairs],
        safe="",
    )
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username}:{REDACTED}@{netloc.rpartition('@')[2]}"
    return urlunsplit(parts._replace(netloc=netloc, query=query))


# One DNS label: letters, digits, hyphens inside (underscores too: container networks
# name services with them), at most 63 characters.
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")


def _valid_host(host: str) -> bool:
    """A host name that DNS could hold (international names by their IDNA form), or an
    IPv6 literal (urlsplit has checked its brackets)."""
    if ":" in host:
        return True
    try:
        ascii_host = host.encode("idna").decode("ascii")
    except UnicodeError:
        return False
    labels = ascii_host.removesuffix(".").split(".")
    return len(ascii_host) <= 253 and all(_LABEL.fullmatch(label) for label in labels)


def url_problem(url: str, egress: EgressPolicy) -> str | None:
    """What is wrong with an agent URL, as a phrase that follows its field's name, or None."""
    if not url.strip():
        return "is required"
    if len(url) > MAX_URL:
        return f"is longer than {MAX_URL} characters"
    if any(c.isspace() for c in url.strip()):
        return "must not contain spaces (encode them as %20)"
    try:
        parts = urlsplit(url.strip())
    except ValueError:  # an unclosed [ of an IPv6 address
        return "is not a valid URL (check the brackets around an IPv6 address)"
    if parts.scheme not in ("http", "https"):
        return f"must start with http:// or https:// (got {parts.scheme or 'no scheme'!r})"
    try:
        port = parts.port
    except ValueError:
        port = 0
    if port == 0:
        return "has a port that is not a number between 1 and 65535"
    if not parts.hostname:
        return "has no host name"
    if not _valid_host(parts.hostname):
        return f"has a host name that cannot exist ({parts.hostname!r})"
    if parts.username is not None or parts.password is not None:
        return (
            "must not contain a user name or password: they would be stored and shown "
            "with every run"
        )
    if (reason := egress.refusal_of_url(url.strip())) is not None:
        return (
            f"is not allowed: {reason} (internal addresses are refused unless an "
            "administrator allows them with STEPWISE_AGENT_ALLOW)"
        )
    return None


def is_graph(steps: Steps) -> bool:
    """Whether `steps` are a graph's (plain objects with keys), not a line of Steps."""
    return any(not isinstance(step, Step) for step in steps)


def steps_of(data: Sequence[Mapping[str, Any]]) -> Steps:
    """An automation's steps from their plain form (the API's, a definitions file's, the
    editor's): a list whose steps have no `key` is a line of Steps, as always; one whose
    steps have keys is a graph, kept as given (its checks run at save). ValidationFailed
    (steps) for a step of a line that sets a field only a graph's steps have (null or
    empty: not set)."""
    if any(step.get("key") is not None for step in data):
        return tuple(dict(step) for step in data)
    errors = []
    for number, step in enumerate(data, start=1):
        extra = sorted(name for name, value in step.items() if name not in STEP_FIELDS)
        given = [name for name in extra if step[name] not in (None, [], {})]
        if given:
            errors.append(
                FieldError(
                    "steps",
                    f"step {number} sets {', '.join(given)} but has no key: a step's key, "
                    "needs, when, for_each and own settings make the automation a graph, "
                    "where every step has a key",
                )
            )
    if errors:
        raise ValidationFailed(errors)
    return tuple(Step(str(step.get("name") or ""), str(step.get("message") or "")) for step in data)


def steps_data(steps: Steps) -> list[dict[str, Any]]:
    """`steps` in their plain form, as `steps_of` reads them (a line's: name and message)."""
    return [
        {"name": step.name, "message": step.message} if isinstance(step, Step) else dict(step)
        for step in steps
    ]


def _check_steps(steps: Steps, egress: EgressPolicy) -> list[FieldError]:
    if is_graph(steps):
        from core.graph import parse_graph  # the graph's checks read this module's

        try:
            parse_graph(steps_data(steps), egress=egress)
        except ValidationFailed as refused:
            return list(refused.errors)
        return []
    if not steps:
        return [FieldError("steps", "add at least one step")]
    if len(steps) > MAX_STEPS:
        return [FieldError("steps", f"at most {MAX_STEPS} steps (got {len(steps)})")]
    errors = []
    for number, step in enumerate(steps, start=1):
        assert isinstance(step, Step)  # a line's
        if not step.message.strip():
            errors.append(FieldError("steps", f"step {number} has no message"))
        elif len(step.message) > MAX_MESSAGE:
            errors.append(
                FieldError("steps", f"step {number}'s message is over {MAX_MESSAGE} characters")
            )
        if len(step.name) > MAX_NAME:
            errors.append(
                FieldError("steps", f"step {number}'s name is over {MAX_NAME} characters")
            )
    return errors


# Headers Stepwise sets itself, or that would change how the request is read.
RESERVED_HEADERS = frozenset(
    {
        "host",
        "content-length",
        "content-type",
        "content-encoding",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "te",
        "upgrade",
        "expect",
        "user-agent",
        "idempotency-key",
        "stepwise-signature",
    }
)
_TOKEN = re.compile(r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$")
# Header names that carry credentials: their values must come from a workspace secret.
_CREDENTIAL_HEADER = re.compile(
    r"(authorization|cookie|token|key|secret|passw|auth|session|signature|credential)",
    re.IGNORECASE,
)


# What a credential header's value may hold besides its secret references: an auth scheme
# word before one reference (`Bearer {{ secret.T }}`), or cookie names before references
# (`a={{ secret.A }}; b={{ secret.B }}`). Any other text would be a credential written in
# clear beside the reference, stored and shown to viewers.
_REFERENCED_VALUE = re.compile(
    r"\s*(?:[A-Za-z][A-Za-z0-9._-]*\s+)?\x00\s*"
    r"|\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+=\x00(?:\s*;\s*[A-Za-z0-9!#$%&'*+.^_`|~-]+=\x00)*\s*;?\s*"
)


def only_references(value: str) -> bool:
    """Whether a credential header's value is secret references with nothing in clear but
    an auth scheme or cookie names (`_REFERENCED_VALUE`)."""
    if "\x00" in value or not secret_names({"": value}):
        return False
    return bool(_REFERENCED_VALUE.fullmatch(SECRET_REFERENCE.sub("\x00", value)))


def header_problems(headers: tuple[tuple[str, str], ...]) -> list[str]:
    """What is wrong with request headers (name, value), one phrase each; empty if nothing."""
    if len(headers) > MAX_HEADERS:
        return [f"at most {MAX_HEADERS} headers"]
    errors: list[str] = []
    seen: set[str] = set()
    for name, value in headers:
        lowered = name.lower()
        if not _TOKEN.match(name) or len(name) > MAX_HEADER_NAME:
            errors.append(f"{name[:MAX_HEADER_NAME]!r} is not a header name")
        elif lowered in RESERVED_HEADERS:
            errors.append(f"{name} is set by Stepwise and cannot be changed")
        elif lowered in seen:
            errors.append(f"{name} is given twice")
        elif any(c in value for c in "\r\n"):
            errors.append(f"{name}'s value must be on one line")
        elif len(value) > MAX_HEADER_VALUE:
            errors.append(f"{name}'s value is over {MAX_HEADER_VALUE} characters")
        elif _CREDENTIAL_HEADER.search(name) and not only_references(value):
            errors.append(
                f"{name} carries a credential: save it as a workspace secret and write "
                "{{ secret.NAME }} here (the value is then never stored or shown)"
            )
        seen.add(lowered)
    return errors


def _check_text(data: AutomationInput) -> list[FieldError]:
    """Every text of `data` that PostgreSQL could not store (`core.text`)."""
    errors = text_errors(
        [
            ("name", data.name),
            ("description", data.description),
            ("project_context", data.project_context),
            ("agent_url", data.agent_url),
            ("owner_id", data.owner_id),
        ]
    )
    for number, step in enumerate(data.steps, start=1):
        if not isinstance(step, Step):
            continue  # a graph's step: `core.graph.parse_graph` checks its texts
        for part, text in (("name", step.name), ("message", step.message)):
            if not storable(text):
                errors.append(FieldError("steps", f"step {number}'s {part} {UNSTORABLE}"))
    for number, header in enumerate(data.request_headers, start=1):
        for part, text in zip(("name", "value"), header, strict=True):
            if not storable(text):
                errors.append(
                    FieldError("request_headers", f"header {number}'s {part} {UNSTORABLE}")
                )
    return errors


def validate_automation(data: AutomationInput, *, egress: EgressPolicy) -> None:
    """Raise ValidationFailed listing every problem; return quietly when all is well.

    Text PostgreSQL cannot store is refused first, alone: the other checks (whose
    messages may quote a field) never see it. `egress` decides which agent addresses
    are acceptable (the deployment's allowlist).
    """
    if text_problems := _check_text(data):
        raise ValidationFailed(text_problems)
    errors: list[FieldError] = []
    if not data.name.strip():
        errors.append(FieldError("name", "is required"))
    elif len(data.name) > MAX_NAME:
        errors.append(FieldError("name", f"is longer than {MAX_NAME} characters"))
    for name, value in (
        ("description", data.description),
        ("project_context", data.project_context),
    ):
        if len(value) > MAX_TEXT:
            errors.append(FieldError(name, f"is longer than {MAX_TEXT} characters"))
    if (problem := url_problem(data.agent_url, egress)) is not None:
        errors.append(FieldError("agent_url", problem))
    errors += _check_steps(data.steps, egress)
    errors += [FieldError("request_headers", e) for e in header_problems(data.request_headers)]
    if not MIN_STEP_TIMEOUT_S <= data.step_timeout_s <= MAX_STEP_TIMEOUT_S:
        errors.append(
            FieldError(
                "step_timeout_s",
                f"must be between {MIN_STEP_TIMEOUT_S} and {MAX_STEP_TIMEOUT_S} seconds",
            )
        )
    if not 0 <= data.max_retries <= MAX_RETRIES:
        errors.append(FieldError("max_retries", f"must be between 0 and {MAX_RETRIES}"))
    if data.concurrency_limit is not None and not 1 <= data.concurrency_limit <= MAX_CONCURRENCY:
        errors.append(
            FieldError(
                "concurrency_limit", f"must be between 1 and {MAX_CONCURRENCY}, or empty (no limit)"
            )
        )
    rate = data.rate_limit_per_s
    if rate is not None and not (MIN_RATE_PER_S <= rate <= MAX_RATE_PER_S):  # NaN fails too
        errors.append(
            FieldError(
                "rate_limit_per_s",
                f"must be between {MIN_RATE_PER_S} and {MAX_RATE_PER_S} calls per second, "
                "or empty (no limit)",
            )
        )
    if errors:
        raise ValidationFailed(errors)
