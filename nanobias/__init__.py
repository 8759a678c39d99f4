"""nanobias: debias a small GPT from scratch (reward-model neuron intervention, then GRPO)."""
