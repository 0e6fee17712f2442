"""The use cases: enqueue, dispatch, sweep, operator actions, keys, webhooks, audit.

Each service owns its transactions and returns typed views; entry points call them
and never the store (docs/design.md, "Layers").
"""
