"""A simulator of the IntelliSoftware SMS gateway: a real HTTP server on aiohttp.

It speaks SPEC section 1 (``sendmsg.aspx`` and ``getbalance.aspx`` under a
prefix, GET or POST, ``text/plain`` replies) and can be told to misbehave the
ways a real gateway does: latency, whole-submission transient errors, HTTP
errors, hangs, connections dropped before or after the submission was taken,
truncated and garbage replies, an empty account, numbers it refuses.

Every recipient it accepts goes into a ledger, so a test can prove that the
dispatcher never had one message accepted twice, even through the ambiguous
failures (a hang, a drop, a truncated reply) where the dispatcher cannot know.

Knobs live in ``SimulatorConfig`` and can be changed at construction, from the
command line (``python -m dispatcher.gateway.simulator --help``) and at run time
over HTTP. The control endpoints sit outside the gateway prefix, under
``/_sim/``, and are never slowed down or broken by the knobs:

- ``GET /_sim/health``                  liveness and the URLs
- ``GET /_sim/ledger?since=<i>&limit=<n>``  accepted recipients, oldest first
- ``GET /_sim/stats``                   request and outcome counters
- ``GET /_sim/config``                  the knobs (password masked, credit as it stands)
- ``POST /_sim/config``                 a JSON object of knobs to change
- ``POST /_sim/reset``                  clear ledger, stats and per-number counters and
                                        restore the starting knobs; an optional JSON
                                        object of knobs to set on top

In tests, run it in a background thread::

    with GatewaySimulator(SimulatorConfig(credit=100)) as sim:
        requests.post(sim.base_url + "/sendmsg.aspx", data={...})
        assert len(sim.ledger()) == 1
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hmac
import itertools
import json
import logging
import math
import random
import re
import signal
import socket
import sys
import threading
import time
import typing
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Final, Self

from aiohttp import web

from dispatcher.domain.message import TYPE_TEXT, TYPE_VOICE
from dispatcher.domain.parts import MAXCONCAT_MAX, MAXCONCAT_MIN, analyse
from dispatcher.errors import ConfigurationError
from dispatcher.gateway.protocol import (
    BALANCE_PATH,
    MAX_RECIPIENTS_PER_SUBMISSION,
    REDACTED,
    SEND_PATH,
)

logger = logging.getLogger("dispatcher.gateway.simulator")

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PREFIX: Final = "/smsgateway"
# `dispatcher gateway-sim` listens here unless told otherwise, so a developer's
# DISPATCHER_GATEWAY_URL can stay put between runs.
DEFAULT_CLI_PORT: Final = 8099
CONTROL_PREFIX: Final = "/_sim"

FIRST_MESSAGE_ID: Final = 10011000000000000001
"""The first message ID handed out: the vendor's own example, beyond a signed 64-bit int."""

UNLIMITED_BALANCE: Final = 1_000_000
"""What ``getbalance.aspx`` reports when the credit is unlimited."""

TRANSIENT_CODES: Final = ("GATEWAY_ERROR", "INTERNAL_ERROR")

# A stop waits this long for requests in progress (those in their latency sleep)
# before cancelling them; hangs end at once when a stop begins.
_SHUTDOWN_TIMEOUT_S: Final = 1.0
# Benchmarks open hundreds of connections at once; the default backlog of 128
# would turn a burst of connects into SYN retries and multi-second stalls.
_LISTEN_BACKLOG: Final = 2048
_TEXT_PLAIN: Final = "text/plain"

_CODE = re.compile(r"[A-Z][A-Z0-9_]*")
_RULE = re.compile(r"(?P<code>[A-Z][A-Z0-9_]*)(?:\*(?P<times>[0-9]+))?")
_ROUTABLE_NUMBER = re.compile(r"[0-9]{7,15}")  # also inlined in _process_send, for speed
_DECIMAL = re.compile(r"[0-9]{1,6}")
_NUMBER_SEPARATORS = str.maketrans("", "", " \t-()")

_RATE_KNOBS: Final = (
    "transient_error_rate",
    "http_error_rate",
    "hang_rate",
    "drop_after_accept_rate",
    "reset_before_accept_rate",
    "garbage_rate",
    "truncate_rate",
)


