"""Markdown pieces every part of the report writes with."""

from __future__ import annotations


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A Markdown table's lines."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def number(value: float, digits: int = 2) -> str:
    """``value`` rounded, or ``n/a`` for NaN (a series with no rounds)."""
    return "n/a" if value != value else f"{value:.{digits}f}"
