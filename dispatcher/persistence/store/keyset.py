"""Keyset pagination: a page is the rows strictly after the last key seen, so a
listing continues exactly while rows arrive, and every page is one index range scan."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, Select
from sqlalchemy.orm import QueryableAttribute, Session

AnySelect = Select[*tuple[Any, ...]]
KeyColumn = ColumnElement[Any] | QueryableAttribute[Any]
"""A column of a keyset: a model attribute or an expression."""


def keyset_after(key: Sequence[KeyColumn], values: Sequence[Any]) -> ColumnElement[bool]:
    """Rows strictly after ``values`` in the order of ``key``.

    Written as ``k0 >= v0 AND (k0 > v0 OR (k0 = v0 AND ...))`` rather than a row
    comparison, so an index whose first column is ``k0`` bounds the scan on every
    database.
    """
    head, rest = key[0], key[1:]
    after: ColumnElement[bool] = head > values[0]
    if not rest:
        return after
    tie: ColumnElement[bool] = head == values[0]
    bound: ColumnElement[bool] = head >= values[0]
    return bound & (after | (tie & keyset_after(rest, values[1:])))


def keyset_page(
    session: Session,
    *,
    query: AnySelect,
    key: Sequence[KeyColumn],
    after: Sequence[Any] | None,
    limit: int,
) -> list[Any]:
    """One page of ``query`` in the order of ``key``, strictly after ``after``.

    Each row ends with the values of ``key``, to pass back as ``after`` for the next page.
    """
    if after is not None:
        query = query.where(keyset_after(key, after))
    query = query.add_columns(*(column.label(f"_key{i}") for i, column in enumerate(key)))
    return list(session.execute(query.order_by(*key).limit(limit)))
