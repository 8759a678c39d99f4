"""Byte-level BPE trained from scratch, served by tiktoken.

Byte-level BPE (Sennrich et al. 2016; GPT-2, Radford et al. 2019, sec. 2.2) starts from the 256
possible bytes, so every string has an encoding (its UTF-8 bytes) and decode(encode(s)) == s with
no unknown token. Training repeats: find the most frequent adjacent pair of tokens (a, b), add the
new token ab with the next id, and replace every (a, b) by ab. Token ids are merge ranks, which is
exactly what `tiktoken.Encoding(mergeable_ranks=...)` expects, so tiktoken's fast Rust encoder
applies our merges at inference.

Merges never cross the chunks cut by the GPT-4 (cl100k) split regex (letters, up to 3 digits,
punctuation runs, whitespace), so the text reduces to a table {chunk: count}. A few MB of
templated English hold only thousands of distinct chunks, so counting pairs over the table,
    count(a, b) = sum over chunks w of  count(w) * #occurrences of (a, b) in w,
is far cheaper than over the raw text. After each merge only the chunks that contained (a, b)
change; their pairs are subtracted and re-added (incremental update), and a lazy max-heap gives
the next best pair. Ties go to the smallest (a, b) ids, so the same counts give the same merges.

Special tokens (only EOT) take the ids after the merges; vocab_size counts them too.
"""
import base64
import heapq
import json
import os
import sys
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import regex  # tiktoken's own dependency; needed for \p{L} classes and possessive quantifiers
import tiktoken

from nanobias.errors import UserError

EOT = "<|endoftext|>"
GPT4_SPLIT_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
    r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
SPECIAL_TOKENS = (EOT,)
MIN_VOCAB_SIZE = 256 + len(SPECIAL_TOKENS)


def _merge(word: tuple[int, ...], pair: tuple[int, int], new_id: int) -> tuple[int, ...]:
    out, i = [], 0
    while i < len(word):
        if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
            out.append(new_id)
            i += 2
        else:
            out.append(word[i])
            i += 1
    return tuple(out)


def train_bpe(texts: Iterable[str], vocab_size: int, name: str = "nanobias",
              progress: bool = False) -> tiktoken.Encoding:
    """Learn vocab_size - 257 merges over the chunk counts of `texts`; return a tiktoken Encoding.

    Raises ValueError if vocab_size < 257. A corpus that runs out of pairs to merge first (a
    templated world has few distinct words) gives a smaller vocabulary, with a note on stderr.
    """
    if vocab_size < MIN_VOCAB_SIZE:
        raise ValueError(f"vocab_size={vocab_size} is too small: need at least {MIN_VOCAB_SIZE} "
                         f"(256 byte tokens + {len(SPECIAL_TOKENS)} special)")
    split = regex.compile(GPT4_SPLIT_PATTERN)
    chunk_counts: Counter[str] = Counter()
    for text in texts:
        for part in text.split(EOT):  # a special token is a document boundary, not text to learn
            chunk_counts.update(split.findall(part))
    words = [tuple(chunk.encode("utf-8")) for chunk in chunk_counts]
    counts = list(chunk_counts.values())

    pair_counts: defaultdict[tuple[int, int], int] = defaultdict(int)
    words_with_pair: defaultdict[tuple[int, int], set[int]] = defaultdict(set)
    for w, (word, count) in enumerate(zip(words, counts)):
        for pair in zip(word, word[1:]):
            pair_counts[pair] += count
            words_with_pair[pair].add(w)
    heap = [(-count, pair) for pair, count in pair_counts.items()]
    heapq.heapify(heap)

    token_bytes = [bytes([b]) for b in range(256)]
    known_bytes = set(token_bytes)
    n_merges = vocab_size - MIN_VOCAB_SIZE
    while len(token_bytes) < 256 + n_merges:
        if not heap:  # every chunk is a single token: more merges are impossible, stop here
            print(f"tokenizer: the corpus supports only {len(token_bytes) - 256} merges, so the vocabulary "
                  f"has {len(token_bytes) + len(SPECIAL_TOKENS)} tokens instead of {vocab_size}", file=sys.stderr)
            break
        neg_count, pair = heapq.heappop(heap)
        # Stale heap entry (count changed since it was pushed) or a pair that is gone.
        if -neg_count != pair_counts.get(pair, 0) or neg_count == 0:
            continue
        new_bytes = token_bytes[pair[0]] + token_bytes[pair[1]]
        # Another split of the same bytes was merged earlier; tiktoken would merge this pair into
        # that token anyway, and a duplicate would leave a hole in the ranks.
        if new_bytes in known_bytes:
            del pair_counts[pair]
            continue
        new_id = len(token_bytes)
        token_bytes.append(new_bytes)
        known_bytes.add(new_bytes)
        changed: set[tuple[int, int]] = set()
        for w in words_with_pair.pop(pair):
            old, count = words[w], counts[w]
            new = _merge(old, pair, new_id)
            if new == old:
                continue
            words[w] = new
            for p in zip(old, old[1:]):
                pair_counts[p] -= count
                changed.add(p)
            for p in zip(new, new[1:]):
                pair_counts[p] += count
                changed.add(p)
                if new_id in p:  # other pairs of `new` were in `old`, so w is already listed
                    words_with_pair[p].add(w)
        for p in changed:
            heapq.heappush(heap, (-pair_counts[p], p))
        if progress and (new_id - 255) % 256 == 0:
            print(f"bpe merge {new_id - 255}/{n_merges}: {new_bytes!r} x{-neg_count}",
                  file=sys.stderr)

    ranks = {b: rank for rank, b in enumerate(token_bytes)}
    specials = {tok: len(token_bytes) + i for i, tok in enumerate(SPECIAL_TOKENS)}
    return tiktoken.Encoding(name, pat_str=GPT4_SPLIT_PATTERN, mergeable_ranks=ranks,
                             special_tokens=specials, explicit_n_vocab=len(token_bytes) + len(specials))


