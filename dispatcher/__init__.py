"""sms-dispatcher: a queued, audited dispatcher for the IntelliSoftware SMS gateway.

from dispatcher import send
job_id = send(["+44 7700 900123", "07700 900456"], "Your code is 123456")
"""

from __future__ import annotations

from collections.abc import Iterable

__version__ = "0.1.0"
__all__ = ["__version__", "send"]


def send(
    to: str | Iterable[str],
    text: str,
    *,
    sender: str | None = None,
    maxconcat: int = 1,
    kind: str = "text",
) -> str:
    """Queue ``text`` for the numbers in ``to`` and return the job id.

    ``to`` is one number, several separated by commas, or an iterable of numbers,
    in international or national (default region) form. The job is committed to
    the database before this returns; numbers that cannot be phone numbers are
    recorded as failed with the reason, and the rest are sent by the workers.

    Raises ``dispatcher.errors.ValidationError`` (and writes nothing) when no
    number is usable, the text is empty or needs more than ``maxconcat`` parts,
    ``maxconcat`` is out of range, ``kind`` is not "text" or "voice", or the
    sender is neither up to 11 alphanumerics nor up to 15 digits.
    """
    from dispatcher import runtime

    result = runtime.service().enqueue(
        to, text, sender=sender, maxconcat=maxconcat, kind=kind, actor="python"
    )
    return result.job_id
