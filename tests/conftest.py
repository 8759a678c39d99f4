import os

# Triton reads this when a kernel module is first imported, so it must be set before any test
# imports `kernels`: on CPU every kernel then runs through Triton's interpreter.
os.environ.setdefault("TRITON_INTERPRET", "1")


import pytest  # noqa: E402  (after TRITON_INTERPRET, which must come first)


@pytest.fixture(scope="session")
def smoke_policy(tmp_path_factory):
    """A smoke-sized policy that has learned the answer format (short answers, two categories),
    pretrained once for every RL test: (preset, splits, policy checkpoint path)."""
    from dataclasses import replace

    from nanobias.data import CATEGORIES, load_splits
    from nanobias.presets import get_preset
    from nanobias.pretrain import corpus, pretrain, train_tokenizer

    out = tmp_path_factory.mktemp("smoke_policy")
    preset = get_preset("smoke")
    preset = replace(preset, long_rate=0.0, pretrain=replace(preset.pretrain, steps=150, lr=1e-2, warmup=10,
                                                             eval_every=150, ckpt_every=150))
    splits = load_splits("synthetic", seed=0, variants_per_template=preset.variants_per_template,
                         train_categories=list(CATEGORIES[:2]))
    train_docs, val_docs = corpus(splits, preset, 0)
    enc = train_tokenizer(train_docs, preset.vocab_size, out / "tokenizer.json")
    pretrain(preset, enc, train_docs, val_docs, out / "policy.pt", seed=0)
    return preset, splits, out / "policy.pt"
