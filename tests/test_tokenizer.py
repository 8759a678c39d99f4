import json
import random
from collections import Counter

import pytest
import regex
import tiktoken

from nanobias.tokenizer import (EOT, GPT4_SPLIT_PATTERN, get_tokenizer, load_tokenizer,
                                save_tokenizer, train_bpe)

VOCAB = 420


def english_like_corpus(seed: int, n_sentences: int = 120) -> list[str]:
    """A few KB of templated sentences with names, numbers, accents, CJK and emoji."""
    rng = random.Random(seed)
    names = ["Amira", "Bjørn", "Chen Wei", "Dolores", "Émile", "Farah", "Gustavo", "Hiroshi", "Zoë"]
    places = ["the café", "a clinic", "the library", "東京駅", "the bus stop", "a naïve startup"]
    templates = [
        "{a} and {b} met at {p} around {n}:30, and {a} said hello 👋.",
        "Question: who was late to {p}? Answer: {b}, obviously! 🙂",
        "{b} didn't know that {a}'s report had {n} pages.\n\n",
        "Neither {a} nor {b} liked {p} — it cost ${n}.99 😅",
    ]
    return [rng.choice(templates).format(a=rng.choice(names), b=rng.choice(names),
                                         p=rng.choice(places), n=rng.randint(1, 2000))
            for _ in range(n_sentences)]


def random_unicode(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(0, 12)):
        kind = rng.randrange(6)
        if kind == 0:  # any scalar value, astral planes included; lone surrogates are not text
            cp = rng.randint(0, 0x10FFFF)
            pieces.append(chr(cp) if not 0xD800 <= cp <= 0xDFFF else "x")
        elif kind == 1:
            pieces.append("".join(rng.choices([" ", "\t", "\n", "\r\n", "\u3000", "\xa0"],
                                              k=rng.randint(1, 6))))
        elif kind == 2:
            pieces.append(str(rng.randint(0, 10**9)))
        elif kind == 3:
            pieces.append("".join(rng.choices("!?.,;:'\"-—()[]{}<|>*#$%&@~`^", k=rng.randint(1, 4))))
        elif kind == 4:
            pieces.append(rng.choice(["🙂", "👩‍🔬", "𝔘𝔫𝔦", "日本語", "Ωμέγα", "\U0001F3FD", EOT]))
        else:
            pieces.append(rng.choice(["the", " café", "Hello", " didn't", "naïve", "Zoë"]))
    return "".join(pieces)


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return english_like_corpus(seed=0)


@pytest.fixture(scope="module")
def enc(corpus) -> tiktoken.Encoding:
    return train_bpe(corpus, VOCAB)


def reference_merges(texts: list[str], n_merges: int) -> list[bytes]:
    """Textbook BPE: recount every pair over all chunks after each merge (no incremental update)."""
    chunks = Counter(c for t in texts for c in regex.findall(GPT4_SPLIT_PATTERN, t))
    words = {tuple(c.encode("utf-8")): n for c, n in chunks.items()}
    tokens = [bytes([b]) for b in range(256)]
    while len(tokens) < 256 + n_merges:
        counts = Counter()
        for word, n in words.items():
            for pair in zip(word, word[1:]):
                counts[pair] += n
        a, b = min(counts, key=lambda p: (-counts[p], p))
        tokens.append(tokens[a] + tokens[b])
        merged = {}
        for word, n in words.items():
            out, i = [], 0
            while i < len(word):
                if word[i:i + 2] == (a, b):
                    out.append(len(tokens) - 1)
                    i += 2
                else:
                    out.append(word[i])
                    i += 1
            merged[tuple(out)] = n
        words = merged
    return tokens[256:]


def learned_merges(enc: tiktoken.Encoding) -> list[bytes]:
    ranks = enc._mergeable_ranks
    return sorted((b for b in ranks if ranks[b] >= 256), key=ranks.__getitem__)


def test_hand_computed_merges_follow_word_counts():
    # chunks "xy", " xy", " xy", " zw": (x,y) occurs 3 times, (" ",x) twice, then a tie between
    # (" ",z) and (z,w) goes to the smaller ids. The raw-text pair "y " never merges (chunk edge).
    enc = train_bpe(["xy xy xy zw"], 256 + 4 + 1)
    assert learned_merges(enc) == [b"xy", b" xy", b" z", b" zw"]
    # "aaab": (a,a) x2 first; then (a,b) and (aa,a) tie at 1 and (97,98) < (256,97).
    assert learned_merges(train_bpe(["aaab"], 260)) == [b"aa", b"ab", b"aaab"]


def test_incremental_training_matches_textbook_bpe(corpus):
    assert learned_merges(train_bpe(corpus, 256 + 80 + 1)) == reference_merges(corpus, 80)


