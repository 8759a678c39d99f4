"""Several processes, one training run: data parallelism with torch.distributed under torchrun.

    torchrun --nproc_per_node=N -m nanobias reproduce --preset gpu

torchrun starts N copies of the program and sets RANK, WORLD_SIZE and LOCAL_RANK; `init()` joins
them into a process group (NCCL on GPUs, gloo on CPU). Without torchrun every function here is a
no-op for one process (rank 0 of 1), so the single-process code path is the same code.

Every process builds the same global batch (batches are pure functions of the step) and keeps
its own `shard` of it: rows rank*n/N .. (rank+1)*n/N. Each computes the loss of its rows,
scaled so that the *average* of the N losses is the loss of the global batch; then the average
of the N gradients is the gradient of the global batch, and `average_gradients` makes every
process hold it before the identical optimiser step. Means over equal shards need no scaling
(mean of means); token-weighted means take `token_share`.

Why not DistributedDataParallel: DDP averages gradients during backward, so it overlaps
communication with compute, but it expects one forward per backward. The trainers here run
several forwards per backward (length-bucketed chunks of pairs, reference passes, KV-cache
sampling), and an explicit all-reduce after backward keeps every trainer's code as it was.
Parameters start equal (every rank seeds the same initialisation or loads the same file, and
`sync_parameters` copies rank 0's to make sure), so equal steps keep them equal.

Rank 0 alone writes checkpoints, metrics, reports and progress lines; every rank can resume
(all load the same checkpoint), and whoever reads a file next waits for it at a barrier. One
machine (a shared file system) is assumed. Logged values are averaged over ranks (rewards are
gathered whole), and a non-finite loss on any rank stops every rank (train.stop_if_diverged).

What each stage splits, so that the single-process code stays single-process code:
- pretraining and the reward model (train.train): `batch_loss` takes this rank's rows of the
  step's batch (`my_rows`, `shard`), its token-weighted loss scaled by `token_share`.
- GRPO, PPO (rl.rollout): each rank samples, scores and trains on whole groups of its share of
  the B prompts, so group normalisation is unchanged; each prompt is sampled with its own seed,
  so the samples are those of one process. GRPO's "grpo"/"dr_grpo" losses are means over
  sequences (equal shards: the mean of means); "dapo" takes `token_share`; "batch" scale would
  need every rank's rewards inside the loss and runs in one process only. PPO whitens advantages
  with every rank's tokens, and each rank splits its own rows into minibatches.
- DPO: each rank takes its share of each step's pairs; the loss is a mean over pairs.
- reproduce: every rank runs the training stages; rank 0 alone runs the neuron search,
  evaluation and report while the rest wait, and sends every rank each stage's result.
"""

import os
from datetime import timedelta

import torch
import torch.distributed as dist


def init() -> None:
    """Join the process group when launched by torchrun (RANK set); otherwise do nothing."""
    if "RANK" not in os.environ or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    # stages that only rank 0 runs (evaluation, reports) keep the others waiting: a generous timeout
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timedelta(hours=2))


def cleanup() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if dist.is_initialized() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def device() -> torch.device:
    """This process's device: its own GPU (LOCAL_RANK) when there are GPUs, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def shard(n: int, what: str = "rows") -> slice:
    """This rank's part of a global batch of n rows; n must split evenly over the processes."""
    world = world_size()
    if n % world:
        raise ValueError(f"{n} {what} per step do not split evenly over {world} processes: "
                         f"choose a batch size that is a multiple of --nproc_per_node={world}")
    size = n // world
    return slice(rank() * size, (rank() + 1) * size)


def my_rows(*batch: torch.Tensor, what: str = "rows") -> tuple[torch.Tensor, ...]:
    """This rank's rows of each tensor of a global batch (every row in one process)."""
    mine = shard(len(batch[0]), what)
    return tuple(t[mine] for t in batch)


def all_sum(x: torch.Tensor) -> torch.Tensor:
    """The sum of x over all ranks (a new tensor; x itself with one process)."""
    if not dist.is_initialized():
        return x
    total = x.to(device(), copy=True)  # NCCL reduces GPU tensors only
    dist.all_reduce(total)
    return total.to(x.device)


def token_share(count: torch.Tensor) -> torch.Tensor:
    """count * N / (count summed over ranks): multiply this rank's token-weighted mean by it, and the
    average over ranks is the mean over every rank's tokens. 1 with one process."""
    if not dist.is_initialized():
        return torch.ones((), device=count.device)
    count = count.detach().float()
    return count * world_size() / all_sum(count).clamp(min=1)


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Every rank's x (same shape on each) concatenated along dim 0, in rank order."""
    if not dist.is_initialized():
        return x
    mine = x.to(device()).contiguous()  # NCCL gathers GPU tensors only
    parts = [torch.empty_like(mine) for _ in range(world_size())]
    dist.all_gather(parts, mine)
    return torch.cat(parts).to(x.device)


def sync_parameters(module: torch.nn.Module) -> None:
    """Copy rank 0's parameters and buffers to every rank."""
    if dist.is_initialized():
        for t in list(module.parameters()) + list(module.buffers()):
            dist.broadcast(t.data, src=0)


def average_gradients(params) -> None:
    """Replace each gradient by its mean over ranks, in one all-reduce of a flat buffer.

    A parameter without a gradient on this rank counts as a zero gradient: every rank must send
    the same buffer layout."""
    if not dist.is_initialized():
        return
    params = [p for p in params if p.requires_grad]
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # [total parameters]
    dist.all_reduce(flat)
    flat /= world_size()
    for p, g in zip(params, flat.split([p.numel() for p in params])):
        p.grad.copy_(g.view_as(p))


def mean_over_ranks(record: dict) -> dict:
    """The record with its float values averaged over ranks (others kept as they are)."""
    if not dist.is_initialized():
        return record
    keys = [k for k, v in record.items() if isinstance(v, float)]
    values = all_sum(torch.tensor([record[k] for k in keys], dtype=torch.float64, device=device()))
    return {**record, **{k: v / world_size() for k, v in zip(keys, values.tolist())}}


def from_main(fn):
    """fn() run on rank 0 alone, its (picklable) result sent to every rank."""
    if not dist.is_initialized():
        return fn()
    box = [fn() if is_main() else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]
