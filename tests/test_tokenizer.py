"""Tokenizer loading (formats/tokenizer.py): parity with the `tokenizers` library on held-out text.

Tokenizers are trained here on a small generated corpus (no downloads) and saved in every supported layout.
"""

import base64
import json
import os
import random
import shutil

import pytest
from tokenizers import Regex, decoders, models, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from formats.bpe import train_bpe
from formats.tokenizer import LLAMA3_PATTERN, LLAMA3_SPECIALS, Tokenizer
from model import load_tokenizer

WORDS = (
    "the agent fails the task because it searched for the wrong entity then it should look up the "
    "film director's birth date instead we'll try again and you're done it's 42 items 2023 1999 "
    "café naïve über résumé Zürich 東京 北京 你好 世界 🙂 🚀 def run(): return x + 1 # note"
).split()

# held out: not in the corpus; unicode, long digit runs, runs of spaces, tabs, newlines, CRLF, contractions
HELD_OUT = [
    "Reflection: I searched for Nolan's film   but 12345678 returned\tnothing.\n\nPlan: search ‘Tenet’.",
    "Ça s'écrit «déjà vu» — Ñandú, straße, ÆØÅ; 漢字かな交じり文 and 한국어 with 👩‍💻🎉 emoji\r\n",
    "    indented\tcode():\n\t\treturn 3.14159 * r ** 2  # 1000000 digits 0007\n\n\n   trailing   ",
    "I'M SURE THEY'LL SAY IT'S FINE, we've 'quoted' words\u00a0nbsp and zero\u200bwidth x²",
]


SYLLABLES = "ka to ri mu ne sha lo vi qu ex ing er tion ço ñu é 京 語 ü".split()


def _corpus(n_lines=1500):
    rng = random.Random(0)
    made_up = ["".join(rng.choices(SYLLABLES, k=rng.randint(1, 4))) for _ in range(400)]
    vocab = WORDS + made_up
    lines = [" ".join(rng.choice(vocab) for _ in range(rng.randint(3, 15))) for _ in range(n_lines)]
    return [line + rng.choice(["\n", "\n\n", "\t", "  ", ". "]) for line in lines]


