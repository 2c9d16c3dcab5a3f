"""The run-directory lock: an OS lock that exactly one of several racing processes gets."""
from __future__ import annotations

import multiprocessing

import pytest

from fernoise.errors import OutputError
from fernoise.io import RunLock

ROUNDS, CONTENDERS = 50, 4


def _contender(root: str, start, done, results) -> None:
    for round_ in range(ROUNDS):
        lock = RunLock(f"{root}/run{round_}")
        start.wait()
        try:
            lock.acquire()
            won = True
        except OutputError:
            won = False
        done.wait()  # the winner holds the lock until everyone has tried
        lock.release()
        results.put((round_, won))


def test_exactly_one_of_several_racing_processes_gets_the_lock_every_time(tmp_path):
    context = multiprocessing.get_context("fork")
    start, done = context.Barrier(CONTENDERS), context.Barrier(CONTENDERS)
    results = context.Queue()
    for round_ in range(0, ROUNDS, 2):  # every other round starts from a dead process's lock file
        (tmp_path / f"run{round_}").mkdir()
        (tmp_path / f"run{round_}" / ".lock").write_text("999999999")
    workers = [context.Process(target=_contender, args=(str(tmp_path), start, done, results))
               for _ in range(CONTENDERS)]
    for worker in workers:
        worker.start()
    outcomes = [results.get(timeout=120) for _ in range(ROUNDS * CONTENDERS)]
    for worker in workers:
        worker.join(timeout=60)
    winners = [sum(won for r, won in outcomes if r == round_) for round_ in range(ROUNDS)]
    assert winners == [1] * ROUNDS
    assert not any(tmp_path.glob("run*/.lock"))  # released locks leave no file behind


def test_a_lock_file_without_a_holder_is_taken_whatever_it_holds(tmp_path):
    for content in ("", "999999999", "garbage"):  # empty: a writer killed between create and PID write
        (tmp_path / ".lock").write_text(content)
        with RunLock(tmp_path) as lock:
            assert (tmp_path / ".lock").read_text() == str(__import__("os").getpid())
            with pytest.raises(OutputError, match="in use by another fernoise process"):
                RunLock(tmp_path).acquire()
        assert lock._fd is None
