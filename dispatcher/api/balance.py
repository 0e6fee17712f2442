"""The drop-in ``getbalance.aspx``'s answer, from a short cache.

Every caller of the drop-in balance would otherwise cost a gateway call, and the
gateway is the dispatcher's own account: a client polling it in a loop must not
turn into load on the gateway, nor into a way to make the dispatcher's account
look abusive. The answer (a balance or an ``ERR:`` line) is kept for
``DISPATCHER_BALANCE_CACHE_S``; callers in that time share it, and callers that
arrive while it is being fetched wait for that one call.
"""

from __future__ import annotations

import logging
import threading
import time

from dispatcher.errors import ConfigurationError, GatewayError, PermanentGatewayError
from dispatcher.service.dispatcher import Dispatcher

log = logging.getLogger(__name__)


def format_balance(balance: float) -> str:
    """A balance as the gateway writes it: ``1234``, ``12.5``."""
    if balance.is_integer():
        return str(int(balance))
    return f"{balance:.4f}".rstrip("0").rstrip(".")


def ask_gateway(service: Dispatcher) -> str:
    """The gateway's balance as the drop-in answers it, asked now."""
    try:
        return f"BALANCE:{format_balance(service.client.balance())}"
    except PermanentGatewayError as exc:
        # The dispatcher's own gateway account was refused: the caller's credentials
        # were fine, so LOGIN_INVALID would mislead it.
        log.error("drop-in balance: the gateway refused our account (%s)", exc.code)
        return "ERR:INTERNAL_ERROR"
    except GatewayError as exc:
        log.warning("drop-in balance: the gateway did not answer (%s)", type(exc).__name__)
        return "ERR:GATEWAY_ERROR"
    except ConfigurationError:
        log.error("drop-in balance: no gateway credentials configured for this server")
        return "ERR:INTERNAL_ERROR"


class BalanceCache:
    """One gateway balance call per ``ttl_s``, shared by every caller of this process."""

    def __init__(self, service: Dispatcher, *, ttl_s: float) -> None:
        self.service = service
        self.ttl_s = ttl_s
        self._lock = threading.Lock()
        self._answer: str | None = None
        self._fetched_at = 0.0

    def answer(self) -> str:
        """``BALANCE:<n>`` or ``ERR:<CODE>``, at most ``ttl_s`` old."""
        # Held across the call on purpose: callers arriving meanwhile wait for its
        # answer rather than each asking the gateway.
        with self._lock:
            now = time.monotonic()
            if self._answer is None or now - self._fetched_at >= self.ttl_s:
                self._answer = ask_gateway(self.service)
                self._fetched_at = time.monotonic()
            return self._answer
