"""nanobias: debias a small GPT from scratch (reward-model neuron intervention, then GRPO)."""
import os

# Before torch loads libgomp, which reads it once: OpenMP threads spin this many iterations waiting
# for work instead of 300,000, so a busy machine slows a run down instead of stalling it (threads.py).
os.environ.setdefault("GOMP_SPINCOUNT", "1000")