@dataclass(frozen=True, slots=True)
class SimulatorConfig:
    """The simulator's knobs. Every rate is a probability per request, 0 to 1.

    Faults are drawn in a fixed order, each independently, and the first that
    fires decides: ``reset_before_accept_rate``, ``http_error_rate``, a hang
    before processing (when ``hang_after_accept`` is false), then the gateway's
    own checks and ``transient_error_rate`` after the credentials, then after
    processing ``drop_after_accept_rate``, ``truncate_rate``, ``garbage_rate``
    and a hang after processing. Whatever processing accepted stays accepted, in
    the ledger, whatever happens to the reply.
    """

    username: str = "sim-user"
    password: str = field(default="sim-pass", repr=False)
    credit: int | None = None
    """Credit in SMS parts; None is unlimited."""
    latency_ms: float = 0.0
    """Added to every gateway request before it is processed."""
    latency_jitter_ms: float = 0.0
    """Latency varies uniformly by up to this much either way (never below zero)."""
    transient_error_rate: float = 0.0
    """Whole submission answered ``ERR:<transient_code>``; nothing accepted."""
    transient_code: str = "GATEWAY_ERROR"
    http_error_rate: float = 0.0
    """Answered with ``http_error_status`` and ``http_error_body``; nothing accepted."""
    http_error_status: int = 503
    http_error_body: str = "Service Unavailable"
    hang_rate: float = 0.0
    """The request waits ``hang_s`` before its reply."""
    hang_s: float = 60.0
    hang_after_accept: bool = True
    """True: accept, then hang (the ambiguous case). False: hang, then process the
    request only if the client is still connected."""
    drop_after_accept_rate: float = 0.0
    """Processed (and accepted), then the connection is aborted without a reply."""
    reset_before_accept_rate: float = 0.0
    """The request is read, then the connection is aborted; nothing accepted."""
    garbage_rate: float = 0.0
    """Processed (and accepted), then HTTP 200 with random bytes for a body."""
    truncate_rate: float = 0.0
    """Processed (and accepted), then half the reply under a Content-Length that
    promises more, then the connection is closed."""
    faults_on_balance: bool = False
    """Also apply the reset, HTTP error, hang and transient faults to
    ``getbalance.aspx``, so a balance probe sees the outage too."""
    number_rules: dict[str, str] = field(default_factory=dict)
    """Per number (keys are normalised as the gateway does): ``"<CODE>"`` answers
    that recipient ``ERR:<CODE>`` always; ``"<CODE>*<n>"`` for its first n
    submissions only, then accepts it. Setting the rules restarts the counts."""
    seed: int | None = None
    """Seed of the fault and jitter draws; None draws from the OS."""

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            value = _coerce(f.name, _KNOB_HINTS[f.name], getattr(self, f.name))
            object.__setattr__(self, f.name, value)
        object.__setattr__(self, "number_rules", _normalise_rule_keys(self.number_rules))
        self._check_ranges()

    def _check_ranges(self) -> None:
        for name in _RATE_KNOBS:
            rate = getattr(self, name)
            if not 0.0 <= rate <= 1.0:
                raise ConfigurationError(f"{name} must be between 0 and 1, got {rate}")
        for name in ("latency_ms", "latency_jitter_ms", "hang_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ConfigurationError(f"{name} must be a finite number >= 0, got {value}")
        if not self.username:
            raise ConfigurationError("username must not be empty")
        if not self.password:
            raise ConfigurationError("password must not be empty")
        if self.credit is not None and self.credit < 0:
            raise ConfigurationError(f"credit must be >= 0 or null, got {self.credit}")
        if not _CODE.fullmatch(self.transient_code):
            raise ConfigurationError(
                f"transient_code must be an upper-case code such as GATEWAY_ERROR, "
                f"got {self.transient_code!r}"
            )
        if not 300 <= self.http_error_status <= 599:
            raise ConfigurationError(
                f"http_error_status must be between 300 and 599, got {self.http_error_status}"
            )
        for number, rule in self.number_rules.items():
            _parse_rule(number, rule)

    def with_changes(self, changes: Mapping[str, object]) -> SimulatorConfig:
        """A copy with some knobs changed; ConfigurationError names a bad one."""
        unknown = sorted(set(changes) - set(_KNOB_HINTS))
        if unknown:
            raise ConfigurationError(
                f"unknown knob(s): {', '.join(unknown)}; known: {', '.join(_KNOB_HINTS)}"
            )
        # replace() runs __post_init__, which type-checks and range-checks everything.
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]

    def as_dict(self, *, redact_password: bool = True) -> dict[str, Any]:
        """The knobs as a JSON-ready dict, the password masked unless asked otherwise."""
        knobs = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        knobs["number_rules"] = dict(self.number_rules)
        if redact_password:
            knobs["password"] = REDACTED
        return knobs