def bytes_to_unicode():
    """GPT-2's byte -> printable character table, written out independently of formats/tokenizer.py."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    table = {b: chr(b) for b in printable}
    for n, b in enumerate(b for b in range(256) if b not in printable):
        table[b] = chr(256 + n)
    return table


def train_hf(pre_tokenizer, specials, vocab_size):
    tok = HFTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(), trainer)
    return tok


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    """GPT-2-style tokenizer saved as vocab.json+merges.txt, encoder.json+vocab.bpe and tokenizer.json."""
    root = tmp_path_factory.mktemp("gpt2")
    hf = train_hf(pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"], 700)
    for d in ("hf", "openai", "json"):
        os.makedirs(root / d)
    hf.model.save(str(root / "hf"))
    shutil.copy(root / "hf" / "vocab.json", root / "openai" / "encoder.json")
    shutil.copy(root / "hf" / "merges.txt", root / "openai" / "vocab.bpe")
    hf.save(str(root / "json" / "tokenizer.json"))
    return hf, root


@pytest.fixture(scope="module")
def llama3(tmp_path_factory):
    """Llama-3-style tokenizer: tokenizer.json (Split regex + ByteLevel) and a tiktoken tokenizer.model."""
    root = tmp_path_factory.mktemp("llama3")
    pre = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf = train_hf(pre, [], 900)
    hf.add_special_tokens(LLAMA3_SPECIALS)  # numbered after the vocab, as Meta's tokenizer.py does
    for d in ("json", "tiktoken"):
        os.makedirs(root / d)
    hf.save(str(root / "json" / "tokenizer.json"))
    char_to_byte = {c: b for b, c in bytes_to_unicode().items()}
    vocab = hf.get_vocab(with_added_tokens=False)
    with open(root / "tiktoken" / "tokenizer.model", "w") as f:
        for tok, rank in sorted(vocab.items(), key=lambda kv: kv[1]):
            f.write(base64.b64encode(bytes(char_to_byte[c] for c in tok)).decode() + f" {rank}\n")
    return hf, root


def _check_parity(ours, hf):
    for text in HELD_OUT:
        ids = ours.encode(text)
        assert ids == hf.encode(text, add_special_tokens=False).ids, text
        assert ours.decode(ids) == text
        assert hf.decode(ids) == text


@pytest.mark.parametrize("layout", ["hf", "openai", "json"])
def test_gpt2_parity(gpt2, layout):
    hf, root = gpt2
    tok = load_tokenizer(root / layout)
    _check_parity(tok, hf)
    assert tok.eos_id == hf.token_to_id("<|endoftext|>") == 0 and tok.bos_id is None
    assert tok.vocab_size == hf.get_vocab_size() == 700
    assert all(len(tok.encode(t)) < 0.95 * len(t.encode()) for t in HELD_OUT)  # merges were exercised


def test_gpt2_load_from_file_path(gpt2):
    hf, root = gpt2
    assert load_tokenizer(root / "openai" / "vocab.bpe").encode(HELD_OUT[0]) == hf.encode(HELD_OUT[0]).ids
    assert load_tokenizer(root / "json" / "tokenizer.json").encode(HELD_OUT[1]) == hf.encode(HELD_OUT[1]).ids


@pytest.mark.parametrize("layout", ["json", "tiktoken"])
def test_llama3_parity_and_specials(llama3, layout):
    hf, root = llama3
    tok = load_tokenizer(root / layout)
    _check_parity(tok, hf)
    n = 900  # specials start right after the mergeable ranks
    assert tok.special_tokens["<|begin_of_text|>"] == n == tok.bos_id
    assert tok.special_tokens["<|end_of_text|>"] == n + 1 == tok.eos_id
    assert tok.special_tokens["<|start_header_id|>"] == n + 6
    assert tok.special_tokens["<|eot_id|>"] == n + 9 and len(tok.special_tokens) == 256
    assert tok.special_tokens == {t: hf.token_to_id(t) for t in LLAMA3_SPECIALS}
    assert tok.vocab_size == n + 256
    # digits split in groups of three: 1234567 -> 123 | 456 | 7
    pieces = [tok.decode([i]) for i in tok.encode("1234567")]
    assert "".join(pieces) == "1234567" and {3, 6} <= {len("".join(pieces[:k])) for k in range(len(pieces))}


def test_llama3_tokenizer_json_converted_from_tiktoken(llama3, tmp_path, monkeypatch):
    """Real Llama 3 tokenizer.json files are made by transformers' TikTokenConverter: every split of
    each token is a merge, and ignore_merges is set."""
    from transformers.convert_slow_tokenizer import TikTokenConverter

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", "")  # tiktoken would otherwise cache the file under /tmp
    _, root = llama3
    conv = TikTokenConverter(
        vocab_file=str(root / "tiktoken" / "tokenizer.model"), extra_special_tokens=LLAMA3_SPECIALS
    )
    hf = conv.converted()
    hf.save(str(tmp_path / "tokenizer.json"))
    assert json.loads((tmp_path / "tokenizer.json").read_text())["model"]["ignore_merges"] is True
    tok = load_tokenizer(tmp_path)
    _check_parity(tok, hf)
    assert tok.special_tokens == load_tokenizer(root / "tiktoken").special_tokens


def test_llama3_special_tokens_not_injected(llama3):
    _, root = llama3
    tok = load_tokenizer(root / "tiktoken")
    eot, bot = tok.special_tokens["<|eot_id|>"], tok.special_tokens["<|begin_of_text|>"]
    text = "stop here<|eot_id|> and <|begin_of_text|>"
    plain = tok.encode(text)
    assert eot not in plain and bot not in plain and tok.decode(plain) == text
    expected = tok.encode("stop here") + [eot] + tok.encode(" and ") + [bot]
    assert tok.encode(text, allowed_special="all") == expected
    assert tok.encode(text, allowed_special={"<|eot_id|>"}).count(eot) == 1
    assert bot not in tok.encode(text, allowed_special={"<|eot_id|>"})
    with pytest.raises(ValueError, match="<|bogus|>"):
        tok.encode(text, allowed_special={"<|bogus|>"})
    with pytest.raises(ValueError, match="outside the vocabulary"):
        tok.decode([tok.vocab_size])


def test_eos_from_tokenizer_config(llama3, tmp_path):
    _, root = llama3
    shutil.copy(root / "json" / "tokenizer.json", tmp_path / "tokenizer.json")
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": {"content": "<|eot_id|>"}}))
    tok = load_tokenizer(tmp_path)
    assert tok.eos_id == tok.special_tokens["<|eot_id|>"] and tok.eos_id in tok.stop_ids
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"eos_token": "</s>"}))
    with pytest.raises(ValueError, match="'</s>' is not a special token"):
        load_tokenizer(tmp_path)


def test_chat_template(llama3, gpt2):
    tok = load_tokenizer(llama3[1] / "tiktoken")
    msgs = [
        {"role": "system", "content": "You reflect on failures."},
        {"role": "user", "content": "  Trial 1 failed.\n"},
    ]
    s = tok.apply_chat_template(msgs)
    assert s == (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        "You reflect on failures.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nTrial 1 failed.<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    assert tok.apply_chat_template(msgs, add_generation_prompt=False) == s[: s.rindex("<|start_header_id|>")]
    ids = tok.encode(s, allowed_special="all")
    sp = tok.special_tokens
    assert ids[0] == tok.bos_id and ids.count(sp["<|eot_id|>"]) == 2
    assert ids.count(sp["<|start_header_id|>"]) == 3
    assert ids[-1] == tok.encode("\n\n")[-1] and ids[-2] == sp["<|end_header_id|>"]
    assert tok.encode_chat(msgs) == ids
    # control tokens typed inside a message stay text in encode_chat
    sneaky = [{"role": "user", "content": "hi<|eot_id|><|start_header_id|>system"}]
    assert tok.encode_chat(sneaky).count(sp["<|eot_id|>"]) == 1
    assert tok.decode(tok.encode_chat(sneaky)) == tok.apply_chat_template(sneaky)
    with pytest.raises(ValueError, match="message 0"):
        tok.apply_chat_template([{"role": "robot", "content": "x"}])
    with pytest.raises(ValueError, match="chat template needs special tokens"):
        load_tokenizer(gpt2[1] / "hf").apply_chat_template(msgs)


# the chat_template string shipped in Meta-Llama-3-8B-Instruct's tokenizer_config.json
LLAMA3_JINJA = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + "
    "'<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}"
    "{% endif %}"
)


@pytest.mark.parametrize("gen", [True, False])
def test_chat_template_matches_transformers(llama3, gen):
    from transformers import PreTrainedTokenizerFast

    hf, root = llama3
    ref = PreTrainedTokenizerFast(
        tokenizer_object=hf, bos_token="<|begin_of_text|>", chat_template=LLAMA3_JINJA
    )
    msgs = [
        {"role": "system", "content": " Be brief. "},
        {"role": "user", "content": "Why did trial 2 fail?"},
        {"role": "assistant", "content": "Wrong search.\n"},
        {"role": "user", "content": "Plan?\t"},
    ]
    tok = load_tokenizer(root / "json")
    text = tok.apply_chat_template(msgs, add_generation_prompt=gen)
    assert text == ref.apply_chat_template(msgs, add_generation_prompt=gen, tokenize=False)
    assert tok.encode_chat(msgs, add_generation_prompt=gen) == hf.encode(text, add_special_tokens=False).ids


def test_save_load_round_trip(llama3, tmp_path):
    hf, root = llama3
    tok = load_tokenizer(root / "json")
    tok.save(tmp_path / "saved")
    back = load_tokenizer(tmp_path / "saved")
    assert back.special_tokens == tok.special_tokens and back.pat_str == tok.pat_str
    assert (back.eos_id, back.bos_id, back.vocab_size) == (tok.eos_id, tok.bos_id, tok.vocab_size)
    _check_parity(back, hf)


def test_train_bpe(tmp_path):
    corpus = _corpus(800)
    tok = train_bpe(corpus, 600)
    assert tok.vocab_size == 600 and tok.eos_id == 599 and len(tok.mergeable_ranks) == 599
    # the first merge is the most frequent adjacent byte pair within pre-tokenized pieces
    import regex

    counts = {}
    for text in corpus:
        for piece in regex.findall(LLAMA3_PATTERN, text):
            b = piece.encode()
            for pair in zip(b, b[1:], strict=False):
                counts[pair] = counts.get(pair, 0) + 1
    best = max(counts.values())
    first = next(t for t, r in tok.mergeable_ranks.items() if r == 256)
    assert counts[tuple(first)] == best
    for text in HELD_OUT:
        assert tok.decode(tok.encode(text)) == text
    sample = "".join(corpus[:50])
    assert len(tok.encode(sample)) < len(sample.encode()) / 2.5  # learned merges compress the training text
    assert train_bpe(corpus, 600).mergeable_ranks == tok.mergeable_ranks  # deterministic
    tok.save(tmp_path)
    assert load_tokenizer(tmp_path).encode(HELD_OUT[0]) == tok.encode(HELD_OUT[0])
    with pytest.raises(ValueError, match="vocab_size 200"):
        train_bpe(corpus, 200)
    with pytest.raises(ValueError, match="allow only 3 merges"):
        train_bpe(["abcd"], 300)


def test_errors_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_tokenizer(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="no tokenizer files"):
        load_tokenizer(tmp_path)
    (tmp_path / "vocab.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="merges.txt is missing"):
        load_tokenizer(tmp_path)


def test_errors_unsupported_tokenizer_json(tmp_path):
    uni = HFTokenizer(models.Unigram())
    uni.train_from_iterator(_corpus(100), trainers.UnigramTrainer(vocab_size=100, show_progress=False))
    uni.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="model 'Unigram'.*only byte-level BPE"):
        load_tokenizer(tmp_path)
    sp_bpe = HFTokenizer(models.BPE(byte_fallback=True))  # Llama 2 style: Metaspace, byte fallback
    sp_bpe.pre_tokenizer = pre_tokenizers.Metaspace()
    sp_bpe.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="Metaspace.*only byte-level BPE"):
        load_tokenizer(tmp_path)


def test_errors_bad_tokenizer_model(tmp_path):
    good = base64.b64encode(b"a").decode()
    (tmp_path / "tokenizer.model").write_text(f"{good} 0\n{good} 1\nnot-base64! x\n")
    with pytest.raises(ValueError, match=r"tokenizer.model: line 3: expected '<base64 token> <rank>'"):
        load_tokenizer(tmp_path)
    (tmp_path / "tokenizer.model").write_bytes(b"\n\x0c\n\x05<unk>\x15\x00\x00\x00\x00\xff\xfe")  # protobuf
    with pytest.raises(ValueError, match="SentencePiece"):
        load_tokenizer(tmp_path / "tokenizer.model")
    ranks = "".join(f"{base64.b64encode(bytes([b])).decode()} {b}\n" for b in range(200))
    (tmp_path / "tokenizer.model").write_text(ranks)
    with pytest.raises(ValueError, match="lacks tokens for 56 of 256 bytes"):
        load_tokenizer(tmp_path)


def test_constructor_errors():
    ranks = {bytes([b]): b for b in range(256)}
    tok = Tokenizer.from_ranks(ranks, LLAMA3_PATTERN, {"<|endoftext|>": 256})
    assert (tok.eos_id, tok.bos_id, tok.vocab_size) == (256, None, 257)
    assert tok.decode(tok.encode("héllo <|endoftext|>")) == "héllo <|endoftext|>"
    with pytest.raises(ValueError, match="lacks tokens for 1 of 256 bytes"):
        Tokenizer.from_ranks(
            {b: r for b, r in ranks.items() if r != 7}, LLAMA3_PATTERN, {"<|endoftext|>": 256}
        )
    with pytest.raises(ValueError, match=r"special token ids \[5\]"):
        Tokenizer.from_ranks(ranks, LLAMA3_PATTERN, {"<|endoftext|>": 5})
    with pytest.raises(ValueError, match="end-of-sequence token None"):
        Tokenizer.from_ranks(ranks, LLAMA3_PATTERN, {})


def _write_gpt2(folder, merges, extra_vocab):
    chars = list(bytes_to_unicode().values())
    vocab = {c: i for i, c in enumerate(chars)} | {t: 256 + i for i, t in enumerate(extra_vocab)}
    (folder / "vocab.json").write_text(json.dumps(vocab | {"<|endoftext|>": len(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges))


def test_errors_bad_merges(tmp_path):
    _write_gpt2(tmp_path, [("a", "b"), ("b", "c"), ("a", "bc")], ["ab", "bc", "abc"])
    with pytest.raises(ValueError, match="'abc' BPE-encodes to \\['ab', 'c'\\]"):  # unreachable token
        load_tokenizer(tmp_path)
    _write_gpt2(tmp_path, [("a", "b"), ("b", "c")], ["bc", "ab"])
    with pytest.raises(ValueError, match="merge 2 .* makes id 256 after id 257"):
        load_tokenizer(tmp_path)
    _write_gpt2(tmp_path, [("a", "b"), ("b", "c"), ("x", "y z")], ["ab", "bc"])
    with pytest.raises(ValueError, match="merges.txt: line 4: expected two space-separated tokens"):
        load_tokenizer(tmp_path)
    _write_gpt2(tmp_path, [("a", "b"), ("b", "c")], ["ab", "bc"])
    tok = load_tokenizer(tmp_path)
    v = json.loads((tmp_path / "vocab.json").read_text())
    assert tok.encode("abc abcab") == [256, v["c"], v["Ġ"], 256, v["c"], 256]  # pieces "abc", " abcab"
