"""Independent stages as single-thread worker processes, one per thread the run may use.

Given the base policy and the reward model, the RL stages (GRPO, GRPO+CIRM, DPO, PPO) and the
evaluations read only files, so they can run at once. A single-thread worker's numbers do not
depend on how many run beside it or on what else the machine does, and single-thread processes
share a busy machine without the stalls of oversubscribed OpenMP threads (threads.py). On an idle
2-core CPU two workers do about the work of one 2-thread process: the cpu preset's four RL
stages took 2m15s on two workers against 2m25s one after another at 2 threads (2026-12-02).

Workers are spawned, not forked (a forked child inherits torch's thread pool in whatever state the
parent left it), and on Linux die with the process that started them, so a killed run leaves no
worker still writing into its folder. They stay up for the process's next batch of jobs: each one
spends 2-3 s of CPU importing torch and nanobias, and a reproduction has 3 + seeds batches.
"""

import ctypes
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent exits
_pools: dict[int, ProcessPoolExecutor] = {}


def _start_worker() -> None:
    import torch

    torch.set_num_threads(1)
    # Ctrl-C reaches every process of the terminal's group: a worker then ends at once, without a
    # traceback and without taking the next job; the main process prints the one line (cli.py)
    signal.signal(signal.SIGINT, lambda signum, frame: os._exit(130))
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: a worker outlives a killed parent until its job ends
        pass


def run_jobs(jobs: list[tuple], workers: int) -> list:
    """[(fn, *args), ...] -> [fn(*args), ...] in order, on `workers` single-thread processes; the
    longest jobs should come first. One worker: in this process, at its own thread count. A job's
    exception is raised here (the first one in job order), after the others finish."""
    if workers <= 1:
        return [fn(*args) for fn, *args in jobs]
    if workers not in _pools:  # processes start as jobs need them: no more than len(jobs)
        _pools[workers] = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                              initializer=_start_worker)
    futures = [_pools[workers].submit(fn, *args) for fn, *args in jobs]
    try:
        wait(futures)
        return [f.result() for f in futures]
    except (KeyboardInterrupt, BrokenProcessPool):  # Ctrl-C, or a worker died (killed, out of memory):
        _pools.pop(workers).shutdown(wait=False, cancel_futures=True)  # no queued job starts; new workers next time
        raise
