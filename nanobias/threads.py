"""How many CPU threads a nanobias process uses: few, and never more than the cores that are free.

A nano model's ops are microseconds of work each, so threads pay only while each one has a core
of its own. Measured on the 2-core development CPU (cpu preset model, `nanobias bench`, 2026-12-02):

    alone, 2 threads vs 1:                          training 1.8x, KV-cache sampling 1.2x
    two 2-thread processes at once, libgomp default: each at 14-17% of solo training, 2-3% of sampling
    the same with a short OpenMP spin (see below):   each at 48% of training, 28-29% of sampling

The collapse is OpenMP's: after a parallel region a thread spins (busy-waits) up to
GOMP_SPINCOUNT = 300,000 iterations for the next one, and a spinning thread burns the core its
descheduled partner needs. `nanobias/__init__.py` shortens that spin to 1,000 before torch loads;
alone, that costs pretraining up to a tenth of its speed (10.9-12.4 against 12.5-12.8 steps/s).

The policy, in order (the first that applies wins):

    --threads N              what the user asked for
    OMP_NUM_THREADS          the usual environment variable, as every OpenMP program reads it
    min(model cap, free)     free = cores not busy with other processes, measured over 0.2 s
                             model cap = 1 below SMALL_MODEL parameters (one core is enough), else all

The thread count changes the order of float sums, and with it a run's numbers: a run records the
count it used (results.json), and `--threads N` pins it for a bit-identical rerun on a busy machine.
`reproduce` spends the same budget on its independent RL stages as single-thread workers (one
process per thread), which are bit-identical whatever the machine is doing.
"""

import os
import time

SMALL_MODEL = 500_000  # parameters: below this, one thread is within a few percent of two


def cores() -> int:
    """The cores this process may run on (its affinity mask, as taskset or a container sets it)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def busy_cores(interval: float = 0.2) -> float:
    """How many cores other processes keep busy, from two readings of /proc/stat `interval` apart
    (0 where there is no /proc/stat: macOS and Windows run every process with the policy's cap)."""
    def read():
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        return sum(fields), fields[3] + fields[4]  # total, idle + iowait

    try:
        total0, idle0 = read()
        time.sleep(interval)
        total1, idle1 = read()
    except OSError:
        return 0.0
    share = 1 - (idle1 - idle0) / max(1, total1 - total0)
    return share * (os.cpu_count() or 1)


def free_cores() -> int:
    """The cores other processes leave free, at least 1 (the test suite's workers: tests/conftest.py)."""
    return max(1, round(cores() - busy_cores()))


def model_params(preset) -> int:
    """A preset's GPT size, near enough: 12 C^2 per block, the token and position tables."""
    m = preset.model
    return 12 * m.n_layer * m.n_embd ** 2 + (preset.pretrain.vocab_size + m.block_size) * m.n_embd


def choose(requested: int | None, n_params: int | None) -> tuple[int, str]:
    """(threads, why) under the policy in the module docstring."""
    if requested is not None:
        return requested, "--threads"
    env = os.environ.get("OMP_NUM_THREADS", "").strip()
    if env.isdigit() and int(env) >= 1:
        return int(env), "OMP_NUM_THREADS"
    n, free = cores(), free_cores()
    cap = 1 if n_params is not None and n_params < SMALL_MODEL else n
    why = f"{n} cores, {free} free" + (f", a {n_params / 1e6:.2f}M-parameter model needs one" if cap == 1 else "")
    return min(cap, free), why


def configure(requested: int | None, n_params: int | None, say=print) -> int:
    """Set torch's thread count by the policy (n_params None: a command with no preset); returns it."""
    import torch

    threads, why = choose(requested, n_params)
    torch.set_num_threads(threads)
    pinned = why in ("--threads", "OMP_NUM_THREADS")
    say(f"threads: {threads} ({'from ' + why if pinned else why + '; --threads N or OMP_NUM_THREADS=N pins it'})")
    return threads
