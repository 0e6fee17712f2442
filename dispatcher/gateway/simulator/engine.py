"""The simulated gateway's state and decisions, without HTTP.

``SimulatorEngine`` holds what a gateway account holds (the knobs, the credit
that remains, the per-number rule counts, the next message ID), the ledger of
accepted recipients and the counters, and decides each request: which fault
strikes, drawn in the order ``SimulatorConfig`` documents, and what a submission
or a balance probe answers (the protocol facts of docs/design.md section 1). It
never touches a socket; ``server.py`` turns its decisions into HTTP.

One lock guards all of the state, and each public method takes it once, so the
methods are safe from any thread and a submission is atomic: credit, ledger and
per-number counts move together or not at all.
"""

from __future__ import annotations

import dataclasses
import hmac
import itertools
import logging
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final, NamedTuple

from dispatcher.domain.message import TYPE_TEXT, TYPE_VOICE
from dispatcher.domain.parts import MAXCONCAT_MAX, MAXCONCAT_MIN, analyse
from dispatcher.gateway.protocol import MAX_RECIPIENTS_PER_SUBMISSION
from dispatcher.gateway.simulator.config import (
    SimulatorConfig,
    normalise_gateway_number,
    parse_rule,
)

# The package's name, as before the split, so logging configuration finds it.
logger = logging.getLogger("dispatcher.gateway.simulator")

FIRST_MESSAGE_ID: Final = 10011000000000000001
"""The first message ID handed out: the vendor's own example, beyond a signed 64-bit int."""

UNLIMITED_BALANCE: Final = 1_000_000
"""What ``getbalance.aspx`` reports when the credit is unlimited."""

_DECIMAL = re.compile(r"[0-9]{1,6}")


@dataclass(frozen=True, slots=True)
class _Submission:
    """A submission's parameters once they have passed the gateway's checks."""

    raw_numbers: list[str]
    text: str
    sender: str | None
    usercontext: str | None
    message_type: int
    maxconcat: int
    parts: int


@dataclass(frozen=True, slots=True)
class _Accepted:
    """One accepted submission, shared by its recipients' ledger entries."""

    message_id: str
    submission: _Submission
    at: float

    def entry(self, number: str) -> dict[str, Any]:
        """The ledger entry of one of its recipients."""
        submission = self.submission
        return {
            "number": number,
            "message_id": self.message_id,
            "text": submission.text,
            "sender": submission.sender,
            "usercontext": submission.usercontext,
            "type": submission.message_type,
            "maxconcat": submission.maxconcat,
            "parts": submission.parts,
            "at": self.at,
        }


@dataclass(slots=True)
class _Rule:
    code: str
    times: int | None
    seen: int = 0


class SendReply(NamedTuple):
    """What the engine decided for one submission; the server sends it."""

    body: str
    """The reply body, as the gateway would write it."""
    fault: str | None
    """What happens to the reply: ``drop_after_accept``, ``truncate``,
    ``garbage``, ``hang`` or None (sent as it is)."""
    hang_s: float
    garbage: bytes
    """The random body of a ``garbage`` fault; empty otherwise."""


