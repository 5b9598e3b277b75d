"""What /proc says of a process, for tests that check one was stopped."""

from __future__ import annotations

from pathlib import Path


def alive(pid: int) -> bool:
    """The process exists and is not a zombie waiting to be reaped.

    A process that ends while its stat file is read makes the read fail with ProcessLookupError (ESRCH) after the
    open succeeded, or the open fail with FileNotFoundError: both mean it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
