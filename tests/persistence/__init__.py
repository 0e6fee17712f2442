"""Tests of dispatcher.persistence: migrations, the store and its SQL on SQLite and PostgreSQL."""
