"""The soak's checker: the guarantees (docs/design.md, "Guarantees") held to the
gateway's ledger and the database once the run has drained.

Each invariant counts what it checked and what broke it, with a few examples, so a
broken run says where to look; ``Checked.holds`` is the verdict. The checker reads
only what a user can read (the database, the simulator's ledger) and what the
producers were told, never the dispatcher's internals.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select

from dispatcher.domain.statuses import FINAL_STATUSES, AttemptOutcome, BatchStatus, RecipientStatus
from dispatcher.domain.workers import fresh_after
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import (
    Attempt,
    Batch,
    DispatchControl,
    Job,
    Recipient,
    StatusEvent,
    WorkerHeartbeat,
)
from ops.soak.faults import UNKNOWN_CAPABLE, Fired
from ops.soak.load import Acknowledged
from ops.soak.stack import REFUSED

EXAMPLES = 5
# A call can start this long before a fault and still be caught by it: the connect
# and read timeouts (1 + 2 s in ``ops.soak.stack.SETTINGS``) and some slack.
BEFORE_FAULT_S = 5.0
AFTER_FAULT_S = 2.0
SWEEP_SLACK_S = 5.0


@dataclass
class Invariant:
    """One guarantee: its rule, how many things it checked and those that broke it."""

    name: str
    rule: str
    checked: int = 0
    broken: int = 0
    examples: list[str] = field(default_factory=list)

    def breaks(self, example: str) -> None:
        """Count one breach (and keep it as an example while there are few)."""
        self.broken += 1
        if len(self.examples) < EXAMPLES:
            self.examples.append(example)

    @property
    def holds(self) -> bool:
        """Whether nothing broke it."""
        return self.broken == 0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "name": self.name,
            "rule": self.rule,
            "checked": self.checked,
            "broken": self.broken,
            "holds": self.holds,
            "examples": self.examples,
        }


@dataclass
class Checked:
    """The verdict of a run, with the counts the report prints."""

    invariants: list[Invariant]
    by_status: Counter[str]
    by_code: Counter[str]
    attempts: int
    ledger: int

    @property
    def holds(self) -> bool:
        """Whether every invariant held."""
        return all(i.holds for i in self.invariants)


@dataclass(frozen=True)
class _Row:
    id: int
    job_id: str
    batch_id: int | None
    number: str
    text: str
    status: str
    code: str | None
    message_id: str | None


def epoch(value: dt.datetime) -> float:
    """Seconds since the epoch of a stored time (naive means UTC)."""
    return (value if value.tzinfo else value.replace(tzinfo=dt.UTC)).timestamp()


def check(
    db: Database,
    *,
    ledger: Sequence[Mapping[str, Any]],
    acknowledged: Iterable[Acknowledged],
    fired: Sequence[Fired],
    gateway_requests: int,
    submitting_timeout_s: float,
    now: float,
    workers: Sequence[str] = (),
    heartbeat_interval_s: float = 2.0,
) -> Checked:
    """Hold the drained run to every invariant; ``workers`` are the node names of the
    worker processes still running."""
    absent = absent_workers(db, workers, now=now, interval_s=heartbeat_interval_s)
    with db.transaction() as session:
        rows = [
            _Row(
                r.id,
                r.job_id,
                r.batch_id,
                r.number,
                text,
                str(r.status),
                r.error_code,
                r.gateway_message_id,
            )
            for r, text in session.execute(
                select(Recipient, Job.text).join(Job, Job.id == Recipient.job_id)
            )
        ]
        attempts = {a.id: a for a in session.scalars(select(Attempt))}
        for attempt in attempts.values():
            session.expunge(attempt)
        unknown_events = list(
            session.execute(
                select(StatusEvent.recipient_id, StatusEvent.attempt_id).where(
                    StatusEvent.to_status == RecipientStatus.UNKNOWN
                )
            )
        )
        retried_unknown = {
            rid
            for (rid,) in session.execute(
                select(StatusEvent.recipient_id).where(
                    StatusEvent.from_status == RecipientStatus.UNKNOWN,
                    StatusEvent.to_status == RecipientStatus.QUEUED,
                )
            )
        }
        stale = [
            (b.id, b.claimed_at)
            for b in session.scalars(select(Batch).where(Batch.status == BatchStatus.SUBMITTING))
            if b.claimed_at is None
            or now - epoch(b.claimed_at) > submitting_timeout_s + SWEEP_SLACK_S
        ]
        batches = int(session.query(Batch).count())
        control = session.get(DispatchControl, 1)
        waiting_reason = _waiting_reason(control)

    made_unknown = _made_unknown(unknown_events)
    by_key: dict[tuple[str, str], list[_Row]] = defaultdict(list)
    for row in rows:
        by_key[(row.number, row.text)].append(row)
    invariants = [
        _acknowledged_kept(rows, acknowledged),
        _accepted_once(ledger, by_key, retried_unknown),
        _final_or_waiting(rows, waiting_reason),
        Invariant(
            "nothing_stale_submitting",
            "no batch left submitting past its timeout (plus a sweep)",
            checked=batches,
            broken=len(stale),
            examples=[f"batch {b} claimed at {c}" for b, c in stale[:EXAMPLES]],
        ),
        _unknown_explained(rows, made_unknown, attempts, fired, now),
        _unknown_not_resubmitted(rows, made_unknown, attempts),
        _accepted_ids_stored(ledger, rows, by_key),
        _calls_audited(gateway_requests, attempts),
        _refused_never_sent(rows),
        Invariant(
            "workers_rejoined",
            "every running worker is seen and consuming again after the faults it lived through",
            checked=len(workers),
            broken=len(absent),
            examples=[f"{name} is not both seen and consuming" for name in absent[:EXAMPLES]],
        ),
    ]
    return Checked(
        invariants,
        Counter(r.status for r in rows),
        Counter(r.code for r in rows if r.code),
        len(attempts),
        len(ledger),
    )


def absent_workers(
    db: Database, workers: Sequence[str], *, now: float, interval_s: float
) -> list[str]:
    """The ``workers`` whose heartbeats do not show them both alive and consuming from
    the broker as of ``now`` (docs/operating.md, "Workers where they matter")."""
    fresh = fresh_after(dt.datetime.fromtimestamp(now, dt.UTC), interval_s)
    with db.transaction() as session:
        seen = {
            name
            for name, seen_at, consumed_at in session.execute(
                select(WorkerHeartbeat.name, WorkerHeartbeat.seen_at, WorkerHeartbeat.consumed_at)
            )
            if consumed_at is not None
            and epoch(seen_at) >= fresh.timestamp()
            and epoch(consumed_at) >= fresh.timestamp()
        }
    return [name for name in workers if name not in seen]


def _waiting_reason(control: DispatchControl | None) -> str | None:
    if control is None:
        return None
    if control.paused:
        return f"dispatch paused ({control.pause_reason}: {control.pause_detail})"
    if str(control.breaker_state) != "closed":
        return f"breaker {control.breaker_state}"
    return None


def _acknowledged_kept(rows: Sequence[_Row], acknowledged: Iterable[Acknowledged]) -> Invariant:
    found: dict[str, set[str]] = defaultdict(set)
    texts: dict[str, str] = {}
    for row in rows:
        found[row.job_id].add(row.number)
        texts[row.job_id] = row.text
    invariant = Invariant(
        "acknowledged_kept", "every job a producer was told is queued is there, whole"
    )
    for ack in acknowledged:
        invariant.checked += 1
        if ack.job_id not in found:
            invariant.breaks(f"{ack.kind} job {ack.job_id} is missing")
        # A job keeps the first of each duplicate number given (docs/design.md).
        elif set(found[ack.job_id]) != set(ack.numbers) or texts[ack.job_id] != ack.text:
            invariant.breaks(f"{ack.kind} job {ack.job_id} differs from what was acknowledged")
    return invariant


def _accepted_once(
    ledger: Sequence[Mapping[str, Any]],
    by_key: Mapping[tuple[str, str], list[_Row]],
    retried_unknown: set[int],
) -> Invariant:
    invariant = Invariant(
        "accepted_once",
        "no recipient accepted twice by the gateway, but after an operator's retry of unknown",
        checked=len(ledger),
    )
    accepted = Counter((str(e["number"]), str(e["text"])) for e in ledger)
    for key, times in accepted.items():
        allowed = 1 + sum(1 for row in by_key.get(key, []) if row.id in retried_unknown)
        if times > allowed:
            invariant.breaks(f"{key[0]} {key[1]!r} accepted {times} times")
    return invariant


def _final_or_waiting(rows: Sequence[_Row], waiting_reason: str | None) -> Invariant:
    invariant = Invariant(
        "final_or_waiting",
        "every recipient final, or waiting with its reason shown (a pause, the breaker)",
        checked=len(rows),
    )
    for row in rows:
        if RecipientStatus(row.status) not in FINAL_STATUSES and waiting_reason is None:
            invariant.breaks(f"recipient {row.id} ({row.number}) is {row.status} with no reason")
    return invariant


def _made_unknown(unknown_events: Sequence[Any]) -> dict[int, int]:
    """Per recipient, the last attempt that made it ``unknown``."""
    made: dict[int, int] = {}
    for recipient_id, attempt_id in unknown_events:
        if attempt_id is not None:
            made[recipient_id] = max(made.get(recipient_id, 0), attempt_id)
    return made


def _unknown_explained(
    rows: Sequence[_Row],
    made_unknown: Mapping[int, int],
    attempts: Mapping[int, Attempt],
    fired: Sequence[Fired],
    now: float,
) -> Invariant:
    invariant = Invariant(
        "unknown_explained",
        "every unknown recipient's call ran during a fault that could have sent it",
    )
    windows = [
        (f.kind, f.began - BEFORE_FAULT_S, (f.ended or now) + AFTER_FAULT_S)
        for f in fired
        if f.kind in UNKNOWN_CAPABLE
    ]
    for row in rows:
        if row.status != RecipientStatus.UNKNOWN:
            continue
        invariant.checked += 1
        attempt = attempts.get(made_unknown.get(row.id, -1))
        if attempt is None:
            invariant.breaks(f"recipient {row.id} is unknown and names no attempt")
            continue
        started = epoch(attempt.started_at)
        if not any(low <= started <= high for _, low, high in windows):
            invariant.breaks(
                f"recipient {row.id}: attempt {attempt.id} at {attempt.started_at} "
                "ran during no fault that could leave it unknown"
            )
    return invariant


def _unknown_not_resubmitted(
    rows: Sequence[_Row], made_unknown: Mapping[int, int], attempts: Mapping[int, Attempt]
) -> Invariant:
    invariant = Invariant(
        "unknown_not_resubmitted",
        "no unknown recipient was submitted again after the call that made it unknown",
    )
    submitted: dict[tuple[str, str], list[int]] = defaultdict(list)
    for attempt in attempts.values():
        for number in attempt.numbers.split(","):
            submitted[(attempt.job_id, number)].append(attempt.id)
    for row in rows:
        if row.status != RecipientStatus.UNKNOWN:
            continue
        invariant.checked += 1
        last = made_unknown.get(row.id, 0)
        later = [a for a in submitted[(row.job_id, row.number)] if a > last]
        if later:
            invariant.breaks(f"unknown recipient {row.id} submitted again by attempts {later}")
    return invariant


def _accepted_ids_stored(
    ledger: Sequence[Mapping[str, Any]],
    rows: Sequence[_Row],
    by_key: Mapping[tuple[str, str], list[_Row]],
) -> Invariant:
    invariant = Invariant(
        "accepted_ids_stored",
        "every recipient the gateway accepted is sent with its gateway ID (or unknown), "
        "and every sent recipient is in the gateway's ledger with that ID",
    )
    ids: dict[tuple[str, str], str] = {}
    for entry in ledger:
        invariant.checked += 1
        key = (str(entry["number"]), str(entry["text"]))
        ids[key] = str(entry["message_id"])
        owners = by_key.get(key, [])
        if not any(
            (r.status == RecipientStatus.SENT and r.message_id == ids[key])
            or r.status == RecipientStatus.UNKNOWN
            for r in owners
        ):
            statuses = [r.status for r in owners] or "no recipient"
            invariant.breaks(f"{key[0]} {key[1]!r} accepted as {ids[key]}, stored as {statuses}")
    for row in rows:
        if row.status != RecipientStatus.SENT:
            continue
        invariant.checked += 1
        given = ids.get((row.number, row.text))
        if given != row.message_id:
            invariant.breaks(f"sent recipient {row.id} stores {row.message_id!r}, ledger {given!r}")
    return invariant


def _calls_audited(gateway_requests: int, attempts: Mapping[int, Attempt]) -> Invariant:
    invariant = Invariant(
        "calls_audited",
        "every submission the gateway saw has its attempt row, and every attempt is closed",
        checked=len(attempts) + 1,
    )
    if gateway_requests > len(attempts):
        invariant.breaks(
            f"the gateway saw {gateway_requests} submissions, {len(attempts)} attempts"
        )
    for attempt in attempts.values():
        if attempt.outcome == AttemptOutcome.IN_FLIGHT or attempt.finished_at is None:
            invariant.breaks(f"attempt {attempt.id} is still open")
    return invariant


def _refused_never_sent(rows: Sequence[_Row]) -> Invariant:
    refused = set(REFUSED)
    invariant = Invariant(
        "refused_never_sent",
        "a number the gateway refuses ends failed with INVALID_NUMBER (or unknown), never sent",
    )
    for row in rows:
        if row.number not in refused:
            continue
        invariant.checked += 1
        ok = (row.status, row.code) == ("failed", "INVALID_NUMBER") or row.status == "unknown"
        if not ok:
            invariant.breaks(f"recipient {row.id} ({row.number}) is {row.status}/{row.code}")
    return invariant
