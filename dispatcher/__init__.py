"""sms-dispatcher: a queued, audited dispatcher for the IntelliSoftware SMS gateway.

from dispatcher import send
job_id = send(["+44 7700 900123", "07700 900456"], "Your code is 123456")
"""

from __future__ import annotations

import datetime as dt
import warnings
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
    send_at: dt.datetime | None = None,
    priority: str = "normal",
    valid_for_s: float | None = None,
    idempotency_key: str | None = None,
    reference: str | None = None,
) -> str:
    """Queue ``text`` for the numbers in ``to`` and return the job id.

    ``to`` is one number, several separated by commas, or an iterable of numbers,
    in international or national (default region) form. The job is committed to
    the database before this returns; numbers that cannot be phone numbers are
    recorded as failed with the reason, and the rest are sent by the workers.

    Raises ``dispatcher.errors.ValidationError`` (and writes nothing) when no
    number is usable, ``to`` names more numbers than ``DISPATCHER_MAX_RECIPIENTS_PER_JOB``
    (``TooManyRecipientsError``), the text is empty or needs more than ``maxconcat`` parts,
    ``maxconcat`` is out of range, ``kind`` is not "text" or "voice", or the
    sender is neither up to 11 alphanumerics nor up to 15 digits. With no sender,
    ``DISPATCHER_DEFAULT_SENDER`` is used (if set). ``kind="voice"`` has the
    gateway read the text out (``type=6``).

    ``send_at`` (a timezone-aware datetime; a naive one is refused) holds the job
    until then; it can be cancelled before. ``priority`` is ``"high"`` (one-time
    passwords), ``"normal"`` or ``"bulk"``: due high work is always claimed first.
    ``valid_for_s`` (default ``DISPATCHER_DEFAULT_VALIDITY_S``, none if unset):
    recipients still unsent that long after the send time end ``expired`` instead
    of arriving late.

    ``idempotency_key``: a second call with the same key and the same arguments
    returns the first job's id and sends nothing; with other arguments it raises
    ``dispatcher.errors.ConflictError``. ``reference`` is your own label for the
    job, searchable later (``dispatcher jobs --reference``).
    """
    # Imported on the first send, not with the package: `import dispatcher.errors`
    # (or this module's __version__) must not build the settings, the database and
    # the Celery app of the composition root.
    from dispatcher import runtime
    from dispatcher.errors import NoWorkerWarning

    service = runtime.producer()
    request = service.send_request(
        to,
        text,
        sender=sender,
        maxconcat=maxconcat,
        kind=kind,
        send_at=send_at,
        priority=priority,
        valid_for_s=valid_for_s,
        idempotency_key=idempotency_key,
        reference=reference,
    )
    result = service.enqueue_request(request, actor="python")
    if result.batches and runtime.unserved_lane_news(request.priority):
        warnings.warn(
            f"job {result.job_id} is queued in the {request.priority} lane, which no live "
            "worker consumes: it and the lane's later jobs wait until one does (`dispatcher "
            "state` lists them; this warning comes at most once a minute per lane)",
            NoWorkerWarning,
            stacklevel=2,
        )
    return result.job_id
