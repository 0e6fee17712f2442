"""Tests of dispatcher.service: the use cases driven in-process on SQLite and PostgreSQL."""
