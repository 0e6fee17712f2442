"""Tests of dispatcher.dashboard over real HTTP (in a real browser: ``tests/browser``)."""
