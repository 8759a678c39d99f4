"""Single-thread worker processes: results in job order, one thread each, errors reach the caller."""

import os
import signal
import subprocess
import sys
import time

import pytest

from nanobias.errors import UserError
from nanobias.workers import run_jobs


def threads_and_square(x):
    import torch

    return torch.get_num_threads(), x * x, os.getpid()


def fails(message):
    raise UserError(message)


def test_jobs_run_in_worker_processes_at_one_thread_and_return_in_order():
    results = run_jobs([(threads_and_square, x) for x in (3, 1, 2)], workers=2)
    assert [square for _, square, _ in results] == [9, 1, 4]
    assert {threads for threads, _, _ in results} == {1}
    assert os.getpid() not in {pid for _, _, pid in results}


def test_one_worker_runs_in_this_process():
    assert {pid for _, _, pid in run_jobs([(threads_and_square, 1), (threads_and_square, 2)], workers=1)} == {os.getpid()}


def test_a_workers_error_reaches_the_caller_with_its_message():
    with pytest.raises(UserError, match="bad flag --x"):
        run_jobs([(threads_and_square, 1), (fails, "bad flag --x")], workers=2)


def test_later_batches_reuse_the_workers_also_after_an_error():
    first = {pid for _, _, pid in run_jobs([(threads_and_square, x) for x in range(4)], workers=2)}
    with pytest.raises(UserError):
        run_jobs([(fails, "once")], workers=2)
    again = run_jobs([(threads_and_square, x) for x in range(4)], workers=2)
    assert [square for _, square, _ in again] == [0, 1, 4, 9]
    assert len(first | {pid for _, _, pid in again}) <= 2  # the same two processes: a new pool would add its own


SLOW_JOBS = """
import sys, time
from pathlib import Path
from nanobias.workers import run_jobs

def job(folder, i):
    (Path(folder) / f"started-{i}").touch()
    time.sleep(3)

if __name__ == "__main__":
    run_jobs([(job, sys.argv[1], i) for i in range(6)], workers=2)
"""


def test_ctrl_c_stops_the_workers_and_starts_no_queued_job(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group: the run ends within seconds, and of six
    3-second jobs on two workers only the two running when it came were ever started."""
    (tmp_path / "slow_jobs.py").write_text(SLOW_JOBS)
    proc = subprocess.Popen([sys.executable, "slow_jobs.py", str(tmp_path)], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            # as at a terminal, even when this test runs in the background (which ignores SIGINT)
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 120
    while len(list(tmp_path.glob("started-*"))) < 2 and time.time() < deadline:  # both workers busy
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)
    proc.wait(timeout=10)
    time.sleep(4)  # long enough for a queued job to start if one still could
    assert len(list(tmp_path.glob("started-*"))) == 2
