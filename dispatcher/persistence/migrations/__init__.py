"""Alembic migrations: a package of their own, so a wheel ships them and ``dispatcher migrate``
runs from any install."""
