"""Alembic migrations, shipped inside the package as ``dispatcher.migrations``."""
