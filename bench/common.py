"""What every benchmark here shares: number formatting for the tables, and `--quick`/default argument handling."""

from __future__ import annotations

import argparse
import statistics
from typing import Any, Sequence


def fmt(value: float) -> str:
    if abs(value) >= 100:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def cell(values: Sequence[float]) -> str:
    """Median with the range: `12.3 (10.1–15.0)`."""
    if not values:
        return "n/a"
    return f"{fmt(statistics.median(values))} ({fmt(min(values))}–{fmt(max(values))})"


def apply_defaults(args: argparse.Namespace, quick: dict[str, Any], full: dict[str, Any]) -> argparse.Namespace:
    """Fill the options left unset with the --quick or the full run's values."""
    for name, value in (quick if args.quick else full).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args
