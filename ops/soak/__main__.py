"""``python -m ops.soak``: the production stack under load and random faults, then
the guarantees checked against the gateway's ledger and the database.

    python -m ops.soak --duration 1800 --seed 7 --output soak.json

Exit status 0 when every invariant holds, 1 when one broke, 2 when the stack could
not run. docs/soak.md tells what it runs, what it checks and the figures of the
runs made by hand.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from sqlalchemy import func, select

from dispatcher.domain.statuses import FINAL_STATUSES
from dispatcher.persistence.db import Database
from dispatcher.persistence.models import Recipient
from ops.soak import check, faults, hosts, report
from ops.soak.load import Load, Rates
from ops.soak.services import ServiceError
from ops.soak.stack import HEARTBEAT_INTERVAL_S, SUBMITTING_TIMEOUT_S, Stack, StackError

log = logging.getLogger("ops.soak")
DRAIN_S = SUBMITTING_TIMEOUT_S + 120.0
"""Longest wait after the load for every recipient to end (scheduled ones included)."""
REJOIN_S = 60.0
"""Longest wait, after the drain, for every running worker to show alive and consuming."""


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line."""
    parser = argparse.ArgumentParser(
        prog="python -m ops.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of load and faults")
    parser.add_argument("--seed", type=int, default=1, help="replays the load's and faults' draws")
    parser.add_argument("--workers", type=int, default=2, help="worker processes")
    parser.add_argument(
        "--rate", type=float, default=1.0, help="scale of the default load (docs/soak.md)"
    )
    parser.add_argument("--fault-gap", type=float, default=6.0, help="mean seconds between faults")
    parser.add_argument("--no-faults", action="store_true", help="load only (a baseline)")
    parser.add_argument(
        "--kinds",
        nargs="+",
        choices=faults.KINDS + hosts.PARTITIONS,
        help="the faults to draw from (default: all; partitions only with --hosts)",
    )
    parser.add_argument(
        "--latency-ms", type=float, default=20.0, help="the gateway's usual latency"
    )
    parser.add_argument(
        "--hosts",
        action="store_true",
        help="three hosts in network namespaces, with partitions (docs/soak.md)",
    )
    parser.add_argument(
        "--workdir", type=Path, help="logs and data (default: a temporary directory)"
    )
    parser.add_argument("--output", type=Path, help="write the result as JSON here")
    args = parser.parse_args(argv)
    partitions = set(args.kinds or ()) & set(hosts.PARTITIONS)
    if partitions and not args.hosts:
        parser.error(f"{', '.join(sorted(partitions))} need --hosts")
    return args


def open_recipients(db: Database) -> int:
    """Recipients not final yet."""
    with db.transaction() as session:
        query = select(func.count()).where(
            Recipient.status.not_in([str(s) for s in FINAL_STATUSES])
        )
        return int(session.execute(query).scalar_one())


def drain(db: Database, timeout_s: float) -> float:
    """Wait until every recipient is final (or ``timeout_s``); the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            if open_recipients(db) == 0:
                break
        except Exception:
            log.debug("could not count open recipients", exc_info=True)
        time.sleep(1.0)
    return round(time.monotonic() - started, 1)


def rejoin(db: Database, nodes: list[str], timeout_s: float) -> float:
    """Wait until every worker in ``nodes`` shows alive and consuming (or ``timeout_s``);
    the seconds it took."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if not check.absent_workers(db, nodes, now=time.time(), interval_s=HEARTBEAT_INTERVAL_S):
            break
        time.sleep(0.5)
    return round(time.monotonic() - started, 1)


