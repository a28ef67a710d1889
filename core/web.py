"""What every page and API answer says about being framed by another site (clickjacking)."""

from __future__ import annotations

# Both: X-Frame-Options for older browsers, the CSP directive for the rest.
FRAMING_HEADERS: dict[str, str] = {
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": "frame-ancestors 'none'",
}
