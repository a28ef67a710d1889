"""API tokens as values: made with enough entropy to be stored as a plain hash.

A token is 32 random bytes (256 bits), so a SHA-256 of it needs no salt or slow
hash: nobody can guess one from its hash. The token itself is shown once, when it
is made, and never stored; lookups go by its hash, and the final comparison is in
constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

# Says what a leaked string is (secret scanners look for such prefixes).
TOKEN_PREFIX = "stw_"


def new_token() -> str:
    """A fresh API token, to be shown to its maker once."""
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def token_hash(token: str) -> str:
    """What is stored of a token: the hex SHA-256 of its text."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def hash_matches(token: str, stored: str) -> bool:
    """Whether `token` is the one `stored` was made from, compared in constant time."""
    return hmac.compare_digest(token_hash(token), stored)
