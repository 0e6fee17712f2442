"""The simulator's knobs: ``SimulatorConfig``, its checks, and the scenario parsing.

A config is frozen and checked whole at construction: every knob is coerced to
its annotated type and range-checked, and number rules are parsed, so a bad
knob is a ConfigurationError before the simulator ever changes. The same
checks serve the constructor, ``python -m dispatcher.gateway.simulator``
(``config_from_options``) and ``POST /_sim/config`` (``with_changes``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from dispatcher.errors import ConfigurationError
from dispatcher.gateway.protocol import REDACTED

DEFAULT_HOST: Final = "127.0.0.1"
DEFAULT_PREFIX: Final = "/smsgateway"
# `dispatcher gateway-sim` listens here unless told otherwise, so a developer's
# DISPATCHER_GATEWAY_URL can stay put between runs.
DEFAULT_CLI_PORT: Final = 8099
TRANSIENT_CODES: Final = ("GATEWAY_ERROR", "INTERNAL_ERROR")

_CODE = re.compile(r"[A-Z][A-Z0-9_]*")
_RULE = re.compile(r"(?P<code>[A-Z][A-Z0-9_]*)(?:\*(?P<times>[0-9]+))?")
_ROUTABLE_NUMBER = re.compile(r"[0-9]{7,15}")  # also inlined in engine.py, for speed
_NUMBER_SEPARATORS = str.maketrans("", "", " \t-()")

RATE_KNOBS: Final = (
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
        for name in RATE_KNOBS:
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
            parse_rule(number, rule)

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


def parse_rule(number: str, rule: str) -> tuple[str, int | None]:
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