# The annotations are strings until the class exists; __post_init__ uses them
# only at run time, by which point this is set.
_KNOB_HINTS: Final[dict[str, Any]] = typing.get_type_hints(SimulatorConfig)


def _coerce(name: str, hint: object, value: object) -> object:
    """``value`` as the knob's type (ints widen to float), or ConfigurationError."""
    if hint is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if hint is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if hint is bool and isinstance(value, bool):
        return value
    if hint is str and isinstance(value, str):
        return value
    if hint == int | None and (
        value is None or (isinstance(value, int) and not isinstance(value, bool))
    ):
        return value
    if (
        hint == dict[str, str]
        and isinstance(value, Mapping)
        and all(isinstance(k, str) and isinstance(v, str) for k, v in value.items())
    ):
        return dict(value)
    expected = {float: "a number", int: "an integer", bool: "true or false", str: "a string"}
    wanted = expected.get(hint, str(hint)) if isinstance(hint, type) else str(hint)
    raise ConfigurationError(f"{name} must be {wanted}, got {value!r}")


def _parse_rule(number: str, rule: str) -> tuple[str, int | None]:
    """A number rule as (code, how many submissions it applies to; None = always)."""
    match = _RULE.fullmatch(rule)
    if match is None:
        raise ConfigurationError(
            f"number rule for {number} must be CODE or CODE*<n> (e.g. INVALID_NUMBER, "
            f"GATEWAY_ERROR*2), got {rule!r}"
        )
    times = match["times"]
    return match["code"], (int(times) if times is not None else None)


def _normalise_rule_keys(rules: Mapping[str, str]) -> dict[str, str]:
    normalised: dict[str, str] = {}
    for raw, rule in rules.items():
        number = normalise_gateway_number(raw)
        if not _ROUTABLE_NUMBER.fullmatch(number):
            raise ConfigurationError(f"number rule key {raw!r} is not a 7 to 15 digit number")
        normalised[number] = rule
    return normalised


def normalise_gateway_number(raw: str) -> str:
    """A number rewritten as the gateway writes it in replies.

    Spaces, tabs, dashes and parentheses go; then a leading ``+`` or ``00`` is
    dropped, or else a leading ``0`` (a UK national number) becomes ``44``. The
    result may still be unroutable (not 7 to 15 digits): that is INVALID_NUMBER.
    """
    if raw.isdigit() and raw.isascii() and not raw.startswith("0"):
        return raw  # already international: the common case, kept cheap for benchmarks
    number = raw.translate(_NUMBER_SEPARATORS)
    if number.startswith("+"):
        return number[1:]
    if number.startswith("00"):
        return number[2:]
    if number.startswith("0"):
        return "44" + number[1:]
    return number


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


