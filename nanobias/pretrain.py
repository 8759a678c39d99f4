"""Pretraining: teach a GPT the answer format, and a planted bias.

The corpus is rendered training examples, prompt + completion + end-of-text (render.py). Ambiguous
contexts are answered with the biased answer at rate `bias_rate` and "unknown" otherwise;
disambiguated contexts are answered correctly. A model trained on it learns to read contexts
*and* to fall back on the stereotype when the context does not say: the biased base policy the
rest of the pipeline debiases.

Loss: next-token cross-entropy on the completion tokens, given the prompt,

    L = -1/|C| sum_{t in C} log p(x_{t+1} | x_<=t),   C = positions that predict a completion token

(as in supervised fine-tuning). Every prompt is a few dozen tokens of predictable template text
and the answer only a handful, so a loss on all tokens would spend nearly all of a small CPU
budget on the template; here every gradient goes to choosing the answer.
"""

from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

from nanobias import distributed
from nanobias.checkpoint import load_checkpoint, policy_meta
from nanobias.curves import answer_metrics, curve_prompts
from nanobias.data import Splits
from nanobias.errors import UserError, check
from nanobias.model import GPT, GPTConfig
from nanobias.render import ANSWER_CUE, pretraining_documents
from nanobias.swaps import made_up_people, swap_people
from nanobias.tokenizer import get_tokenizer, load_tokenizer, save_tokenizer, train_bpe
from nanobias.train import TrainConfig, train


@dataclass
class PretrainConfig(TrainConfig):
    vocab_size: int = 1024  # BPE vocabulary trained on the pretraining corpus
    bias_rate: float = 0.8  # share of ambiguous contexts answered with the biased answer: the planted bias
    long_rate: float = 0.3  # share of completions in a long style (justification, filler, ...)
    # copies of each training example with its two people swapped for others of the same groups (swaps.py)
    people_swaps: int = 0
    # copies of each disambiguated training example with two made-up people instead (swaps.py)
    made_up_people: int = 0
    # the reading curve: test prompts (curves.curve_prompts) answered greedily at every evaluation, their
    # acc_disambig and biased_ambig logged beside val_loss; 0: none (it costs seconds per evaluation)
    eval_prompts: int = 0

    def __post_init__(self):
        super().__post_init__()
        check(self, {"vocab_size": self.vocab_size >= 257, "bias_rate": 0 <= self.bias_rate <= 1,
                     "long_rate": 0 <= self.long_rate <= 1, "eval_prompts": self.eval_prompts >= 0,
                     "people_swaps": self.people_swaps >= 0, "made_up_people": self.made_up_people >= 0},
              "vocab_size >= 257 (256 bytes + end-of-text); bias_rate, long_rate in [0, 1]; eval_prompts, "
              "people_swaps, made_up_people >= 0")


def corpus(splits: Splits, cfg: PretrainConfig, seed: int) -> tuple[list[str], list[str]]:
    """Pretraining documents for (train, val), the training examples with `cfg.people_swaps` swapped copies
    of each and `cfg.made_up_people` copies of each disambiguated one with made-up people (swaps.py); the
    synthetic world's val differs by template, real BBQ's by people (data.py)."""
    train = swap_people(splits.train, cfg.people_swaps, seed) + made_up_people(splits.train, cfg.made_up_people, seed)
    return (pretraining_documents(train, cfg.bias_rate, seed, cfg.long_rate),
            pretraining_documents(splits.val, cfg.bias_rate, seed + 1, cfg.long_rate))


def make_tokenizer(docs: list[str], vocab_size: int, path, init_dir=None):
    """The policy's tokenizer, written to `path`: a BPE of `vocab_size` trained on the documents, or,
    when pretraining starts from GPT-2's weights (`init_dir`), tiktoken's `gpt2` encoding they were
    trained on."""
    enc = train_bpe(docs, vocab_size) if init_dir is None else get_tokenizer("gpt2")
    save_tokenizer(enc, path)
    return enc


def initial_model(model_cfg: GPTConfig, init_dir=None) -> GPT | None:
    """GPT-2's weights from the Hugging Face folder `init_dir`, or None: `pretrain` starts from a
    random initialisation."""
    if init_dir is None:
        return None
    if model_cfg.position != "learned":
        raise UserError(f"--init-dir: GPT-2's weights hold a learned position table, so they cannot start a "
                        f"model.position={model_cfg.position!r} model; drop --init-dir or model.position")
    from nanobias.gpt2 import load_gpt2

    return load_gpt2(init_dir, model_cfg.dropout)


