"""Benchmark the kernels against PyTorch: `python -m nanobias.kernels.bench [--quick] [--out runs/bench]`;
one shape: `--rows 16x128 --vocab 50257` (GRPO only).

Ops: the GRPO loss (logits [N, T, V], with logp_old, logp_ref and beta > 0, so every term runs)
and the masked GELU (x [M, H], a third of the neurons clamped). Providers:
- "eager": the readable definitions in PyTorch eager mode: nanobias.grpo.grpo_loss with backend
  "reference" (materialises the fp32 [N*T, V] log-softmax) and `reference.masked_gelu`,
- "compile": `torch.compile` of the same (CUDA only),
- "liger": Liger-Kernel's `triton_grpo_loss`, when it is installed (CUDA only; `liger_provider`),
- "triton": the Triton kernels (`fused_grpo_loss`, `masked_gelu`; CUDA only: interpreted, it times Python),
- "torch": grpo_loss with the chunked log-probs (GRPO only: for the GELU it *is* the reference),
- "torch_inplace": the same with inplace_backward=True: backward writes dlogits into the logits
  (the leaf) itself, so its .grad aliases it and later repetitions run on the previous gradient
  as logits (the values change, the work and memory do not).
- "eager_exact", "triton_exact": the GELU in the presets' exact (erf) form; the others: GPT-2's tanh.
Modes: "fwd" (forward with the graph kept, what training holds until backward) and "fwd+bwd".

Figures per row:
- median_ms: median wall time of `reps` calls after warm-up (synchronised on CUDA).
- peak_mib: peak bytes allocated during one call above what was allocated before it: outputs,
  saved tensors, temporaries and the input gradient, not the inputs. CUDA: the caching
  allocator's peak counter. CPU: `torch.profiler` with profile_memory=True records every
  allocation and free of the CPU allocator; the peak of its running total ("Total Allocated").
- gbps: the bytes the op must move at least, over median time: logits read once (fwd), or read
  twice and dlogits written once (fwd+bwd); for the GELU x read and out written (fwd), plus x and
  dout read and dx written (bwd). copy_share: gbps over this device's measured copy bandwidth
  (`dst.copy_(src)` of 256 MiB).
Writes bench.csv and bench.png (time and memory over the V sweep) to --out, and prints a table.
"""

import argparse
import csv
import io
import json
import math
import os
import statistics
import tempfile
import time
from dataclasses import dataclass

import torch

from nanobias.checkpoint import write_atomic
from nanobias.grpo import grpo_loss

from . import dispatch, masked_gelu, reference

MIB = 2**20


@dataclass
class Case:
    op: str  # "grpo_loss" | "masked_gelu"
    shape: tuple[int, ...]  # (N, T, V) or (M, H)
    dtype: torch.dtype


def make_inputs(case: Case, device: torch.device) -> dict:
    """Inputs of one call (seeded), the differentiable one under "leaf"."""
    g = torch.Generator().manual_seed(0)
    if case.op == "grpo_loss":
        N, T, V = case.shape
        logits = torch.randn(N, T, V, generator=g).to(device, case.dtype).requires_grad_()
        targets = torch.randint(0, V, (N, T), generator=g).to(device)
        # old / reference log-probs near the current ones (about -log V), so some ratios clip
        logp_old, logp_ref = (-math.log(V) + torch.randn(2, N, T, generator=g)).to(device)
        return dict(leaf=logits, targets=targets, mask=torch.ones(N, T, device=device), group_size=min(8, N),
                    rewards=torch.randn(N, generator=g).to(device), logp_old=logp_old, logp_ref=logp_ref)
    M, H = case.shape
    return dict(leaf=torch.randn(M, H, generator=g).to(device, case.dtype).requires_grad_(),
                mask=(torch.arange(H) % 3 == 0).to(device), value=torch.randn(H, generator=g).to(device),
                dout=torch.randn(M, H, generator=g).to(device, case.dtype))


def providers(op: str, device: torch.device) -> dict:
    """name -> function(inputs) returning what backward starts from."""
    if op == "grpo_loss":
        def call(impl, **kw):
            return lambda i: impl(i["leaf"], i["targets"], i["mask"], i["rewards"], i["group_size"],
                                  i["logp_old"], i["logp_ref"], beta=0.04, **kw)[0]
        table = {"eager": call(grpo_loss, backend="reference"), "torch": call(grpo_loss, backend="torch"),
                 "torch_inplace": call(grpo_loss, backend="torch", inplace_backward=True)}
        if device.type == "cuda":
            table |= {"compile": call(torch.compile(grpo_loss), backend="reference"),
                      "triton": call(grpo_loss, backend="triton")} | liger_provider()
        return table
    def gelu(impl, *args):  # args after (x, mask, value): the backend, the form ("none": exact)
        return lambda i: impl(i["leaf"], i["mask"], i["value"], *args)
    table = {"eager": gelu(reference.masked_gelu), "eager_exact": gelu(reference.masked_gelu, "none")}
    if device.type == "cuda":
        table |= {"compile": gelu(torch.compile(reference.masked_gelu)), "triton": gelu(masked_gelu, "triton"),
                  "triton_exact": gelu(masked_gelu, "triton", "none")}
    return table