class GatewaySimulator:
    """The simulated gateway: its state, its HTTP app, and the server that runs it.

    Run it in a background thread with ``start_in_thread()`` (or as a context
    manager), or in the current event loop with ``await serve()``. ``stop()``
    ends either. State is guarded by a lock, so ``ledger()``, ``stats()``,
    ``configure()`` and ``reset()`` are safe from any thread.
    """

    def __init__(
        self,
        config: SimulatorConfig | None = None,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        prefix: str = DEFAULT_PREFIX,
    ) -> None:
        self._host = host
        self._requested_port = port
        self._prefix = "/" + prefix.strip("/") if prefix.strip("/") else ""
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

        self._port: int | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._thread_error: BaseException | None = None

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

    # ----------------------------------------------------------------- addresses

    @property
    def port(self) -> int:
        """The port listened on; known once the server has started."""
        if self._port is None:
            raise RuntimeError("the simulator is not listening yet")
        return self._port

    @property
    def origin(self) -> str:
        """``http://host:port``, with an IPv6 host in brackets."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self.port}"

    @property
    def base_url(self) -> str:
        """The gateway base URL, e.g. ``http://127.0.0.1:54321/smsgateway``."""
        return self.origin + self._prefix

    @property
    def control_url(self) -> str:
        """The control endpoints' base URL, e.g. ``http://127.0.0.1:54321/_sim``."""
        return self.origin + CONTROL_PREFIX

    # --------------------------------------------------------------- state (any thread)

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
        with self._lock:
            entries = self._ledger[max(since, 0) :]
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

    # -------------------------------------------------------------------- HTTP side

    def make_app(self) -> web.Application:
        """The aiohttp application: gateway pages under the prefix, control under /_sim."""
        app = web.Application()
        page = self._prefix + "/{page}"
        app.router.add_get(page, self._handle_gateway, allow_head=False)
        app.router.add_post(page, self._handle_gateway)
        app.router.add_get(CONTROL_PREFIX + "/health", self._handle_health, allow_head=False)
        app.router.add_get(CONTROL_PREFIX + "/ledger", self._handle_ledger, allow_head=False)
        app.router.add_get(CONTROL_PREFIX + "/stats", self._handle_stats, allow_head=False)
        app.router.add_get(CONTROL_PREFIX + "/config", self._handle_get_config, allow_head=False)
        app.router.add_post(CONTROL_PREFIX + "/config", self._handle_post_config)
        app.router.add_post(CONTROL_PREFIX + "/reset", self._handle_reset)
        return app

    async def _handle_gateway(self, request: web.Request) -> web.StreamResponse:
        # IIS serves .aspx pages case-insensitively; clients written for it rely on that.
        page = "/" + request.match_info["page"].lower()
        if page not in (SEND_PATH, BALANCE_PATH):
            raise web.HTTPNotFound(text="404 Not Found", content_type=_TEXT_PLAIN)
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
        try:
            params = await _read_params(request)
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000.0)
            if page == SEND_PATH:
                return await self._send(request, params)
            return await self._balance(request, params)
        finally:
            with self._lock:
                self._in_flight -= 1

    def _front_fault(self, *, hang_possible: bool) -> str | None:
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

    async def _front(self, request: web.Request, *, hang_possible: bool) -> web.Response | None:
        """Apply a fault that strikes before processing: its response, or None to go on."""
        with self._lock:
            fault = self._front_fault(hang_possible=hang_possible)
            cfg = self._config
            if fault == "http_error":
                self._outcomes[f"http_{cfg.http_error_status}"] += 1
            elif fault is not None:
                self._outcomes[fault] += 1
        if fault == "reset_before_accept":
            return _abort(request)
        if fault == "http_error":
            body = cfg.http_error_body
            content_type = "text/html" if body.lstrip().startswith("<") else _TEXT_PLAIN
            return web.Response(
                status=cfg.http_error_status, text=body, content_type=content_type, charset="utf-8"
            )
        if fault == "hang":
            await self._hang(cfg.hang_s)
            if _client_gone(request):
                with self._lock:
                    self._outcomes["hang_client_gone"] += 1
                return _abort(request)
        return None

    async def _send(self, request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
        with self._lock:
            hang_first = not self._config.hang_after_accept
        early = await self._front(request, hang_possible=hang_first)
        if early is not None:
            return early
        with self._lock:
            body, kind = self._process_send(params)
            self._outcomes[kind] += 1
            fault = self._back_fault()
            if fault is not None:
                self._outcomes[fault] += 1
            hang_s = self._config.hang_s
            garbage = self._rng.randbytes(self._rng.randint(16, 256)) if fault == "garbage" else b""
        if fault == "drop_after_accept":
            return _abort(request)
        if fault == "truncate":
            return await _truncated(request, body.encode())
        if fault == "garbage":
            # A NUL first keeps the body outside the reply grammar whatever the
            # random bytes happen to spell.
            return web.Response(body=b"\x00" + garbage, content_type=_TEXT_PLAIN)
        if fault == "hang":
            await self._hang(hang_s)
        return _plain(body)

    async def _balance(self, request: web.Request, params: Mapping[str, str]) -> web.StreamResponse:
        with self._lock:
            faults = self._config.faults_on_balance
        if faults:
            early = await self._front(request, hang_possible=True)
            if early is not None:
                return early
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
        return _plain(body)

    async def _hang(self, seconds: float) -> None:
        """Wait ``seconds``, or less if the simulator is stopping."""
        stopping = self._stopping
        if stopping is None:
            await asyncio.sleep(seconds)
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)

    async def _handle_health(self, request: web.Request) -> web.Response:
        return web.json_response(
            {"status": "ok", "base_url": self.base_url, "control_url": self.control_url}
        )

    async def _handle_ledger(self, request: web.Request) -> web.Response:
        try:
            since = int(request.query.get("since", "0"))
            limit = int(request.query["limit"]) if "limit" in request.query else None
        except ValueError:
            return _json_error("since and limit must be integers")
        if since < 0 or (limit is not None and limit < 0):
            return _json_error("since and limit must be >= 0")
        with self._lock:
            end = None if limit is None else since + limit
            entries = self._ledger[since:end]
        # Entries are never mutated once appended, so they serialise outside the lock.
        return web.json_response([accepted.entry(number) for number, accepted in entries])

    async def _handle_stats(self, request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _handle_get_config(self, request: web.Request) -> web.Response:
        return web.json_response(self.config().as_dict())

    async def _handle_post_config(self, request: web.Request) -> web.Response:
        changes = await _json_object(request)
        if isinstance(changes, web.Response):
            return changes
        try:
            new = self.configure(**changes)
        except ConfigurationError as exc:
            return _json_error(str(exc))
        return web.json_response(new.as_dict())

    async def _handle_reset(self, request: web.Request) -> web.Response:
        changes = await _json_object(request)
        if isinstance(changes, web.Response):
            return changes
        try:
            new = self.reset(**changes)
        except ConfigurationError as exc:
            return _json_error(str(exc))
        return web.json_response(new.as_dict())

    # ------------------------------------------------------------------ running it

    async def serve(self, on_ready: Callable[[], None] | None = None) -> None:
        """Listen and serve in the running event loop until ``stop()`` is called.

        ``on_ready`` is called once the socket is listening (``base_url`` is known).
        """
        if self._stopping is not None:
            raise RuntimeError("this simulator is already serving")
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        runner = web.AppRunner(
            self.make_app(),
            handle_signals=False,
            access_log=None,  # query strings carry passwords
            shutdown_timeout=_SHUTDOWN_TIMEOUT_S,
        )
        await runner.setup()
        sock: socket.socket | None = None
        try:
            sock = _listening_socket(self._host, self._requested_port)
            site = web.SockSite(runner, sock, backlog=_LISTEN_BACKLOG)
            await site.start()
            self._port = sock.getsockname()[1]
            logger.info("gateway simulator listening on %s", self.base_url)
            if on_ready is not None:
                on_ready()
            await self._stopping.wait()
        finally:
            self._stopping.set()  # wakes every hang so the shutdown is prompt
            await runner.cleanup()
            if sock is not None:
                sock.close()
            logger.info("gateway simulator stopped")

    def start_in_thread(self, *, timeout_s: float = 10.0) -> None:
        """Serve from a daemon thread with its own event loop; return once listening.

        Raises what stopped the server from starting (e.g. OSError: port in use).
        """
        if self._thread is not None:
            raise RuntimeError("this simulator has already been started")
        ready = threading.Event()
        self._thread = threading.Thread(
            target=self._thread_main, args=(ready,), name="gateway-simulator", daemon=True
        )
        self._thread.start()
        if not ready.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"the gateway simulator did not start within {timeout_s} s")
        if self._thread_error is not None:
            self._thread.join()
            raise self._thread_error

    def _thread_main(self, ready: threading.Event) -> None:
        try:
            asyncio.run(self.serve(on_ready=ready.set))
        except BaseException as exc:
            if not ready.is_set():
                self._thread_error = exc
            else:
                logger.exception("gateway simulator thread failed")
        finally:
            ready.set()

    def stop(self, *, timeout_s: float = 10.0) -> None:
        """Stop serving (idempotent); from another thread, wait until it has stopped.

        A stopped simulator refuses connections, which is how to model the gateway
        being unreachable.
        """
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None:
            with contextlib.suppress(RuntimeError):  # the loop has already closed
                loop.call_soon_threadsafe(stopping.set)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout_s)
            if thread.is_alive():
                raise RuntimeError(f"the gateway simulator did not stop within {timeout_s} s")

    def __enter__(self) -> Self:
        if self._thread is None:
            self.start_in_thread()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _compile_rules(rules: Mapping[str, str]) -> dict[str, _Rule]:
    return {number: _Rule(*_parse_rule(number, rule)) for number, rule in rules.items()}


