"""09 - The Triton kernels against their PyTorch references: values, gradients, memory.

Run: python tutorials/09_triton_kernels.py [--tiny]

What you will see: every kernel op (token log-probs, the fused GRPO loss, the masked GELU of the
neuron intervention) run by each backend and compared with its readable definition
(nanobias/kernels/reference.py; for the loss, grpo_loss in nanobias/grpo.py), values and
gradients, as max absolute errors; then the memory that the chunked CPU path saves over the
reference at a large vocabulary.
On a machine without a GPU the Triton kernels run through Triton's interpreter (see step 0).
Library: nanobias/kernels/ (__init__.py, reference.py, logprob.py, activation.py, bench.py) and
nanobias/grpo.py.
"""

import os

import torch

# Step 0, before anything imports `nanobias.kernels`: Triton decides when a @triton.jit function is
# *defined* (at import) whether it will be compiled for a GPU or run by the interpreter, which
# executes the kernel's Python body with NumPy, one program at a time. So on a CPU-only machine
# TRITON_INTERPRET=1 must be in the environment before the import; afterwards is too late.
if not torch.cuda.is_available():
    os.environ["TRITON_INTERPRET"] = "1"

import common  # noqa: E402

args = common.parse_args(__doc__)

from nanobias.grpo import aggregation_weights, group_advantages, grpo_loss  # noqa: E402
from nanobias.kernels import masked_gelu, reference, token_logprobs  # noqa: E402
from nanobias.kernels.bench import Case, make_inputs, median_ms, peak_mib, providers, warm_up  # noqa: E402
from nanobias.kernels.dispatch import resolve_backend, triton_interpreted  # noqa: E402

device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
g = torch.Generator().manual_seed(common.SEED)

common.section("0. Backends")
common.say(f"""
    Every op takes backend = "triton" (the kernels), "torch" (PyTorch, chunked over rows so that
    the full fp32 [N*T, V] log-softmax never exists), "reference" (nanobias/kernels/reference.py:
    the readable definition, which materialises everything) or "auto". Here: device {device}, Triton
    kernels interpreted: {triton_interpreted()}, so "auto" means "{resolve_backend('auto', device, 'tutorial')}".
    Under the interpreter the kernels are slow (Python runs every program) but compute exactly what
    the GPU would, which is how they are tested on CPU. One trap the kernels avoid: the interpreter
    gets bf16 arithmetic wrong, so every load is converted to fp32 first.
""")
BACKENDS = ("reference", "torch", "triton")
results = []  # (op, backend, value error, gradient error)


def max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.double() - b.double()).abs().max().item()


common.section("1. Token log-probs")
common.say("""
    logp[n, t] = log_softmax(logits[n, t] / temperature)[targets[n, t]]: the log-probability of
    each sampled token, which every RL loss needs. The ground truth is the reference in float64;
    each backend gets float32 logits and an upstream gradient to push back.
""")
N, T, V = (2, 4, 257) if args.tiny else (4, 8, 1000)
logits = (3 * torch.randn(N, T, V, generator=g)).to(device)
targets = torch.randint(0, V, (N, T), generator=g).to(device)
upstream = torch.randn(N, T, generator=g).to(device)
exact = logits.double().requires_grad_()
truth = reference.token_logprobs(exact, targets, temperature=0.7)
truth.backward(upstream.double())
for backend in BACKENDS:
    x = logits.clone().requires_grad_()
    logp = token_logprobs(x, targets, temperature=0.7, backend=backend)
    logp.backward(upstream)
    results.append(("token_logprobs", backend, max_err(logp, truth), max_err(x.grad, exact.grad)))
    print(f"{backend:9}: logp[0, :4] = {[round(v, 4) for v in logp[0, :4].tolist()]}")

common.section("2. What the fused GRPO loss is given")
common.say("""
    The kernel does not see rewards. nanobias/grpo.py turns them into per-row advantages in plain
    PyTorch: within each group of G completions of one prompt, A_i = (r_i - mean(r)) / (std(r) +
    eps), population std, and exactly 0 for a group whose rewards are all equal. It also gives
    every token its aggregation weight (here "grpo": 1 / (tokens of its row * rows), 0 on
    padding), so the kernel's loss is a plain weighted sum. Two prompts, G = 4, and the weights
    of two rows of 2 and 1 completion tokens:
""")
rewards = torch.tensor([1.0, 0.0, 0.0, 1.0, 0.5, 0.5, 0.5, 0.5])
adv = group_advantages(rewards, group_size=4)
print(f"rewards    {rewards.tolist()}\nadvantages {[round(a, 4) for a in adv.tolist()]}")
print(f"weights    {aggregation_weights(torch.tensor([[1, 1], [1, 0]]), 'grpo').tolist()}")

