"""Reading what a request carries, and answering an action.

Form times and the ``?done=`` banner are checked here, so a route never converts
a raw value itself (a page cursor is checked by the read it continues). A
service's refusal becomes a ``DashboardError`` with its reason and the status of
the table every entry point shares, ``dispatcher.errors.ANSWERS`` (``refusal``,
``service_call``): a ValidationError is a 422 here as in ``/v1``. An action is
answered with a redirect (``redirect``), so a reload never repeats it, and only
to a path on this site (``safe_next``).
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from fastapi.responses import RedirectResponse

from dispatcher.dashboard.routes.base import DashboardError
from dispatcher.domain.statuses import RETRYABLE_STATUSES, WAITING_STATUSES
from dispatcher.domain.times import parse_time
from dispatcher.errors import DispatcherError, ValidationError, answer_for

log = logging.getLogger(__name__)

RETRYABLE = tuple(s.value for s in RETRYABLE_STATUSES)
CANCELLABLE = tuple(s.value for s in WAITING_STATUSES)
# Larger counts in a ?n= link are not from an action of ours.
MAX_SHOWN_COUNT = 10**9

DONE_MESSAGES = {
    "retried": "{n} recipient(s) queued again.",
    "cancelled": "{n} recipient(s) cancelled.",
    "settled": "{n} recipient(s) settled.",
    "acknowledged": "{n} unknown recipient(s) acknowledged: the alert waits for new ones.",
    "paused": "Dispatch paused.",
    "resumed": "Dispatch resumed.",
}


def safe_next(value: str | None) -> str:
    # Only a path on this site: never an open redirect to another host.
    if not value or not value.startswith("/") or value.startswith("//") or "\\" in value:
        return "/"
    return value


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


def whole_number(value: str, most: int) -> int | None:
    """``value`` as an int from 0 to ``most`` if it is written in ASCII digits, else None
    (``int()`` also takes other scripts' digits and would convert any length)."""
    if not (value.isascii() and value.isdigit()) or len(value) > len(str(most)):
        return None
    number = int(value)
    return number if number <= most else None


def form_time(name: str, value: str | None) -> dt.datetime | None:
    """A time from a form: ISO 8601, a date, or a datetime-local (read as UTC)."""
    if value is None or not value.strip():
        return None
    try:
        return parse_time(value, name)
    except ValidationError as exc:
        raise refusal(exc) from None


def done_message(done: str | None, n: str | None, left: str | None = None) -> str | None:
    template = DONE_MESSAGES.get(done or "")
    if template is None:
        return None
    message = template.format(n=whole_number(n or "", MAX_SHOWN_COUNT) or 0)
    kept = whole_number(left or "", MAX_SHOWN_COUNT)
    if done == "retried" and kept:
        message += f" {kept} left as they were: the page says why."
    return message


def refusal(exc: DispatcherError) -> DashboardError:
    """``exc`` as an error page: the table's status, and the reason, which the operator
    can act on; a server fault's reason goes to the log instead."""
    status = answer_for(exc).status
    if status >= 500:
        log.error("dashboard request failed: %s", type(exc).__name__, exc_info=exc)
        return DashboardError(status, "The request failed on the server; the log says why.")
    return DashboardError(status, str(exc))


def service_call(fn: Any, *args: Any, **kwargs: Any) -> Any:
    """Call a service function, or a read given a cursor; its refusals become HTML pages
    with their reason (a cursor that is not the listing's: 400)."""
    try:
        return fn(*args, **kwargs)
    except DispatcherError as exc:
        raise refusal(exc) from None