def _int_param(value: str | None, *, default: int) -> int | None:
    """An optional decimal parameter: the default when absent or empty, None when bad."""
    if value is None or value == "":
        return default
    return int(value) if _DECIMAL.fullmatch(value) else None


async def _read_params(request: web.Request) -> dict[str, str]:
    """GET query and POST form merged; the form wins, and the first of repeats wins."""
    params: dict[str, str] = {}
    if request.method == "POST":
        for key, value in (await request.post()).items():
            if isinstance(value, str):
                params.setdefault(key, value)
    for key, value in request.query.items():
        params.setdefault(key, value)
    return params


def _plain(body: str) -> web.Response:
    return web.Response(text=body, content_type=_TEXT_PLAIN, charset="utf-8")


def _client_gone(request: web.Request) -> bool:
    transport = request.transport
    return transport is None or transport.is_closing()


def _abort(request: web.Request) -> web.Response:
    """Abort the connection; the response returned is never sent.

    aiohttp finds the transport closed when it writes the response and drops it
    quietly, as for a client that went away.
    """
    transport = request.transport
    if transport is not None:
        transport.abort()
    return web.Response(status=204)


async def _truncated(request: web.Request, body: bytes) -> web.StreamResponse:
    """Send headers promising the whole body, only half of it, then close."""
    response = web.StreamResponse(status=200)
    response.content_type = _TEXT_PLAIN
    response.charset = "utf-8"
    response.content_length = len(body) + 16
    await response.prepare(request)
    await response.write(body[: max(1, len(body) // 2)])
    transport = request.transport
    if transport is not None:
        # close(), not abort(): close flushes what was written, so the client
        # reliably sees a partial body and then the end of the stream.
        transport.close()
    return response


def _json_error(reason: str, status: int = 400) -> web.Response:
    return web.json_response({"error": reason}, status=status)


async def _json_object(request: web.Request) -> dict[str, object] | web.Response:
    """The request's JSON object body ({} if empty), or a 400 response."""
    raw = await request.read()
    if not raw.strip():
        return {}
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        return _json_error(f"body is not JSON: {exc}")
    if not isinstance(data, dict):
        return _json_error("body must be a JSON object of knobs")
    return data


def _listening_socket(host: str, port: int) -> socket.socket:
    """A bound, listening TCP socket; its port is known even when ``port`` is 0."""
    family, kind, proto, _, address = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(_LISTEN_BACKLOG)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


# ---------------------------------------------------------------- entry points


async def serve_forever(
    config: SimulatorConfig | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    prefix: str = DEFAULT_PREFIX,
    *,
    on_ready: Callable[[GatewaySimulator], None] | None = None,
) -> None:
    """Serve a simulator in the running loop until SIGINT or SIGTERM.

    ``on_ready`` receives the simulator once it listens (to print its URL).
    """
    simulator = GatewaySimulator(config, host=host, port=port, prefix=prefix)
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []

    def ready() -> None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            # Only the main thread of a Unix process can take signals this way.
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, simulator.stop)
                installed.append(sig)
        if on_ready is not None:
            on_ready(simulator)

    try:
        await simulator.serve(on_ready=ready)
    finally:
        for sig in installed:
            loop.remove_signal_handler(sig)


def run(
    config: SimulatorConfig | None = None,
    host: str = DEFAULT_HOST,
    port: int = 0,
    prefix: str = DEFAULT_PREFIX,
    *,
    on_ready: Callable[[GatewaySimulator], None] | None = None,
) -> None:
    """Serve a simulator until SIGINT or SIGTERM; blocks. For the CLI."""
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve_forever(config, host, port, prefix, on_ready=on_ready))


def parse_number_rules(items: Iterable[str]) -> dict[str, str]:
    """``NUMBER=RULE`` strings (as given on a command line) as a number_rules dict."""
    rules: dict[str, str] = {}
    for item in items:
        number, sep, rule = item.partition("=")
        if not sep or not number.strip() or not rule.strip():
            raise ConfigurationError(f"a number rule is NUMBER=RULE, got {item!r}")
        rules[number.strip()] = rule.strip()
    return rules


def config_from_options(**options: object) -> SimulatorConfig:
    """A config from command-line option values; None means the option was not given.

    ``number_rules`` may be a mapping or a sequence of ``NUMBER=RULE`` strings.
    Raises ConfigurationError on an unknown knob or a bad value.
    """
    changes = {name: value for name, value in options.items() if value is not None}
    rules = changes.get("number_rules")
    if isinstance(rules, Sequence) and not isinstance(rules, str):
        changes["number_rules"] = parse_number_rules(str(item) for item in rules)
    return SimulatorConfig().with_changes(changes)


def build_arg_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m dispatcher.gateway.simulator``."""
    parser = argparse.ArgumentParser(
        prog="python -m dispatcher.gateway.simulator",
        description="Run the IntelliSoftware SMS gateway simulator. Prints one JSON line "
        "with base_url and control_url once it listens.",
    )
    parser.add_argument("--host", default=DEFAULT_HOST)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port")
    parser.add_argument("--prefix", default=DEFAULT_PREFIX)
    parser.add_argument("--log-level", default="INFO")
    knobs = parser.add_argument_group("knobs (defaults as in SimulatorConfig)")
    knobs.add_argument("--username")
    knobs.add_argument("--password", help="visible to ps; fine for a simulator")
    knobs.add_argument("--credit", type=int, help="SMS parts; unlimited if not given")
    knobs.add_argument("--latency-ms", type=float)
    knobs.add_argument("--latency-jitter-ms", type=float)
    for name in _RATE_KNOBS:
        knobs.add_argument("--" + name.replace("_", "-"), type=float, metavar="RATE")
    knobs.add_argument("--transient-code", choices=TRANSIENT_CODES)
    knobs.add_argument("--http-error-status", type=int)
    knobs.add_argument("--http-error-body")
    knobs.add_argument("--hang-s", type=float)
    knobs.add_argument("--hang-after-accept", action=argparse.BooleanOptionalAction)
    knobs.add_argument("--faults-on-balance", action=argparse.BooleanOptionalAction)
    knobs.add_argument(
        "--number-rule",
        dest="number_rules",
        action="append",
        metavar="NUMBER=RULE",
        help="e.g. 447700900001=INVALID_NUMBER or 447700900002=GATEWAY_ERROR*2; repeatable",
    )
    knobs.add_argument("--seed", type=int)
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    """Parse the command line and run the simulator until interrupted."""
    parser = build_arg_parser()
    args = vars(parser.parse_args(argv))
    host, port, prefix = args.pop("host"), args.pop("port"), args.pop("prefix")
    logging.basicConfig(level=args.pop("log_level").upper(), stream=sys.stderr)
    try:
        config = config_from_options(**args)
    except ConfigurationError as exc:
        parser.error(str(exc))

    def announce(simulator: GatewaySimulator) -> None:
        urls = {"base_url": simulator.base_url, "control_url": simulator.control_url}
        print(json.dumps(urls), flush=True)

    run(config, host, port, prefix, on_ready=announce)
