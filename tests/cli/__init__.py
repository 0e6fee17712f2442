"""Tests of dispatcher.cli: the ``dispatcher`` command run as a child process."""
