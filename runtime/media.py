"""Paths under the media and output roots."""

from __future__ import annotations

from pathlib import Path


def resolve_inside(root: Path, relative: str) -> Path | None:
    """`root / relative` if it is a regular file inside `root` (no escaping through `..` or links), else None."""
    base = root.resolve()
    try:
        path = (base / relative).resolve()
        if not path.is_relative_to(base) or not path.is_file():
            return None
    except (OSError, RuntimeError, ValueError):  # a name too long, a loop of links, a NUL
        return None
    return path
