"""The GPU speed settings, in one place: TF32, bf16 autocast, torch.compile. No-ops on CPU.

- TF32 (`torch.backends.*.allow_tf32`): fp32 matmuls run on tensor cores with a 10-bit mantissa,
  several times faster on A100/H100, accurate enough for training.
- bf16 autocast: matmuls and attention in bfloat16, softmax / losses / reductions in fp32;
  parameters and optimiser state stay fp32, and bf16's fp32-sized exponent needs no loss scaling.
  The log-prob and GRPO kernels read bf16 logits and compute in fp32.
- `--compile`: `module.compile()` (torch.compile in place, so state_dict names do not change).
  Shapes vary from batch to batch, so expect a few recompilations before it pays off.

The Triton kernels need no switch: `--backend auto` picks them on CUDA. `configure` is called
once by the CLI from the preset (`Preset.cuda_fast`) and `--compile`; the trainers call
`autocast()` around forward passes and `prepare(model)` on the model they train.
"""

from contextlib import nullcontext

import torch

from nanobias import distributed

SETTINGS = {"bf16": False, "compile": False}


def configure(fast: bool = False, compile: bool = False) -> None:
    """fast: TF32 and bf16 autocast on CUDA; compile: torch.compile the trained models. CPU: nothing."""
    on_cuda = distributed.device().type == "cuda"
    SETTINGS["bf16"] = fast and on_cuda
    SETTINGS["compile"] = compile and on_cuda
    if fast and on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True


def autocast():
    """bf16 autocast on CUDA when configured, else a context that does nothing."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if SETTINGS["bf16"] else nullcontext()


def prepare(model: torch.nn.Module) -> torch.nn.Module:
    """Move the model to this process's device and compile it if configured (in place; returned)."""
    model.to(distributed.device())
    if SETTINGS["compile"]:
        model.compile()
    return model
