"""Keeping credentials out of what isoflop writes and prints.

A tracking URI may carry a password (``postgresql://user:secret@db/mlflow``) or a token in its
query (``...?token=...``). isoflop uses such a URI to connect, but never writes it into the
tracking store (the stored study configuration, failure reasons, exports) or onto the terminal:
everything that leaves the process goes through :func:`redact_text` first.
"""

from __future__ import annotations

import re

MASK = "***"

#: query keys whose values are credentials
SECRET_KEYS = ("password", "passwd", "pwd", "token", "secret", "access_token", "api_key", "apikey", "key")

# scheme://user:password@host  ->  scheme://user:***@host
_USERINFO = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@'\"]*):(?P<secret>[^\s@/'\"]+)@")
# ?token=...  or  &password=...
_QUERY = re.compile(
    r"(?P<head>[?&;](?:" + "|".join(SECRET_KEYS) + r")=)(?P<secret>[^&;#\s'\"]+)", re.IGNORECASE
)


def redact_text(text: str) -> str:
    """``text`` with the password of every URI in it and every credential-valued query
    parameter replaced by ``***``; the rest (scheme, user, host, path) is kept so the URI still
    says where it points."""
    text = _USERINFO.sub(lambda m: f"{m['head']}:{MASK}@", text)
    return _QUERY.sub(lambda m: f"{m['head']}{MASK}", text)


def has_secret(text: str) -> bool:
    """True when ``text`` holds something :func:`redact_text` would mask."""
    return redact_text(text) != text


__all__ = ["MASK", "has_secret", "redact_text"]
