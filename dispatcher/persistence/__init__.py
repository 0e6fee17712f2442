"""Persistence: the models, the engine, the migrations runner, the one place for the
differences between PostgreSQL and SQLite (``dialect``) and the store.

The only layer that builds SQL. It never commits: the services own transactions
(docs/design.md, "Layers").
"""