class SimulatorEngine:
    """The gateway's state and logic; every public method is safe from any thread."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self._lock = threading.Lock()
        self._config = config or SimulatorConfig()
        self._initial_config = self._config
        self._credit = self._config.credit
        self._rng = random.Random(self._config.seed)
        self._rules = _compile_rules(self._config.number_rules)
        # (number, its submission) pairs: one tuple per recipient keeps a 100-recipient
        # submission cheap; the entry dicts are built when the ledger is read.
        self._ledger: list[tuple[str, _Accepted]] = []
        self._next_id = FIRST_MESSAGE_ID
        self._reset_counters()

    def _reset_counters(self) -> None:
        self._requests_total = 0
        self._requests_by_path: Counter[str] = Counter()
        self._outcomes: Counter[str] = Counter()
        self._recipient_errors: Counter[str] = Counter()
        self._submissions_accepted = 0
        self._recipients_accepted = 0
        self._in_flight = 0
        self._max_in_flight = 0
        self._stats_since = time.time()

    # --------------------------------------------------------------- knobs and ledger

    def config(self) -> SimulatorConfig:
        """The knobs as they stand, with the credit that remains."""
        with self._lock:
            return dataclasses.replace(self._config, credit=self._credit)

    def configure(self, **knobs: object) -> SimulatorConfig:
        """Change some knobs at once; returns the new config.

        Raises ConfigurationError, changing nothing, on an unknown knob or a bad
        value. Setting ``credit`` replaces the remaining credit; setting ``seed``
        reseeds the draws; setting ``number_rules`` restarts their counts.
        """
        with self._lock:
            new = self._config.with_changes(knobs)
            self._apply(new, knobs.keys())
            logger.debug("simulator reconfigured: %s", sorted(knobs))
            return dataclasses.replace(new, credit=self._credit)

    def reset(self, config: SimulatorConfig | None = None, /, **knobs: object) -> SimulatorConfig:
        """Clear the ledger, the stats and the per-number counts; restore the knobs.

        Every knob goes back to the config the simulator was built with (or to
        ``config``), then ``knobs`` are applied on top; so the credit is whole again
        and the draws are reseeded from ``seed``. Message IDs keep counting up: a
        real gateway never reuses one.
        """
        with self._lock:
            new = (config or self._initial_config).with_changes(knobs)
            self._ledger = []
            in_flight = self._in_flight
            self._reset_counters()
            # Requests still in flight will decrement the counter when they end.
            self._in_flight = in_flight
            self._apply(new, [f.name for f in dataclasses.fields(new)])
            return dataclasses.replace(new, credit=self._credit)

    def _apply(self, new: SimulatorConfig, changed: Iterable[str]) -> None:
        """Install a validated config; the caller holds the lock."""
        self._config = new
        changed = set(changed)
        if "credit" in changed:
            self._credit = new.credit
        if "seed" in changed:
            self._rng.seed(new.seed)
        if "number_rules" in changed:
            self._rules = _compile_rules(new.number_rules)

    def ledger(self, since: int = 0) -> list[dict[str, Any]]:
        """A copy of the accepted recipients from index ``since``, oldest first.

        Each entry: ``number``, ``message_id``, ``text``, ``sender``,
        ``usercontext``, ``type``, ``maxconcat``, ``parts``, ``at`` (unix time).
        """
        return self.ledger_page(max(since, 0), None)

    def ledger_page(self, since: int, limit: int | None) -> list[dict[str, Any]]:
        """Up to ``limit`` entries (all if None) from index ``since``, which is >= 0."""
        with self._lock:
            end = None if limit is None else since + limit
            entries = self._ledger[since:end]
        # Entries are never mutated once appended, so they serialise outside the lock.
        return [accepted.entry(number) for number, accepted in entries]

    def stats(self) -> dict[str, Any]:
        """Counters since the start or the last reset.

        ``requests_by_path`` is keyed by page (``/sendmsg.aspx``, ``/getbalance.aspx``);
        control requests are not counted anywhere. ``in_flight`` and
        ``max_in_flight`` count gateway requests being handled, hangs included.
        ``outcomes`` counts gateway requests by kind: ``accepted`` (a submission
        with at least one recipient accepted), ``rejected`` (every recipient
        refused on its own line), ``ERR:<CODE>`` (the whole submission),
        ``http_<status>``, ``reset_before_accept``, ``drop_after_accept``,
        ``truncate``, ``garbage``, ``hang``, ``hang_client_gone`` (hung before
        processing and the client left), and ``balance:<result>`` for balance requests.
        """
        with self._lock:
            return {
                "requests_total": self._requests_total,
                "requests_by_path": dict(self._requests_by_path),
                "outcomes": dict(self._outcomes),
                "recipient_errors": dict(self._recipient_errors),
                "submissions_accepted": self._submissions_accepted,
                "recipients_accepted": self._recipients_accepted,
                "ledger_size": len(self._ledger),
                "in_flight": self._in_flight,
                "max_in_flight": self._max_in_flight,
                "credit": self._credit,
                "since": self._stats_since,
            }

    # --------------------------------------------------------- deciding a request

    def begin_request(self, page: str) -> float:
        """Count a gateway request as it arrives; returns its latency in ms, jitter drawn."""
        with self._lock:
            self._requests_total += 1
            self._requests_by_path[page] += 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
            cfg = self._config
            delay_ms = cfg.latency_ms
            if cfg.latency_jitter_ms > 0:
                jitter_ms = cfg.latency_jitter_ms
                delay_ms = max(0.0, delay_ms + self._rng.uniform(-jitter_ms, jitter_ms))
        return delay_ms

    def end_request(self) -> None:
        """Count a gateway request out of flight, however it ended."""
        with self._lock:
            self._in_flight -= 1

    def knobs(self) -> SimulatorConfig:
        """The knobs as they stand, the credit as configured (``config()`` has what remains)."""
        with self._lock:
            return self._config

    def front_fault(self, *, hang_possible: bool) -> tuple[str | None, SimulatorConfig]:
        """Draw and count the fault that strikes before processing, if any.

        Returns ``reset_before_accept``, ``http_error``, ``hang`` or None, with
        the knobs it was drawn under (they say how the fault behaves).
        """
        with self._lock:
            fault = self._draw_front_fault(hang_possible=hang_possible)
            cfg = self._config
            if fault == "http_error":
                self._outcomes[f"http_{cfg.http_error_status}"] += 1
            elif fault is not None:
                self._outcomes[fault] += 1
        return fault, cfg

    def count_outcome(self, outcome: str) -> None:
        """Count an outcome that only the server sees (``hang_client_gone``)."""
        with self._lock:
            self._outcomes[outcome] += 1

    def send(self, params: Mapping[str, str]) -> SendReply:
        """Process a submission and draw the fault that strikes after it, if any.

        Whatever is accepted here stays in the ledger, whatever the fault does
        to the reply.
        """
        with self._lock:
            body, kind = self._process_send(params)
            self._outcomes[kind] += 1
            fault = self._back_fault()
            if fault is not None:
                self._outcomes[fault] += 1
            hang_s = self._config.hang_s
            garbage = self._rng.randbytes(self._rng.randint(16, 256)) if fault == "garbage" else b""
        return SendReply(body, fault, hang_s, garbage)

    def balance(self, params: Mapping[str, str], *, faults: bool) -> str:
        """The body of a balance reply; ``faults`` also draws the transient error."""
        with self._lock:
            code = self._check_credentials(params)
            if code is None and faults and self._draw(self._config.transient_error_rate):
                code = self._config.transient_code
            if code is None:
                balance = UNLIMITED_BALANCE if self._credit is None else self._credit
                body = f"BALANCE:{balance}"
                self._outcomes["balance:ok"] += 1
            else:
                body = f"ERR:{code}"
                self._outcomes[f"balance:{body}"] += 1
        return body

    # ------------------------------------------------------------- the gateway logic

    def _draw(self, rate: float) -> bool:
        # No draw for a knob that is off, so turning one knob on does not shift
        # the sequence another seeded test depends on.
        return rate > 0.0 and (rate >= 1.0 or self._rng.random() < rate)

    def _check_credentials(self, params: Mapping[str, str]) -> str | None:
        username = params.get("username", "")
        if not username:
            return "NO_USERNAME"
        password = params.get("password", "")
        if not password:
            return "NO_PASSWORD"
        cfg = self._config
        # Both compared in full, so the reply time tells nothing about either.
        user_ok = hmac.compare_digest(username.encode(), cfg.username.encode())
        password_ok = hmac.compare_digest(password.encode(), cfg.password.encode())
        if not (user_ok and password_ok):
            return "LOGIN_INVALID"
        return None

    def _check_submission(self, params: Mapping[str, str]) -> _Submission | str:
        """The submission's parameters checked in the gateway's order, or its error code."""
        code = self._check_credentials(params)
        if code is not None:
            return code
        if self._draw(self._config.transient_error_rate):
            return self._config.transient_code
        raw_numbers = [n.strip() for n in params.get("to", "").split(",")]
        raw_numbers = [n for n in raw_numbers if n]
        if not raw_numbers:
            return "NO_TO"
        text = params.get("text", "")
        if not text:
            return "NO_TEXT"
        if len(raw_numbers) > MAX_RECIPIENTS_PER_SUBMISSION:
            return "INVALID_REQUEST"
        maxconcat = _int_param(params.get("maxconcat"), default=1)
        if maxconcat is None or not MAXCONCAT_MIN <= maxconcat <= MAXCONCAT_MAX:
            return "INVALID_REQUEST"
        message_type = _int_param(params.get("type"), default=TYPE_TEXT)
        if message_type not in (TYPE_TEXT, TYPE_VOICE):
            return "INVALID_REQUEST"
        parts = analyse(text).parts
        if parts > maxconcat:
            return "INVALID_REQUEST"
        return _Submission(
            raw_numbers=raw_numbers,
            text=text,
            sender=params.get("from") or None,
            usercontext=params.get("usercontext") or None,
            message_type=message_type,
            maxconcat=maxconcat,
            parts=parts,
        )

    def _process_send(self, params: Mapping[str, str]) -> tuple[str, str]:
        """Process one submission as the gateway would: (reply body, outcome kind).

        The caller holds the lock, so a submission is atomic: credit, ledger and
        per-number counts move together or not at all.
        """
        submission = self._check_submission(params)
        if isinstance(submission, str):
            return f"ERR:{submission}", f"ERR:{submission}"
        raw_numbers, parts = submission.raw_numbers, submission.parts

        numbers = list(dict.fromkeys(map(normalise_gateway_number, raw_numbers)))
        errors: dict[str, str] = {}
        ruled: list[_Rule] = []
        for number in numbers:
            if not (7 <= len(number) <= 15 and number.isdigit() and number.isascii()):
                errors[number] = "INVALID_NUMBER"
                continue
            rule = self._rules.get(number)
            if rule is not None:
                ruled.append(rule)
                if rule.times is None or rule.seen < rule.times:
                    errors[number] = rule.code
        routable = [n for n in numbers if n not in errors] if errors else numbers
        cost = parts * len(routable)
        if self._credit is not None and self._credit < cost:
            return "ERR:INSUFFICIENT_CREDIT", "ERR:INSUFFICIENT_CREDIT"

        for rule in ruled:
            rule.seen += 1
        for error in errors.values():
            self._recipient_errors[error] += 1
        message_id = ""
        if routable:
            message_id = str(self._next_id)
            self._next_id += 1
            if self._credit is not None:
                self._credit -= cost
            self._submissions_accepted += 1
            self._recipients_accepted += len(routable)
            accepted = _Accepted(message_id, submission, time.time())
            self._ledger.extend(zip(routable, itertools.repeat(accepted)))
        kind = "accepted" if routable else "rejected"
        if len(numbers) == 1:
            number = numbers[0]
            return (f"ERR:{errors[number]}" if number in errors else f"ID:{message_id}"), kind
        lines = [f"{n},ERR:{errors[n]}" if n in errors else f"{n},ID:{message_id}" for n in numbers]
        return "\r\n".join(lines) + "\r\n", kind

    def _draw_front_fault(self, *, hang_possible: bool) -> str | None:
        """The fault that strikes before processing, if any; the caller holds the lock."""
        cfg = self._config
        if self._draw(cfg.reset_before_accept_rate):
            return "reset_before_accept"
        if self._draw(cfg.http_error_rate):
            return "http_error"
        if hang_possible and self._draw(cfg.hang_rate):
            return "hang"
        return None

    def _back_fault(self) -> str | None:
        """The fault that strikes after processing, if any; the caller holds the lock."""
        cfg = self._config
        if self._draw(cfg.drop_after_accept_rate):
            return "drop_after_accept"
        if self._draw(cfg.truncate_rate):
            return "truncate"
        if self._draw(cfg.garbage_rate):
            return "garbage"
        if cfg.hang_after_accept and self._draw(cfg.hang_rate):
            return "hang"
        return None


def _compile_rules(rules: Mapping[str, str]) -> dict[str, _Rule]:
    return {number: _Rule(*parse_rule(number, rule)) for number, rule in rules.items()}


def _int_param(value: str | None, *, default: int) -> int | None:
    """An optional decimal parameter: the default when absent or empty, None when bad."""
    if value is None or value == "":
        return default
    return int(value) if _DECIMAL.fullmatch(value) else None
