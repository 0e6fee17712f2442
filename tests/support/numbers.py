"""Recipient numbers for tests: the UK drama range, which no real phone answers."""

from __future__ import annotations


def number(index: int) -> str:
    """A number of the 07700 900xxx drama range, in international digits."""
    return f"4477009{index:05d}"