def run(args: argparse.Namespace, workdir: Path) -> tuple[dict[str, Any], check.Checked]:
    """Start the stack, load it, fire the faults, drain, check; stop the stack."""
    rates = Rates().scaled(args.rate)
    stack = Stack(workdir, args.seed, workers_wanted=args.workers, latency_ms=args.latency_ms)
    kinds = tuple(args.kinds or faults.KINDS + (hosts.PARTITIONS if args.hosts else ()))
    actions = dict(faults.ACTIONS)
    healers = []
    if args.hosts:
        hosts.create()
        hosts.place(stack)
        actions |= hosts.ACTIONS
        healers.append(hosts.heal_all)
    try:
        stack.start()
        # send() in this process (the python producer) uses the stack's settings.
        os.environ.update(stack.env())
        from dispatcher import runtime

        runtime.reset()
        planned = (
            []
            if args.no_faults
            else faults.schedule(args.seed, args.duration, args.fault_gap, kinds)
        )
        injector = faults.Injector(stack, planned, args.seed, actions, healers)
        load = Load(stack, rates, args.seed)
        started = time.time()
        load.start()
        injector.start(started)
        time.sleep(args.duration)
        load.stop()
        injector.stop()
        ended = time.time()
        db = Database(stack.pg.url if stack.pg else "", pool_size=2)
        try:
            drain_s = drain(db, DRAIN_S)
            nodes = [w.node for w in stack.live_workers()]
            rejoin_s = rejoin(db, nodes, REJOIN_S)
            checked = check.check(
                db,
                ledger=stack.ledger(),
                acknowledged=load.acknowledged,
                fired=injector.fired,
                gateway_requests=int(
                    stack.gateway_stats()["requests_by_path"].get("/sendmsg.aspx", 0)
                ),
                submitting_timeout_s=SUBMITTING_TIMEOUT_S,
                now=time.time(),
                workers=nodes,
                heartbeat_interval_s=HEARTBEAT_INTERVAL_S,
            )
            figures = report.figures(db, injector.fired, started, ended)
        finally:
            db.dispose()
            runtime.reset()
    finally:
        stack.close()
        if args.hosts:
            hosts.destroy()
    result = {
        "seed": args.seed,
        "duration_s": args.duration,
        "hosts": 3 if args.hosts else 1,
        "workers": args.workers,
        "load": {"recipients_per_s": round(rates.recipients_per_s(), 1), **vars(rates)},
        "planned": [vars(p) for p in planned],
        "faults": [vars(f) for f in injector.fired],
        "acknowledged": len(load.acknowledged),
        "acknowledged_by_kind": dict(Counter(a.kind for a in load.acknowledged)),
        "given_up": dict(load.refused_requests),
        "retried_requests": dict(load.retries),
        "drain_s": drain_s,
        "rejoin_s": rejoin_s,
        "figures": figures,
        "by_status": dict(checked.by_status),
        "by_code": dict(checked.by_code),
        "invariants": [i.as_dict() for i in checked.invariants],
        "holds": checked.holds,
    }
    return result, checked


def main(argv: list[str] | None = None) -> int:
    """Run one soak; print its table; write its JSON."""
    args = parse(argv)
    if args.hosts:
        reason = hosts.unavailable()
        if reason is not None:
            print(f"soak: {reason}; running on one host instead", file=sys.stderr)
            args.hosts = False
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    # The producer's send() logs each wake-up it could not send while Redis is down
    # (the sweeper wakes workers instead): expected here, and not the soak's story.
    logging.getLogger("dispatcher").setLevel(logging.ERROR)
    with tempfile.TemporaryDirectory(prefix="dispatcher-soak-") as scratch:
        workdir = args.workdir or Path(scratch)
        try:
            result, checked = run(args, workdir)
        except (StackError, ServiceError) as exc:
            print(f"soak: the stack could not run: {exc}", file=sys.stderr)
            return 2
        fired = [faults.Fired(**f) for f in result["faults"]]
        print(report.table(result, checked, fired))
        if args.output:
            args.output.parent.mkdir(parents=True, exist_ok=True)
            args.output.write_text(json.dumps(result, indent=2, default=str))
            print(f"results: {args.output}")
    return 0 if checked.holds else 1


if __name__ == "__main__":
    sys.exit(main())
