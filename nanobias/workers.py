"""Independent stages as single-thread worker processes, one per thread the run may use.

Given the base policy and the reward model, the RL stages (GRPO, GRPO+CIRM, DPO, PPO) and the
evaluations read only files, so they can run at once. A single-thread worker's numbers do not
depend on how many run beside it or on what else the machine does, and single-thread processes
share a busy machine without the stalls of oversubscribed OpenMP threads (threads.py). On an idle
2-core CPU two workers do about the work of one 2-thread process: the cpu preset's four RL
stages took 2m15s on two workers against 2m25s one after another at 2 threads (2026-12-02).

Workers are spawned, not forked (a forked child inherits torch's thread pool in whatever state the
parent left it), and on Linux die with the process that started them, so a killed run leaves no
worker still writing into its folder.
"""

import ctypes
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor

PR_SET_PDEATHSIG = 1  # prctl option: the signal this process gets when its parent exits


def _start_worker() -> None:
    import torch

    torch.set_num_threads(1)
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
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_start_worker) as pool:
        futures = [pool.submit(fn, *args) for fn, *args in jobs]
        return [f.result() for f in futures]
