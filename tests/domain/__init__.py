"""Tests of dispatcher.domain: pure values and rules, no database, no network."""