READING_KEYS = ("acc_disambig", "biased_ambig", "acc_ambig", "invalid_rate")  # the reading curve's metrics
GENERATION_ROOM = 64  # tokens the policy may generate after the longest prompt


def encode_documents(enc, docs: list[str]) -> list[tuple[list[int], int]]:
    """Documents -> (token ids of prompt + completion + end-of-text, number of prompt tokens).

    Prompt and completion are encoded apart, exactly as the policy sees them when it samples."""
    encoded = []
    for i, doc in enumerate(docs):
        prompt, cue, completion = doc.rpartition(ANSWER_CUE)
        if not cue:
            raise ValueError(f"document {i} has no {ANSWER_CUE!r}: {doc[:80]!r}")
        p = enc.encode_ordinary(prompt + cue)
        encoded.append((p + enc.encode_ordinary(completion) + [enc.eot_token], len(p)))
    return encoded


def fitted_block_size(block_size: int, docs: list[tuple[list[int], int]]) -> int:
    """The preset's block_size, or more (a multiple of 64) if the longest document plus room to
    generate needs it: real BBQ contexts run longer than the synthetic world's."""
    need = max(len(ids) for ids, _ in docs) + GENERATION_ROOM
    return block_size if need <= block_size else -(-need // 64) * 64


def document_batch(docs: list[tuple[list[int], int]], pad_id: int):
    """Documents, packed into rows: inputs x, targets y, loss mask and document numbers, each [R, T].

    Each document adds its ids[:-1] as inputs and ids[1:] as targets; rows are filled first-fit, longest
    document first, up to the longest document's length, so a batch of B documents takes R <= B rows
    with little padding (about a third of a right-padded batch's tokens were padding). `doc` numbers
    each row's documents 1, 2, ... (0: padding), the attention mask that keeps them apart (model.py)."""
    inputs = sorted(range(len(docs)), key=lambda i: -len(docs[i][0]))
    T = len(docs[inputs[0]][0]) - 1
    rows: list[list[int]] = []  # the documents of each row
    room: list[int] = []  # tokens left in each row
    for i in inputs:
        n = len(docs[i][0]) - 1
        r = next((r for r, left in enumerate(room) if left >= n), None)
        if r is None:
            rows.append([]), room.append(T)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= n
    x = torch.full((len(rows), T), pad_id, dtype=torch.long)
    y = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), T))
    doc = torch.zeros((len(rows), T), dtype=torch.long)
    for r, members in enumerate(rows):
        at = 0
        for number, i in enumerate(members, 1):
            ids, n_prompt = docs[i]
            n = len(ids) - 1
            x[r, at:at + n] = torch.tensor(ids[:-1])
            y[r, at:at + n] = torch.tensor(ids[1:])
            mask[r, at + n_prompt - 1:at + n] = 1  # positions whose target is a completion token
            doc[r, at:at + n] = number
            at += n
    return x, y, mask, doc


def lm_loss(model: GPT, x: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None = None,
            doc: torch.Tensor | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy of targets y [B, T] given x [B, T], over mask [B, T] (default all);
    `doc` [B, T]: packed rows' document numbers (document_batch), None for one sequence per row."""
    device = next(model.parameters()).device
    x, y = x.to(device), y.to(device)
    logits = model(x, attention_mask=None if doc is None else doc.to(device))  # [B, T, V]
    nll = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="none").view_as(y)
    if mask is None:
        return nll.mean()
    mask = mask.to(nll.device)
    return (nll * mask).sum() / mask.sum().clamp(min=1)


