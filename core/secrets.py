"""Secrets at rest, sealed with the deployment's keys, and the signature of an agent call.

Sealed values are Fernet tokens (AES-128-CBC + HMAC-SHA256, from `cryptography`)
under `STEPWISE_SECRET_KEYS`: the first key seals, every key opens, so a new key is
put first, `stepwise reseal` re-seals every value with it, and the old key is then
dropped. A value is opened only where it is used (the worker, at call time).

Every agent request carries `Stepwise-Signature: t=<unix seconds>,v1=<hex>`, the
HMAC-SHA256 of `<t>.<exact body bytes>` under the automation's signing secret, in the
style of Stripe's webhook signatures; docs/SECURITY.md gives agent authors the code
that verifies it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
import secrets
from collections.abc import Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from core.egress import resolver_form
from core.errors import StepwiseError, ValidationFailed
from core.limits import MAX_SECRET_ORIGINS

SIGNATURE_HEADER = "Stepwise-Signature"
SECRET_PREFIX = "whsec_"


class SecretUnreadable(StepwiseError):
    """A sealed value that none of the configured keys opens (a key was dropped too early)."""


def new_key() -> str:
    """A fresh key for STEPWISE_SECRET_KEYS."""
    return Fernet.generate_key().decode()


def parse_keys(text: str) -> tuple[str, ...]:
    """The comma-separated keys of STEPWISE_SECRET_KEYS; ValueError names a bad one by place."""
    keys = tuple(k.strip() for k in text.split(",") if k.strip())
    for place, key in enumerate(keys, start=1):
        try:
            Fernet(key)
        except ValueError as exc:
            raise ValueError(f"key {place} is not a Fernet key ({exc})") from exc
    return keys


class SecretBox:
    """Seals and opens values with the deployment's keys (the first key seals)."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        self.first_key = keys[0]  # the one that seals; other secrets are derived from it
        self._fernet = MultiFernet([Fernet(k) for k in keys])

    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def open(self, sealed: str) -> str:
        try:
            return self._fernet.decrypt(sealed.encode()).decode()
        except InvalidToken as exc:
            raise SecretUnreadable(
                "a stored secret opens with none of STEPWISE_SECRET_KEYS (was its key removed?)"
            ) from exc

    def reseal(self, sealed: str) -> str:
        """The same value sealed with the first key (for key rotation)."""
        try:
            return self._fernet.rotate(sealed.encode()).decode()
        except InvalidToken as exc:
            raise SecretUnreadable("a stored secret opens with none of the keys") from exc


def new_signing_secret() -> str:
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature_header(secret: str, timestamp: int, body: bytes) -> str:
    """`t=<timestamp>,v1=<hex HMAC-SHA256 of "<timestamp>." + body>`."""
    digest = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={digest.hexdigest()}"


def _signature_fields(header: str) -> dict[str, list[str]]:
    fields: dict[str, list[str]] = {}
    for part in header.split(","):
        name, _, value = part.strip().partition("=")
        fields.setdefault(name, []).append(value)
    return fields


def signed_message(header: str, body: bytes) -> str | None:
    """What a (verified) signature signs, as a key: its timestamp and the body's SHA-256.
    The same key again is the same signed request, replayed; None if there is no `t=`."""
    try:
        timestamp = int(_signature_fields(header)["t"][0])
    except (KeyError, ValueError):
        return None
    return f"{timestamp}.{hashlib.sha256(body).hexdigest()}"


def verify_signature(secret: str, header: str, body: bytes, *, now: int, tolerance_s: int) -> bool:
    """Whether `header` (`t=<unix seconds>,v1=<hex>[,v1=...]`) signs `body` with `secret`,
    made within `tolerance_s` of `now` (an old signature replayed is refused; within the
    tolerance, the caller makes one signed message start at most one thing:
    `signed_message`)."""
    fields = _signature_fields(header)
    try:
        timestamp = int(fields["t"][0])
    except (KeyError, ValueError):
        return False
    if abs(now - timestamp) > tolerance_s:
        return False
    expected = signature_header(secret, timestamp, body).partition(",v1=")[2].encode()
    return any(
        hmac.compare_digest(expected, given.encode("utf-8", "surrogatepass"))
        for given in fields.get("v1", [])
    )