def liger_provider() -> dict:
    """Liger-Kernel's fused GRPO loss when installed (CUDA). It reads logits [N, T+1, V], so on our leaf it
    scores T - 1 tokens (the same work to 1/T), and writes dlogits into the logits, as torch_inplace does."""
    try:
        from liger_kernel.transformers.grpo_loss import triton_grpo_loss
    except ImportError:
        return {}
    from nanobias.grpo import group_advantages

    def liger(i):
        mask = i["mask"][:, 1:]
        out = triton_grpo_loss(i["leaf"], i["logp_old"][:, 1:], i["logp_ref"][:, 1:], i["targets"][:, 1:],
                               group_advantages(i["rewards"], i["group_size"]), mask, temperature=1.0, beta=0.04,
                               eps_low=0.2, eps_high=0.2)
        loss = out[0] if isinstance(out, tuple) else out
        return (loss * mask).sum() / mask.sum() if loss.dim() else loss

    return {"liger": liger}


def step(fn, inputs: dict, mode: str) -> None:
    out = fn(inputs)
    if mode == "fwd+bwd":
        out.backward(inputs.get("dout"))
        inputs["leaf"].grad = None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def warm_up(fns: dict, inputs: dict, mode: str) -> dict:
    """Run each provider twice (compilation, allocator caches); keep those that fit in memory."""
    fitting = {}
    for name, fn in fns.items():
        try:
            for _ in range(2):
                step(fn, inputs, mode)
            fitting[name] = fn
        except torch.OutOfMemoryError:  # eager at the largest V may not fit on the GPU
            inputs["leaf"].grad = None
            torch.cuda.empty_cache()
    return fitting


def median_ms(fns: dict, inputs: dict, mode: str, device: torch.device, reps: int) -> dict:
    """name -> median ms. Providers take turns within each repetition, so a change in machine
    load (a shared CPU) hits all of them alike instead of whichever ran last."""
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            sync(device)
            start = time.perf_counter()
            step(fn, inputs, mode)
            sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: 1e3 * statistics.median(t) for name, t in times.items()}


def peak_mib(fn, inputs, mode, device) -> float:
    if device.type == "cuda":
        sync(device)
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, inputs, mode)
        sync(device)
        return (torch.cuda.max_memory_allocated() - before) / MIB
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(fn, inputs, mode)
    with tempfile.TemporaryDirectory() as tmp:
        trace = os.path.join(tmp, "trace.json")
        prof.export_chrome_trace(trace)
        with open(trace) as f:
            events = json.load(f)["traceEvents"]
    totals = [e["args"]["Total Allocated"] for e in events if e.get("name") == "[memory]"]
    return max([0, *totals]) / MIB


def copy_gbps(device: torch.device) -> float:
    src = torch.empty(256 * MIB // 4, device=device)
    dst = torch.empty_like(src)
    copy = warm_up({"copy": lambda _: dst.copy_(src)}, {}, "fwd")
    ms = median_ms(copy, {}, "fwd", device, reps=10)["copy"]
    return 2 * src.numel() * 4 / ms / 1e6


def min_bytes(case: Case, mode: str) -> int:
    per_pass = math.prod(case.shape) * torch.empty((), dtype=case.dtype).element_size()
    passes = {("grpo_loss", "fwd"): 1, ("grpo_loss", "fwd+bwd"): 3, ("masked_gelu", "fwd"): 2, ("masked_gelu", "fwd+bwd"): 5}
    return passes[case.op, mode] * per_pass


def cases(device: torch.device, quick: bool, rows=None, vocab=None) -> list[Case]:
    """The default sweep; rows (N, T) and vocab [V, ...] override the GRPO shapes and then drop
    the GELU case."""
    if device.type == "cuda":
        default_rows, dtype, sweep = (64, 512), torch.bfloat16, [8192, 32768, 50257, 128256]
        gelu = Case("masked_gelu", (64 * 512, 3072), dtype)
    else:
        default_rows, dtype = (2, 128), torch.float32
        sweep = [4096, 16384, 50257] if quick else [1024, 4096, 16384, 50257, 131072]
        gelu = Case("masked_gelu", (256, 3072), dtype)
    grpo = [Case("grpo_loss", (*(rows or default_rows), V), dtype) for V in (vocab or sweep)]
    return grpo if rows or vocab else grpo + [gelu]


def run(device: torch.device, quick: bool, copy: float, rows=None, vocab=None) -> list[dict]:
    """Every case x provider x mode; copy is the device's copy bandwidth in GB/s."""
    reps = 3 if quick else 10
    results = []
    for case in cases(device, quick, rows, vocab):
        inputs = make_inputs(case, device)
        fns = providers(case.op, device)
        for mode in ("fwd", "fwd+bwd"):
            rows = {name: dict(op=case.op, shape="x".join(map(str, case.shape)), provider=name, mode=mode,
                               dtype=str(case.dtype).removeprefix("torch.")) for name in fns}
            fitting = warm_up(fns, inputs, mode)
            for name, ms in median_ms(fitting, inputs, mode, device, reps).items():
                rows[name] |= dict(median_ms=ms, peak_mib=peak_mib(fns[name], inputs, mode, device))
            for row in rows.values():  # a provider that did not fit keeps its row, marked NaN
                row.setdefault("median_ms", float("nan"))
                row.setdefault("peak_mib", float("nan"))
                row["gbps"] = min_bytes(case, mode) / row["median_ms"] / 1e6
                row["copy_share"] = row["gbps"] / copy
                results.append(row)
        del inputs
    for row in results:  # ratios to eager at the same op, shape and mode
        eager = next(r for r in results if r["provider"] == "eager" and all(r[k] == row[k] for k in ("op", "shape", "mode")))
        row["time_vs_eager"] = row["median_ms"] / eager["median_ms"]
        row["mem_vs_eager"] = row["peak_mib"] / eager["peak_mib"] if eager["peak_mib"] > 0 else float("nan")
    return results


COLUMNS = ["op", "shape", "dtype", "provider", "mode", "median_ms", "peak_mib", "gbps", "copy_share",
           "time_vs_eager", "mem_vs_eager"]


def print_table(results: list[dict]) -> None:
    cells = [[f"{r[c]:.3g}" if isinstance(r[c], float) else str(r[c]) for c in COLUMNS] for r in results]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(COLUMNS)]
    for row in [COLUMNS, ["-" * w for w in widths], *cells]:
        print("  ".join(cell.rjust(w) for cell, w in zip(row, widths)))