def test_vocab_size_is_exact_and_eot_is_last(enc):
    assert enc.n_vocab == VOCAB
    assert len(enc._mergeable_ranks) + len(enc._special_tokens) == VOCAB
    assert sorted(enc._mergeable_ranks.values()) == list(range(VOCAB - 1))
    assert enc.eot_token == VOCAB - 1


def test_round_trip_random_unicode(enc):
    rng = random.Random(1234)
    for _ in range(500):
        s = random_unicode(rng)
        ids = enc.encode(s, disallowed_special=())
        assert enc.decode(ids) == s
        assert enc.decode(enc.encode_ordinary(s)) == s
        assert all(0 <= i < enc.eot_token for i in ids)  # EOT text is ordinary text here


def test_eot_is_one_token_when_allowed(enc):
    ids = enc.encode(f"hi{EOT}there", allowed_special={EOT})
    assert ids.count(enc.eot_token) == 1
    assert enc.encode(EOT, allowed_special={EOT}) == [enc.eot_token]
    assert enc.decode(ids) == f"hi{EOT}there"
    with pytest.raises(ValueError):  # tiktoken refuses special text unless allowed
        enc.encode(EOT)


def test_merges_compress(enc, corpus):
    text = "".join(english_like_corpus(seed=1))
    assert len(enc.encode_ordinary(text)) < 0.5 * len(text.encode("utf-8"))


def test_training_is_deterministic_and_order_free(enc, corpus):
    shuffled = corpus[:]
    random.Random(7).shuffle(shuffled)
    assert train_bpe(corpus, VOCAB)._mergeable_ranks == enc._mergeable_ranks
    assert train_bpe(shuffled, VOCAB)._mergeable_ranks == enc._mergeable_ranks


def test_vocab_below_minimum_is_rejected(corpus):
    with pytest.raises(ValueError, match=r"vocab_size=256 .*at least 257"):
        train_bpe(corpus, 256)


def test_corpus_without_enough_pairs_stops_early_and_says_so(capsys):
    # chunks "ab", "ab" (EOT is a boundary, not text): one merge possible, so 258 tokens at most.
    assert train_bpe([f"ab{EOT}ab"], 258).n_vocab == 258
    enc = train_bpe([f"ab{EOT}ab"], 300)
    assert enc.n_vocab == 258 and enc.eot_token == 257
    assert enc.decode(enc.encode("abab")) == "abab"
    assert "only 1 merges" in capsys.readouterr().err


def test_save_load_gives_same_ids(enc, tmp_path):
    path = tmp_path / "tokenizer.json"
    save_tokenizer(enc, path)
    assert list(tmp_path.iterdir()) == [path]  # temp file renamed away
    data = json.loads(path.read_text())  # plain JSON, no pickle
    assert set(data) == {"name", "pat_str", "mergeable_ranks", "special_tokens"}
    loaded = load_tokenizer(path)
    assert loaded.n_vocab == enc.n_vocab and loaded.eot_token == enc.eot_token
    text = "".join(english_like_corpus(seed=2)) + EOT + random_unicode(random.Random(3))
    assert loaded.encode(text, allowed_special="all") == enc.encode(text, allowed_special="all")
    assert get_tokenizer(str(path)).encode_ordinary(text) == enc.encode_ordinary(text)


@pytest.mark.parametrize("content, field", [
    ("{not json", "not a valid tokenizer JSON"),
    ("[1, 2]", "expected a JSON object"),
    ('{"name": "x", "mergeable_ranks": {}, "special_tokens": {}}', "'pat_str'"),
    ('{"name": "x", "pat_str": ".", "mergeable_ranks": {"YQ==": "0"}, "special_tokens": {}}',
     "'mergeable_ranks' must map"),
    ('{"name": "x", "pat_str": ".", "mergeable_ranks": {"@@": 0}, "special_tokens": {}}',
     "not base64"),
])
def test_bad_tokenizer_file_names_file_and_field(tmp_path, content, field):
    path = tmp_path / "broken_tok.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="broken_tok.json") as err:
        load_tokenizer(path)
    assert field in str(err.value)


def test_tiktoken_name_offline_gives_clear_error(monkeypatch):
    def offline(name):
        raise ConnectionError("network unreachable")
    monkeypatch.setattr(tiktoken, "get_encoding", offline)
    with pytest.raises(RuntimeError, match="'gpt2'") as err:
        get_tokenizer("gpt2")
    assert "nanobias pretrain" in str(err.value) and "tokenizer.json" in str(err.value)


def test_tiktoken_name_is_passed_to_tiktoken(monkeypatch, enc):
    monkeypatch.setattr(tiktoken, "get_encoding", lambda name: enc if name == "cl100k_base" else None)
    assert get_tokenizer("cl100k_base") is enc


def test_unknown_name_is_rejected():
    with pytest.raises(ValueError, match="no_such_tokenizer.*neither an existing file"):
        get_tokenizer("no_such_tokenizer")
