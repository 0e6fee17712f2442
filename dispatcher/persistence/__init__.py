"""Persistence: the models, the engine, the migrations runner and the store.

The only layer that builds SQL. It never commits: the services own transactions
(docs/design.md, "Layers").
"""
