"""Which `source` strings are acceptable keys: pure (no I/O), used when a clip is registered (400 with the
detail, nothing appended) and again by the worker before it touches storage. The same rules hold for both
backends, so a key is never read as a path outside the root, an option, or a URL."""

from __future__ import annotations

import re

MAX_KEY_BYTES = 1024  # S3's limit on a key (after the prefix is added the store checks again)

_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")  # `http://x`, `s3:x`, `file:x`, `C:...`: protocol syntax
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def source_key_problem(key: str) -> str | None:
    """Why `key` cannot name a source, in words for a 400's detail; None when it can."""
    if not key:
        return "source must not be empty"
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        return f"source must be at most {MAX_KEY_BYTES} bytes long"
    if _CONTROL.search(key):
        return "source must not contain control characters"
    if "\\" in key:
        return "source must not contain backslashes (use / between folders)"
    if key.startswith("/"):
        return "source must be relative to the media root (no leading /)"
    if key.startswith("-"):
        return "source must not start with '-'"
    if _SCHEME.match(key):
        return "source must be a key under the media root, not a URL (no scheme: such as http:// or s3:)"
    segments = key.split("/")
    if any(segment in ("..", ".") for segment in segments):
        return "source must not contain '.' or '..' segments"
    if any(segment == "" for segment in segments):
        return "source must not contain empty segments ('//' or a trailing '/')"
    return None


def is_valid_source_key(key: str) -> bool:
    return source_key_problem(key) is None
