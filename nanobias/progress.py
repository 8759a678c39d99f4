"""Progress lines with a rate and an ETA, for every long loop (training, sampling, evaluation)."""

import sys
import time


def format_seconds(s: float) -> str:
    s = int(round(s))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Progress:
    """`update(done, **fields)` prints `desc done/total | fields | rate | ETA` at most every `every` s."""

    def __init__(self, total: int, desc: str, unit: str = "it", every: float = 2.0, stream=sys.stdout,
                 already_done: int = 0):
        self.total, self.desc, self.unit, self.every, self.stream = total, desc, unit, every, stream
        self.start = self.last = time.perf_counter()
        self.already_done = already_done  # work done before timing started (a resumed run)

    def update(self, done: int, force: bool = False, **fields):
        now = time.perf_counter()
        if not force and now - self.last < self.every and done < self.total:
            return
        self.last = now
        elapsed = now - self.start
        rate = (done - self.already_done) / max(elapsed, 1e-9)
        eta = (self.total - done) / rate if rate > 0 else float("inf")
        shown = " | ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        parts = [f"{self.desc} {done}/{self.total}", shown, f"{rate:.3g} {self.unit}/s",
                 f"ETA {format_seconds(eta) if eta != float('inf') else '?'}"]
        print(" | ".join(p for p in parts if p), file=self.stream, flush=True)
