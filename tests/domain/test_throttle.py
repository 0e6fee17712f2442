"""``Every``: at most once per interval, from any thread."""

from __future__ import annotations

import threading

from dispatcher.domain.throttle import Every


def test_due_the_first_time_then_once_per_interval() -> None:
    now = [100.0]
    every = Every(60.0, clock=lambda: now[0])
    assert every.due()
    assert not every.due()
    now[0] += 59.9
    assert not every.due()
    now[0] += 0.1
    assert every.due()
    assert not every.due()


def test_one_thread_of_many_is_told() -> None:
    every = Every(3600.0)
    told: list[bool] = []
    threads = [threading.Thread(target=lambda: told.append(every.due())) for _ in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(told) == [False] * 15 + [True]
