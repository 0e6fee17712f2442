"""How many requests per second the gateway simulator sustains.

Starts ``python -m dispatcher.gateway.simulator`` in its own process (so the
client threads here do not compete with it for a GIL), fires submissions of 1 to
50 recipients at it from client threads, each with its own pooled keep-alive
``requests.Session``, and prints requests/s and recipients/s. One Python process
of ``requests`` threads tops out well below what the simulator serves, so the
threads can be spread over several client processes (``--client-processes``). The recipients the
replies say were accepted must equal the simulator's own count, so the figure is
also a check that nothing is lost or doubled under load.

Results go to ``ops/bench/results/simulator_rps.json``.

    .venv/bin/python ops/bench/simulator_rps.py            # 20000 requests
    .venv/bin/python ops/bench/simulator_rps.py --quick    # 2000 requests
    .venv/bin/python ops/bench/simulator_rps.py --latency-ms 150 --threads 200
    .venv/bin/python ops/bench/simulator_rps.py --client-processes 4 --threads 8
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import platform
import random
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import requests
from requests.adapters import HTTPAdapter

ROOT = Path(__file__).resolve().parents[2]
RESULTS = Path(__file__).resolve().parent / "results" / "simulator_rps.json"
USERNAME = "bench-user"
PASSWORD = "bench-pass"


@dataclass
class ThreadResult:
    """What one client thread saw."""

    requests: int = 0
    recipients_sent: int = 0
    recipients_accepted: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)


def accepted_in(body: str, recipients: int) -> int:
    """How many recipients a reply says were accepted."""
    if recipients == 1:
        return 1 if body.startswith("ID:") else 0
    return sum(1 for line in body.splitlines() if ",ID:" in line)


def client(
    url: str, count: int, recipients_range: tuple[int, int], seed: int, result: ThreadResult
) -> None:
    """Send ``count`` submissions over one keep-alive connection."""
    rng = random.Random(seed)
    with requests.Session() as session:
        session.mount("http://", HTTPAdapter(pool_connections=1, pool_maxsize=1))
        for i in range(count):
            recipients = rng.randint(*recipients_range)
            numbers = [f"4477009{n:05d}" for n in rng.sample(range(100_000), recipients)]
            form = {
                "username": USERNAME,
                "password": PASSWORD,
                "to": ",".join(numbers),
                "text": f"bench message {seed}-{i}",
            }
            start = time.perf_counter()
            try:
                response = session.post(url, data=form, timeout=(5, 30))
                body = response.text
            except requests.RequestException:
                result.errors += 1
                continue
            result.latencies_s.append(time.perf_counter() - start)
            result.requests += 1
            result.recipients_sent += recipients
            if response.status_code != 200:
                result.errors += 1
            result.recipients_accepted += accepted_in(body, recipients)


def client_process(
    url: str, shares: list[int], recipients_range: tuple[int, int], seeds: list[int]
) -> list[ThreadResult]:
    """Run one client thread per share in this process; their results."""
    results = [ThreadResult() for _ in shares]
    workers = [
        threading.Thread(target=client, args=(url, share, recipients_range, seed, result))
        for share, seed, result in zip(shares, seeds, results, strict=True)
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return results


def start_simulator(latency_ms: float, seed: int) -> tuple[subprocess.Popen[str], dict[str, str]]:
    """The simulator in a child process, and its URLs once it listens."""
    command = [
        sys.executable,
        "-m",
        "dispatcher.gateway.simulator",
        "--username",
        USERNAME,
        "--password",
        PASSWORD,
        "--latency-ms",
        str(latency_ms),
        "--seed",
        str(seed),
        "--log-level",
        "WARNING",
    ]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait(10)
        raise SystemExit(f"the simulator did not start (exit status {process.returncode})")
    return process, json.loads(line)


def cpu_seconds(pid: int) -> float | None:
    """CPU time (user + system) a process has used so far; None off Linux."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    # utime and stime are fields 14 and 15 of stat(5), 12 and 13 after the ")".
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--quick", action="store_true", help="2000 requests")
    parser.add_argument(
        "--threads", type=int, default=16, help="client threads (connections) per process"
    )
    parser.add_argument(
        "--client-processes",
        type=int,
        default=max(1, (os.cpu_count() or 2) - 1),
        help="client processes (default: one per CPU but the simulator's)",
    )
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--min-recipients", type=int, default=1)
    parser.add_argument("--max-recipients", type=int, default=50)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    total = 2_000 if args.quick else args.requests
    processes = max(1, args.client_processes)
    threads = max(1, min(args.threads * processes, total))

    process, urls = start_simulator(args.latency_ms, args.seed)
    try:
        url = urls["base_url"] + "/sendmsg.aspx"
        shares = [total // threads + (1 if i < total % threads else 0) for i in range(threads)]
        seeds = [args.seed * 1000 + i for i in range(threads)]
        context = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(processes, mp_context=context) as pool:
            # Start the processes (and their imports) before the clock does.
            list(pool.map(time.sleep, [0.0] * processes))
            server_cpu_before = cpu_seconds(process.pid)
            start = time.perf_counter()
            futures = [
                pool.submit(
                    client_process,
                    url,
                    shares[p::processes],
                    (args.min_recipients, args.max_recipients),
                    seeds[p::processes],
                )
                for p in range(processes)
            ]
            results = [r for future in futures for r in future.result()]
            elapsed_s = time.perf_counter() - start
            server_cpu_after = cpu_seconds(process.pid)
        server: dict[str, Any] = requests.get(urls["control_url"] + "/stats", timeout=30).json()
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=30)

    done = sum(r.requests for r in results)
    sent = sum(r.recipients_sent for r in results)
    accepted = sum(r.recipients_accepted for r in results)
    errors = sum(r.errors for r in results)
    server_cpu_s = (
        server_cpu_after - server_cpu_before
        if server_cpu_before is not None and server_cpu_after is not None
        else None
    )
    latencies = sorted(latency for r in results for latency in r.latencies_s)
    figures: dict[str, Any] = {
        "requests": done,
        "recipients": sent,
        "errors": errors,
        "elapsed_s": round(elapsed_s, 3),
        "requests_per_s": round(done / elapsed_s, 1),
        "recipients_per_s": round(sent / elapsed_s, 1),
        "latency_p50_ms": round(percentile(latencies, 0.50) * 1000, 2),
        "latency_p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
        "latency_mean_ms": round(statistics.fmean(latencies) * 1000, 2) if latencies else None,
        "client_threads": threads,
        "client_processes": processes,
        "simulator_latency_ms": args.latency_ms,
        "max_recipients": args.max_recipients,
        "server_recipients_accepted": server["recipients_accepted"],
        "server_max_in_flight": server["max_in_flight"],
        # The simulator's own cost, whatever the client managed: its CPU busy share
        # and the requests/s one core of it would serve at that cost.
        "server_cpu_s": round(server_cpu_s, 3) if server_cpu_s is not None else None,
        "server_cpu_busy": round(server_cpu_s / elapsed_s, 3) if server_cpu_s else None,
        "server_capacity_requests_per_s": round(done / server_cpu_s) if server_cpu_s else None,
        "replies_agree_with_server": accepted == server["recipients_accepted"] == sent,
        "python": platform.python_version(),
        "aiohttp": aiohttp.__version__,
        "cpus": os.cpu_count(),
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(figures, indent=2) + "\n")
    print(
        f"{done} requests ({sent} recipients) in {elapsed_s:.2f} s from {threads} threads "
        f"in {processes} processes, "
        f"latency {args.latency_ms} ms: {figures['requests_per_s']} requests/s, "
        f"{figures['recipients_per_s']} recipients/s; p50 {figures['latency_p50_ms']} ms, "
        f"p99 {figures['latency_p99_ms']} ms; errors {errors}; "
        f"simulator CPU busy {figures['server_cpu_busy']} "
        f"(~{figures['server_capacity_requests_per_s']} requests/s per core); "
        f"server agrees: {figures['replies_agree_with_server']}"
    )
    print(f"results: {args.output}")
    if errors or not figures["replies_agree_with_server"]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