common.section("3. The fused GRPO loss")
common.say("""
    grpo.grpo_loss with backend "triton" hands everything after the advantages and weights to
    nanobias.kernels.fused_grpo_loss, which goes from logits to the loss in one pass per row:
    log-prob by an online log-sum-exp over vocabulary blocks, ratio = exp(logp - logp_old), the
    clipped surrogate with the advantage, and beta * k3 KL to the reference policy; backward
    writes dlogits in one more pass without storing a softmax. "reference" and "torch" compute
    the log-probs first (nanobias.kernels.token_logprobs) and then the loss as written in grpo.py.
    logp_old and logp_ref are set near the current log-probs so that some ratios clip and the KL
    is non-zero: every term runs.
""")
G = 4
logits_rl = torch.randn(2 * G, T, V, generator=g).to(device)
targets_rl = torch.randint(0, V, (2 * G, T), generator=g).to(device)
mask = torch.ones(2 * G, T, device=device)
mask[1, T // 2:] = 0  # a completion that stopped early
with torch.no_grad():
    logp_now = reference.token_logprobs(logits_rl, targets_rl)
logp_old = logp_now + 0.3 * torch.randn(2 * G, T, generator=g).to(device)
logp_ref = logp_now + 0.3 * torch.randn(2 * G, T, generator=g).to(device)
rl_rewards = torch.randn(2 * G, generator=g).to(device)
terms = dict(logp_old=logp_old, logp_ref=logp_ref, eps_low=0.2, eps_high=0.28, beta=0.04)
exact = logits_rl.double().requires_grad_()
truth, truth_stats = grpo_loss(exact, targets_rl, mask, rl_rewards.double(), G, backend="reference", **terms)
truth.backward()
for backend in BACKENDS:
    x = logits_rl.clone().requires_grad_()
    loss, stats = grpo_loss(x, targets_rl, mask, rl_rewards, G, backend=backend, **terms)
    loss.backward()
    results.append(("grpo_loss", backend, max_err(loss, truth), max_err(x.grad, exact.grad)))
    print(f"{backend:9}: loss {loss.item():+.6f}  kl {stats['kl'].item():.5f}  "
          f"clip_frac {stats['clip_frac'].item():.3f}")
print(f"float64 truth: loss {truth.item():+.6f}  kl {truth_stats['kl'].item():.5f}  "
      f"clip_frac {truth_stats['clip_frac'].item():.3f}")

common.section("4. The masked GELU")
common.say("""
    The neuron intervention of tutorial 06 fused into the MLP activation:
    out = where(mask, value, gelu(x)). A clamped neuron outputs its fixed value and passes
    no gradient back; every other neuron is a plain GELU, in GPT-2's tanh form here (the default;
    approximate="none" is the exact form the presets' models use).
""")
M, H = (8, 64) if args.tiny else (32, 512)
x0 = torch.randn(M, H, generator=g).to(device)
neuron_mask = (torch.arange(H) % 7 == 0).to(device)
value = torch.randn(H, generator=g).to(device)
dout = torch.randn(M, H, generator=g).to(device)
exact = x0.double().requires_grad_()
truth = reference.masked_gelu(exact, neuron_mask, value.double())
truth.backward(dout.double())
for backend in BACKENDS:
    x = x0.clone().requires_grad_()
    out = masked_gelu(x, neuron_mask, value, backend=backend)
    out.backward(dout)
    results.append(("masked_gelu", backend, max_err(out, truth), max_err(x.grad, exact.grad)))
    print(f"{backend:9}: gradient on the {int(neuron_mask.sum())} clamped neurons is exactly 0: "
          f"{bool((x.grad[:, neuron_mask] == 0).all())}; their output equals value: "
          f"{bool(torch.equal(out[:, neuron_mask], value[neuron_mask].expand(M, -1)))}")

common.section("5. Memory: what chunking saves")
common.say("""
    The reference materialises log_softmax over the whole vocabulary in fp32 ([N*T, V] floats)
    and autograd keeps it for backward, which then builds a softmax of the same size. The
    chunked "torch" path walks about 2^20 logits at a time, keeps nothing but its inputs and
    recomputes each chunk's softmax in backward: beyond the gradient itself it needs a chunk or
    two. Peak memory of the GRPO loss, forward + backward, above the inputs (the logits and
    their gradient are [N, T, V] in both), measured with torch.profiler by nanobias.kernels.bench.
    The Triton kernels stream each row the same way; their numbers need a GPU
    (`python -m nanobias.kernels.bench`), the interpreter would measure Python.
""")
mem_rows = []
for vocab in ((4096,) if args.tiny else (16384, 50257)):
    case = Case("grpo_loss", (2, 32 if args.tiny else 128, vocab), torch.float32)
    inputs = make_inputs(case, device)
    fns = {name: fn for name, fn in providers("grpo_loss", device).items() if name in ("eager", "torch")}
    ms = median_ms(warm_up(fns, inputs, "fwd+bwd"), inputs, "fwd+bwd", device, reps=2 if args.tiny else 3)
    peak = {name: peak_mib(fn, inputs, "fwd+bwd", device) for name, fn in fns.items()}
    logits_mib = case.shape[0] * case.shape[1] * vocab * 4 / 2**20
    mem_rows.append((case.shape, logits_mib, peak, ms))
    del inputs

common.section("Result")
print("Max absolute error against the float64 reference (float32 inputs):\n")
print("| op | backend | value error | gradient error |\n|---|---|---|---|")
for op, backend, value_err, grad_err in results:
    print(f"| {op} | {backend} | {value_err:.2e} | {grad_err:.2e} |")
worst = max(max(v, gr) for _, _, v, gr in results)
print(f"\nlargest error of any backend: {worst:.2e} (float32 rounding is about 1e-7 relative); "
      f"every backend within 1e-4 of the float64 reference: {worst < 1e-4}")
print("\nGRPO loss, forward + backward, peak memory above the inputs (CPU):\n")
print("| logits [N, T, V] | logits MiB | reference MiB | chunked torch MiB | reference / chunked | reference ms "
      "| chunked ms |")
print("|---|---|---|---|---|---|---|")
for shape, logits_mib, peak, ms in mem_rows:
    print(f"| {list(shape)} | {logits_mib:.0f} | {peak['eager']:.0f} | {peak['torch']:.0f} | "
          f"{peak['eager'] / max(peak['torch'], 1e-9):.1f}x | {ms['eager']:.0f} | {ms['torch']:.0f} |")
common.finish()