def tokenizer_to_json(enc: tiktoken.Encoding) -> str:
    """`enc` as JSON text, token bytes in base64 (what save_tokenizer writes, and what checkpoints carry)."""
    return json.dumps({
        "name": enc.name,
        "pat_str": enc._pat_str,
        "mergeable_ranks": {base64.b64encode(b).decode("ascii"): rank
                            for b, rank in enc._mergeable_ranks.items()},
        "special_tokens": enc._special_tokens,
    })


def tokenizer_from_json(text: str, source: str = "tokenizer JSON") -> tiktoken.Encoding:
    """Inverse of tokenizer_to_json; errors name `source` (a file path) and the bad field."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{source}: not a valid tokenizer JSON file ({e})") from e
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    expected = {"name": str, "pat_str": str, "mergeable_ranks": dict, "special_tokens": dict}
    for field, kind in expected.items():
        if not isinstance(data.get(field), kind):
            raise ValueError(f"{source}: field '{field}' missing or not a {kind.__name__}")
    for field in ("mergeable_ranks", "special_tokens"):
        if not all(isinstance(v, int) for v in data[field].values()):
            raise ValueError(f"{source}: field '{field}' must map strings to integer ids")
    try:
        ranks = {base64.b64decode(k, validate=True): v for k, v in data["mergeable_ranks"].items()}
    except ValueError as e:
        raise ValueError(f"{source}: field 'mergeable_ranks' has a key that is not base64 ({e})") from e
    return tiktoken.Encoding(data["name"], pat_str=data["pat_str"], mergeable_ranks=ranks,
                             special_tokens=data["special_tokens"])


def save_tokenizer(enc: tiktoken.Encoding, path) -> None:
    """Write `enc` as JSON, atomically via a temp file and os.replace."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(tokenizer_to_json(enc), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:  # a full disk or a read-only folder: no half-written tokenizer left behind
        tmp.unlink(missing_ok=True)
        raise UserError(f"cannot write {path}: {e.strerror or e}") from e


def load_tokenizer(path) -> tiktoken.Encoding:
    """Read a tokenizer written by save_tokenizer."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path}: cannot read the tokenizer ({e}); the command that trains it writes it") from e
    return tokenizer_from_json(text, source=str(path))


def get_tokenizer(name_or_path: str) -> tiktoken.Encoding:
    """A saved tokenizer JSON file by path, or a tiktoken encoding by name ("gpt2", "cl100k_base")."""
    if os.path.exists(name_or_path):
        return load_tokenizer(name_or_path)
    names = tiktoken.list_encoding_names()
    if name_or_path not in names:
        raise ValueError(f"tokenizer '{name_or_path}' is neither an existing file nor a tiktoken "
                         f"encoding name ({', '.join(names)})")
    try:
        return tiktoken.get_encoding(name_or_path)
    except Exception as e:  # tiktoken raises assorted network/cache errors when offline
        raise RuntimeError(
            f"could not load tiktoken encoding '{name_or_path}' (it is downloaded on first use; "
            f"no network or cache?): {e}. Use the nanobias tokenizer instead: `nanobias pretrain` "
            f"trains one, or pass the path of a saved tokenizer.json") from e
