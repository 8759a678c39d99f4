"""01 - A byte-level BPE tokenizer, trained here and served by tiktoken.

Run: python tutorials/01_tokenizer.py [--tiny]

What you will see: the corpus the policy is pretrained on, the first merges BPE learns from it,
a prompt cut into tokens, why nothing is ever "unknown" to a byte-level tokenizer, the
end-of-text special token, saving without pickle, and a table of how much text one token holds
as the vocabulary grows. Library: nanobias/tokenizer.py, nanobias/pretrain.py (corpus).
"""

import time

import common

args = common.parse_args(__doc__)

from nanobias.pretrain import corpus  # noqa: E402  (common puts the repository on the path first)
from nanobias.render import render_prompt  # noqa: E402
from nanobias.tokenizer import EOT, load_tokenizer, save_tokenizer, train_bpe  # noqa: E402

preset = common.tutorial_preset(args.tiny)

common.section("1. The text to learn from")
common.say("""
    The policy will be pretrained on rendered question-answer documents from the synthetic
    BBQ-style world (tutorial 02 looks at the world itself). A tokenizer is trained on that same
    text, so its vocabulary fits it: frequent words and template phrases become single tokens.
""")
splits = common.world(preset)
train_docs, val_docs = corpus(splits, preset.pretrain, seed=common.SEED)
n_bytes = sum(len(d.encode("utf-8")) for d in train_docs)
print(f"{len(train_docs)} training documents, {n_bytes:,} bytes; one of them:\n")
print(train_docs[0])

common.section("2. Train byte-level BPE")
common.say(f"""
    Byte-level BPE starts from the 256 byte values, so every string already has an encoding.
    Training repeats one move: find the most frequent adjacent pair of tokens and make it a new
    token. train_bpe learns vocab_size - 257 merges ({preset.pretrain.vocab_size} tokens here, the
    preset's vocab_size; the +1 is end-of-text) and hands them to tiktoken, whose Rust encoder
    applies them fast. Merges never cross the GPT-4 split pattern (words, numbers, punctuation),
    so a token never glues the end of one word to the start of the next.
""")
start = time.perf_counter()
enc = train_bpe(train_docs, preset.pretrain.vocab_size)
print(f"trained {enc.n_vocab} tokens in {time.perf_counter() - start:.2f} s")
first = [enc.decode_single_token_bytes(i) for i in range(256, 268)]
print("first 12 merges (token id 256, 257, ...):", " ".join(repr(b.decode("utf-8", "replace")) for b in first))
longest = sorted(range(256, enc.n_vocab - 1), key=lambda i: -len(enc.decode_single_token_bytes(i)))[:8]
print("longest tokens:", " ".join(repr(enc.decode_single_token_bytes(i).decode("utf-8", "replace")) for i in longest))

common.section("3. A prompt, cut into tokens")
common.say("""
    Prompts and completions are encoded with encode_ordinary (text only, special tokens not
    recognised). Each token is shown between bars (a newline as ↵). Frequent names, roles and
    template words are single tokens; rarer words fall apart into pieces.
""")
prompt = render_prompt(splits.val[0])  # the prompt of val_docs[0]
ids = enc.encode_ordinary(prompt)
print("|".join(enc.decode_single_token_bytes(t).decode("utf-8", "replace").replace("\n", "↵\n") for t in ids))
print(f"\n{len(prompt.encode('utf-8'))} bytes -> {len(ids)} tokens")

common.section("4. Nothing is unknown")
common.say("""
    Text the tokenizer never saw (accents, other scripts, emoji) still encodes: it falls back to
    its UTF-8 bytes. decode(encode(s)) gives s back exactly, so no information is lost and there
    is no <unk> token.
""")
for text in ("Zoë's café served crème brûlée \U0001F370", "Говорит ли модель по-русски?"):
    ids = enc.encode_ordinary(text)
    print(f"{text!r}: {len(text.encode('utf-8'))} bytes -> {len(ids)} tokens, "
          f"round trip exact: {enc.decode(ids) == text}")

common.section("5. The end-of-text token")
common.say(f"""
    Documents are separated by the special token {EOT}. It has its own id (the last one) and the
    policy emits it to stop. encode_ordinary never produces it, even from the literal string, so
    a prompt cannot smuggle a stop signal in; only encode(..., allowed_special=...) maps the
    string to the special id.
""")
print(f"eot_token = {enc.eot_token}")
print(f"encode_ordinary({EOT!r}) = {enc.encode_ordinary(EOT)}")
print(f"encode({EOT!r}, allowed_special='all') = {enc.encode(EOT, allowed_special='all')}")

with common.output_dir(args) as out:
    common.section("6. Save and load, without pickle")
    common.say("""
        save_tokenizer writes the merges as JSON (token bytes in base64), atomically; checkpoints
        carry the same JSON, so a policy file is all one needs to sample from it.
    """)
    path = out / "tokenizer_01.json"
    save_tokenizer(enc, path)
    again = load_tokenizer(path)
    same = all(again.encode_ordinary(d) == enc.encode_ordinary(d) for d in val_docs[:50])
    print(f"wrote {path} ({path.stat().st_size:,} bytes); reloaded tokenizer encodes identically: {same}")

common.section("Result: how much text a token holds")
common.say("""
    Larger vocabularies merge more, so each token carries more bytes and sequences get shorter
    (attention cost grows with the square of the length), at the price of a bigger embedding
    table. Measured on the validation documents, whose templates the tokenizer never saw.
""")
val_bytes = sum(len(d.encode("utf-8")) for d in val_docs)
sizes = (300, 400, preset.pretrain.vocab_size) if args.tiny else (300, 512, 768, preset.pretrain.vocab_size)
print("| vocab size | train s | bytes per token | tokens per document |\n|---|---|---|---|")
for size in sizes:
    start = time.perf_counter()
    e = train_bpe(train_docs, size)
    seconds = time.perf_counter() - start
    n_tokens = sum(len(e.encode_ordinary(d)) for d in val_docs)
    print(f"| {e.n_vocab} | {seconds:.2f} | {val_bytes / n_tokens:.2f} | {n_tokens / len(val_docs):.1f} |")
print("(vocab size 256 + 1 would be raw bytes: 1.00 bytes per token)")
common.finish()