def write_csv(results: list[dict], path: str) -> None:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS)
    writer.writeheader()
    writer.writerows(results)
    write_atomic(path, text.getvalue().encode())


def plot(results: list[dict], path: str) -> None:
    """Time and peak memory of the GRPO loss (fwd+bwd) against V, one line per provider."""
    from nanobias.plots import plt, save_figure  # plots.py picks the Agg backend before pyplot loads

    rows = [r for r in results if r["op"] == "grpo_loss" and r["mode"] == "fwd+bwd"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name in dict.fromkeys(r["provider"] for r in rows):
        mine = [r for r in rows if r["provider"] == name]
        vocab = [int(r["shape"].split("x")[-1]) for r in mine]
        axes[0].plot(vocab, [r["median_ms"] for r in mine], marker="o", label=name)
        axes[1].plot(vocab, [r["peak_mib"] for r in mine], marker="o", label=name)
    for ax, label in zip(axes, ["median time (ms)", "peak memory above inputs (MiB)"]):
        ax.set(xscale="log", yscale="log", xlabel="vocabulary size V", ylabel=label)
        ax.legend()
    fig.suptitle(f"GRPO loss forward+backward, {rows[0]['shape'].rsplit('x', 1)[0]} rows, {rows[0]['dtype']}")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="runs/bench", help="directory for bench.csv and bench.png")
    parser.add_argument("--quick", action="store_true", help="fewer repetitions and a shorter V sweep")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="CPU threads (1 gives steadier numbers on a CPU shared with other jobs)")
    parser.add_argument("--rows", help="GRPO rows as NxT (e.g. 16x128); with --rows or --vocab only GRPO runs")
    parser.add_argument("--vocab", help="GRPO vocabulary sizes, comma-separated (e.g. 50257)")
    args = parser.parse_args(argv)
    rows = tuple(int(n) for n in args.rows.split("x")) if args.rows else None
    vocab = [int(v) for v in args.vocab.split(",")] if args.vocab else None
    device = torch.device(args.device)
    torch.set_num_threads(args.threads)
    if device.type == "cuda" and dispatch.triton_interpreted():
        parser.error("TRITON_INTERPRET=1 is set: unset it to benchmark compiled kernels")
    os.makedirs(args.out, exist_ok=True)
    load_before = os.getloadavg()[0]  # other jobs on the machine skew CPU timings; say how busy it was
    copy = copy_gbps(device)
    results = run(device, args.quick, copy, rows, vocab)
    load_after = os.getloadavg()[0]
    where = torch.cuda.get_device_name() if device.type == "cuda" else f"cpu, {args.threads} threads"
    print(f"device: {where}; copy bandwidth {copy:.1f} GB/s; load average before {load_before:.1f}, after {load_after:.1f}")
    print_table(results)
    write_csv(results, os.path.join(args.out, "bench.csv"))
    plot(results, os.path.join(args.out, "bench.png"))
    print(f"wrote {args.out}/bench.csv and {args.out}/bench.png")


if __name__ == "__main__":
    main()