def pretrain(cfg: PretrainConfig, model_cfg: GPTConfig, enc, train_docs: list[str], val_docs: list[str], ckpt_path,
             seed: int = 0, resume: bool = False, init: GPT | None = None, reading: list = ()) -> GPT:
    """Train a fresh GPT of shape `model_cfg` (or `init`, e.g. GPT-2's weights) on the documents;
    writes the policy checkpoint. `reading`: the examples of the reading curve (PretrainConfig.eval_prompts)."""
    train_set, val_set = encode_documents(enc, train_docs), encode_documents(enc, val_docs)
    block_size = fitted_block_size(model_cfg.block_size, train_set + val_set)
    if block_size != model_cfg.block_size:
        print(f"pretrain: block_size {model_cfg.block_size} -> {block_size} to fit the longest document")
    config = replace(model_cfg, vocab_size=enc.n_vocab, block_size=block_size)
    torch.manual_seed(seed)  # the weight init
    model = GPT(config) if init is None else init
    need = fitted_block_size(1, train_set + val_set)  # the documents and room to generate, whatever the preset says
    if init is not None and (init.config.vocab_size < enc.n_vocab or init.config.block_size < need):
        raise ValueError(f"pretrain: the initial model (vocab {init.config.vocab_size}, block_size "
                         f"{init.config.block_size}) needs vocab >= {enc.n_vocab} and block_size >= {need}")

    def batch(docs, generator, shard=False):
        picks = torch.randint(0, len(docs), (cfg.batch_size,), generator=generator).tolist()
        if shard:  # this process's documents of the global batch
            picks = picks[distributed.shard(len(picks), "documents")]
        return document_batch([docs[i] for i in picks], enc.eot_token)

    def batch_loss(step):
        # the batch is a function of (seed, step) alone, so a resumed run sees the same batches
        x, y, mask, doc = batch(train_set, torch.Generator().manual_seed(seed * 1_000_003 + step), shard=True)
        # tokens: the documents' tokens this process trained on (the reading curve's x axis)
        return lm_loss(model, x, y, mask, doc) * distributed.token_share(mask.sum()), {"tokens": float((doc != 0).sum())}

    def evaluate():
        g = torch.Generator().manual_seed(seed + 12345)
        out = {"val_loss": sum(lm_loss(model, *batch(val_set, g)).item() for _ in range(4)) / 4}
        if reading:
            metrics = answer_metrics(model, enc, list(reading), desc="reading")
            out.update({k: metrics[k] for k in READING_KEYS})
        return out

    n_tokens = sum(len(ids) for ids, _ in train_set)
    print(f"pretrain: {model.num_params() / 1e6:.2f}M parameters, {len(train_set):,} documents "
          f"({n_tokens:,} tokens), {cfg.steps} steps x {cfg.batch_size} documents")
    train(model, batch_loss, cfg, ckpt_path, meta=policy_meta(model, enc), evaluate=evaluate, resume=resume,
          desc="pretrain")
    return model


def pretrain_policy(splits: Splits, cfg: PretrainConfig, model_cfg: GPTConfig, out_dir, seed: int = 0,
                    resume: bool = False, init_dir=None):
    """The whole stage: documents, tokenizer (out_dir/tokenizer.json), pretraining (out_dir/policy.pt; with
    cfg.eval_prompts, its reading curve out_dir/reading.png). Returns (model, enc). `nanobias pretrain`,
    `reproduce`, the tutorials and the tests all call this."""
    train_docs, val_docs = corpus(splits, cfg, seed)
    ckpt = out_dir / "policy.pt"
    if resume and ckpt.is_file():  # checked before the tokenizer beside it is rewritten
        trained_with = load_checkpoint(ckpt)["meta"].get("train_config", {}).get("vocab_size", cfg.vocab_size)
        if trained_with != cfg.vocab_size:
            raise UserError(f"--resume: {ckpt} was trained with a vocabulary of {trained_with}, not {cfg.vocab_size}; "
                            "resume with the same settings, or start afresh without --resume")
    if distributed.is_main():
        make_tokenizer(train_docs, cfg.vocab_size, out_dir / "tokenizer.json", init_dir)
    distributed.barrier()
    enc = load_tokenizer(out_dir / "tokenizer.json")
    model = pretrain(cfg, model_cfg, enc, train_docs, val_docs, out_dir / "policy.pt", seed=seed, resume=resume,
                     init=initial_model(model_cfg, init_dir), reading=curve_prompts(splits.test, cfg.eval_prompts))
    if cfg.eval_prompts and distributed.is_main():
        from nanobias.plots import reading_curves
        from nanobias.train import read_metrics

        reading_curves({out_dir.name: read_metrics(out_dir / "policy.metrics.jsonl")}, out_dir / "reading.png")
    return model, enc
