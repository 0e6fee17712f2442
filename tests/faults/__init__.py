"""Fault injection: real workers against private PostgreSQL and Redis they can break."""
