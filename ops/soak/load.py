"""The soak's producers: a steady mix of jobs, each recorded once it is acknowledged.

Four kinds, each on a thread of its own at a fixed rate (open loop: a stalled
producer catches up, it does not thin the load):

- ``api``: one-recipient jobs in the high lane by ``POST /v1/jobs``;
- ``scheduled``: one-recipient jobs due a few seconds later, by the same API;
- ``dropin``: one-recipient jobs by the gateway drop-in (``/smsgateway/sendmsg.aspx``);
- ``python``: bulk jobs by ``dispatcher.send()`` in this process.

A job counts as acknowledged when its producer got the answer that promises it
(``201``/``200``, an ``ID:`` line, a job id from ``send()``). An API or ``send()``
request that failed is tried again with the same idempotency key, as an
application should; a drop-in request is not (the gateway's protocol has no such
key), so one that failed may still have made a job nobody was told of, which the
checker allows. Texts are unique per job: the gateway's ledger then tells a double
send from two jobs for one number.
"""

from __future__ import annotations

import datetime as dt
import random
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

import requests

from ops.soak.stack import REFUSED, Stack

REFUSED_SHARE = 0.01
GIVE_UP_S = 90.0
"""A producer stops retrying a request after this long (then it is not acknowledged)."""


@dataclass(frozen=True)
class Rates:
    """Jobs per second of each kind, and the size of a bulk job."""

    api: float = 20.0
    scheduled: float = 2.0
    dropin: float = 5.0
    python: float = 1.0
    bulk_size: int = 100

    def scaled(self, factor: float) -> Rates:
        """Every rate times ``factor`` (the bulk size kept)."""
        return Rates(
            self.api * factor,
            self.scheduled * factor,
            self.dropin * factor,
            self.python * factor,
            self.bulk_size,
        )

    def recipients_per_s(self) -> float:
        """The load in recipients per second."""
        return self.api + self.scheduled + self.dropin + self.python * self.bulk_size


@dataclass(frozen=True)
class Acknowledged:
    """A job its producer was told is queued."""

    job_id: str
    kind: str
    numbers: tuple[str, ...]
    text: str
    at: float


@dataclass
class Load:
    """The producer threads; ``acknowledged`` and the counters fill as they run."""

    stack: Stack
    rates: Rates
    seed: int
    acknowledged: list[Acknowledged] = field(default_factory=list)
    refused_requests: Counter[str] = field(default_factory=Counter)
    """Requests given up on, by kind (never acknowledged)."""
    retries: Counter[str] = field(default_factory=Counter)
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)
    _next_number: int = 0

    def start(self) -> None:
        """Start a thread per kind with a rate above zero."""
        plan: list[tuple[str, float, Callable[[random.Random, int], None]]] = [
            ("api", self.rates.api, self._api),
            ("scheduled", self.rates.scheduled, self._scheduled),
            ("dropin", self.rates.dropin, self._dropin),
            ("python", self.rates.python, self._python),
        ]
        for index, (kind, rate, produce) in enumerate(plan):
            if rate <= 0:
                continue
            rng = random.Random(self.seed * 31 + index)
            thread = threading.Thread(
                target=self._run, args=(kind, rate, produce, rng), name=f"load-{kind}", daemon=True
            )
            self._threads.append(thread)
            thread.start()

    def stop(self) -> None:
        """Stop producing; requests being retried give up at once."""
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=GIVE_UP_S + 30)

    def _run(
        self,
        kind: str,
        rate: float,
        produce: Callable[[random.Random, int], None],
        rng: random.Random,
    ) -> None:
        interval = 1.0 / rate
        next_at = time.monotonic()
        sequence = 0
        while not self._stop.is_set():
            delay = next_at - time.monotonic()
            if delay > 0 and self._stop.wait(delay):
                return
            next_at += interval
            sequence += 1
            produce(rng, sequence)

    # --- numbers and acknowledgement ----------------------------------------------------

    def _numbers(self, rng: random.Random, count: int) -> tuple[str, ...]:
        with self._lock:
            start, self._next_number = self._next_number, self._next_number + count
        return tuple(
            rng.choice(REFUSED)
            if rng.random() < REFUSED_SHARE
            else f"4477009{(start + i) % 99_900:05d}"
            for i in range(count)
        )

    def _acknowledge(self, job_id: str, kind: str, numbers: tuple[str, ...], text: str) -> None:
        with self._lock:
            self.acknowledged.append(Acknowledged(job_id, kind, numbers, text, time.time()))

    def _until_acknowledged(self, kind: str, attempt: Callable[[], str | None]) -> None:
        """Call ``attempt`` until it returns a job id, as an application retrying with
        the same idempotency key would; give up after ``GIVE_UP_S`` or at stop."""
        deadline = time.monotonic() + GIVE_UP_S
        while True:
            try:
                job_id = attempt()
            except Exception:
                job_id = None
            if job_id is not None:
                return
            if time.monotonic() > deadline or self._stop.wait(0.5):
                with self._lock:
                    self.refused_requests[kind] += 1
                return
            with self._lock:
                self.retries[kind] += 1

    # --- the kinds ----------------------------------------------------------------------

    def _api(self, rng: random.Random, sequence: int) -> None:
        self._post_job("api", rng, sequence, priority="high")

    def _scheduled(self, rng: random.Random, sequence: int) -> None:
        send_at = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=rng.uniform(3, 15))
        self._post_job("scheduled", rng, sequence, send_at=send_at.isoformat())

    def _post_job(self, kind: str, rng: random.Random, sequence: int, **options: str) -> None:
        numbers = self._numbers(rng, 1)
        text = f"soak {kind} {sequence} {uuid.uuid4().hex[:8]}"
        key = uuid.uuid4().hex
        body = {"to": list(numbers), "text": text, **options}

        def attempt() -> str | None:
            reply = requests.post(
                self.stack.api_url + "/v1/jobs",
                json=body,
                headers={"Authorization": f"Bearer {self.stack.token}", "Idempotency-Key": key},
                timeout=10,
            )
            if reply.status_code not in (200, 201):
                return None
            job_id = str(reply.json()["id"])
            self._acknowledge(job_id, kind, numbers, text)
            return job_id

        self._until_acknowledged(kind, attempt)

    def _dropin(self, rng: random.Random, sequence: int) -> None:
        numbers = self._numbers(rng, 1)
        text = f"soak dropin {sequence} {uuid.uuid4().hex[:8]}"
        try:
            reply = requests.post(
                self.stack.api_url + "/smsgateway/sendmsg.aspx",
                data={
                    "username": self.stack.key_name,
                    "password": self.stack.token,
                    "to": numbers[0],
                    "text": text,
                },
                timeout=10,
            )
        except requests.RequestException:
            reply = None
        answer = reply.text.strip() if reply is not None and reply.status_code == 200 else ""
        if answer.startswith("ID:"):
            self._acknowledge(answer.removeprefix("ID:"), "dropin", numbers, text)
        else:
            with self._lock:
                self.refused_requests["dropin"] += 1

    def _python(self, rng: random.Random, sequence: int) -> None:
        from dispatcher import send

        numbers = self._numbers(rng, self.rates.bulk_size)
        text = f"soak python {sequence} {uuid.uuid4().hex[:8]}"
        key = uuid.uuid4().hex

        def attempt() -> str | None:
            job_id = send(list(numbers), text, priority="bulk", idempotency_key=key)
            self._acknowledge(job_id, "python", numbers, text)
            return job_id

        self._until_acknowledged("python", attempt)
