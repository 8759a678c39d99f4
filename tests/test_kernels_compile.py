"""Every Triton kernel compiles for an H100 (sm_90) with Triton's real compiler, no GPU needed.

The interpreter runs kernels as NumPy and lets through what the GPU compiler rejects (a global
that is not a constexpr, a type that changes inside a loop), so this test compiles each kernel,
through each side of every constexpr branch, down to a cubin with the ptxas that ships with Triton
on Linux. It runs in a subprocess because this test session has TRITON_INTERPRET=1 set.
"""

import subprocess
import sys
import textwrap
from pathlib import Path

from conftest import CLI_ENV

COMPILE_ALL = textwrap.dedent("""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from nanobias.kernels import activation_triton, logprob_triton

    DATA = {"logits_ptr", "dlogits_ptr", "x_ptr", "out_ptr", "dout_ptr", "dx_ptr"}  # tensors in the input dtype
    SCALAR = {"stride_n": "i64", "stride_t": "i64", "T": "i32", "V": "i32", "M": "i32", "H": "i32"}
    POINTER = {"targets_ptr": "*i64", "mask_ptr": "*i8"}
    BLOCKS = {"BLOCK_V": 4096, "BLOCK_M": 4, "BLOCK_H": 1024}
    kernels = [logprob_triton.logprob_fwd_kernel, logprob_triton.grpo_fwd_kernel, logprob_triton.logprob_bwd_kernel,
               activation_triton.masked_gelu_fwd_kernel, activation_triton.masked_gelu_bwd_kernel]
    for kernel in kernels:
        flags = [p.name for p in kernel.params if p.is_constexpr and p.name not in BLOCKS]
        # each flag guards an `if` of its own that no other flag's branch reads, so every flag on and every
        # flag off compile each side of every branch: in fp32, and bf16 (the GPU training dtype) with every flag on
        variants = [("fp32", (True,) * len(flags)), ("fp32", (False,) * len(flags)), ("bf16", (True,) * len(flags))]
        for dtype, values in dict.fromkeys(variants):  # a kernel without flags: fp32 and bf16 once each
            constexprs = {**{n: BLOCKS[n] for n in kernel.arg_names if n in BLOCKS}, **dict(zip(flags, values))}
            signature = {
                p.name: "constexpr" if p.is_constexpr
                else f"*{dtype}" if p.name in DATA
                else POINTER.get(p.name, "*fp32") if p.name.endswith("_ptr")
                else SCALAR.get(p.name, "fp32")
                for p in kernel.params
            }
            compiled = triton.compile(ASTSource(kernel, signature, constexprs), target=GPUTarget("cuda", 90, 32))
            assert compiled.asm["cubin"], (kernel.__name__, dtype, constexprs)
    print("compiled")
""")


def test_every_kernel_compiles_for_sm90(tmp_path):
    env = dict(CLI_ENV)  # Triton's real compiler, not the interpreter
    env["TRITON_CACHE_DIR"] = str(tmp_path)  # a cold cache: really compile
    env["TRITON_DEFAULT_FP_FUSION"] = "1"
    repo = Path(__file__).resolve().parents[1]
    result = subprocess.run([sys.executable, "-c", COMPILE_ALL], cwd=repo, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "compiled" in result.stdout, result.stderr[-3000:]
