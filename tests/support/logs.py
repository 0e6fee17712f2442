"""Reading log records in tests."""

from __future__ import annotations

import logging


def has_traceback(record: logging.LogRecord) -> bool:
    """A traceback on the record, as logged or as the redacting filter leaves it once
    installed on the ``dispatcher`` logger (rendered into ``exc_text``, see
    ``dispatcher.domain.redaction``): which one depends on the tests run before."""
    return record.exc_info is not None or bool(record.exc_text)