def secret_matches(given: str, secret: str) -> bool:
    """Whether a secret sent in clear is `secret`, compared in constant time."""
    return hmac.compare_digest(given.encode("utf-8", "surrogatepass"), secret.encode())


# Workspace secrets are referenced in an automation's headers as {{ secret.NAME }}.
SECRET_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SECRET_REFERENCE = re.compile(r"\{\{\s*secret\.([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")


def secret_names(template: Mapping[str, str]) -> set[str]:
    """The secret names the header values of `template` reference."""
    return {name for value in template.values() for name in SECRET_REFERENCE.findall(value)}


def render_headers(template: Mapping[str, str], secrets: Mapping[str, str]) -> dict[str, str]:
    """`template` with every `{{ secret.NAME }}` replaced by its value.

    Raises SecretUnreadable naming (never showing) a secret that `secrets` lacks.
    """
    missing = sorted(secret_names(template) - set(secrets))
    if missing:
        raise SecretUnreadable(f"no workspace secret named {', '.join(missing)}")
    return {
        header: SECRET_REFERENCE.sub(lambda m: secrets[m.group(1)], value)
        for header, value in template.items()
    }


# --- where a secret may be sent ------------------------------------------------------------
# An admin binds each workspace secret to the agent origins it may be sent to; an
# automation that names it must call one of them (checked at save and at call time).


class SecretNotBound(SecretUnreadable):
    """A secret named in the headers may not be sent to the call's origin."""


def origin_of(url: str) -> str:
    """`scheme://host:port` of an http(s) URL, as a resolver reads the host (port written
    out); ValueError if it has none."""
    parts = urlsplit(url.strip())
    if parts.scheme.lower() not in ("http", "https") or not parts.hostname:
        raise ValueError("give an http:// or https:// origin, like https://agent.example.com")
    port = parts.port or (443 if parts.scheme.lower() == "https" else 80)
    host = resolver_form(parts.hostname)
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme.lower()}://{host}:{port}"


def parse_origins(values: Iterable[str]) -> tuple[str, ...]:
    """Origins as an admin gives them (`https://agent.example.com`, a path is ignored),
    normalised and sorted; ValidationFailed on the `origins` field if one is not one."""
    found = set()
    for value in values:
        if not value.strip():
            continue
        try:
            found.add(origin_of(value))
        except ValueError as exc:
            raise ValidationFailed.single("origins", f"{value[:80]!r}: {exc}") from None
    if len(found) > MAX_SECRET_ORIGINS:
        raise ValidationFailed.single("origins", f"at most {MAX_SECRET_ORIGINS} origins")
    return tuple(sorted(found))


def unbound(origins_by_secret: Mapping[str, Sequence[str]], url: str) -> list[str]:
    """The secrets (of those given, with their origins) that may not be sent to `url`."""
    try:
        origin = origin_of(url)
    except ValueError:
        return sorted(origins_by_secret)
    return sorted(name for name, origins in origins_by_secret.items() if origin not in origins)


def not_bound_message(names: Sequence[str], url: str) -> str:
    """Why a call to `url` may not carry the secrets `names` (never their values)."""
    try:
        origin = origin_of(url)
    except ValueError:
        origin = "this URL"
    listed = ", ".join(names)
    return (
        f"the secret{'s' if len(names) > 1 else ''} {listed} may not be sent to {origin}: "
        "a workspace admin allows it on the Workspace page (where the secret is sent)"
    )


# Values this short are not redacted from answers (they would mangle ordinary text).
MIN_REDACTED = 4


def redact_values(text: str, values: Iterable[str]) -> str:
    """`text` with every value (and its JSON-escaped form) of at least MIN_REDACTED
    characters replaced by REDACTED, longest first."""
    forms = {form for value in values for form in (value, json.dumps(value)[1:-1])}
    for form in sorted(forms, key=len, reverse=True):
        if len(form) >= MIN_REDACTED:
            text = text.replace(form, "REDACTED")
    return text
