"""Paths under the media and output roots."""

from __future__ import annotations

from pathlib import Path


def resolve_inside(root: Path, relative: str) -> Path | None:
    """`root / relative` if it is a regular file inside `root` (no escaping through `..` or links), else None."""
    base = root.resolve()
    try:
        path = (base / relative).resolve()
    except (OSError, RuntimeError, ValueError):
        return None
    if not path.is_relative_to(base) or not path.is_file():
        return None
    return path
