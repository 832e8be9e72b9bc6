"""Tokenizers: one byte-level BPE `Tokenizer` on tiktoken, its Llama 3 chat template, and the loaders.

Every source (tokenizer.json, tokenizer.model in tiktoken format, vocab.json + merges.txt, encoder.json +
vocab.bpe) becomes one tiktoken.Encoding: byte-level BPE vocab -> {token bytes: rank}, a split regex,
and special tokens. tiktoken's token ids are its ranks, so a vocab's ids must be in merge order.
"""

import base64
import functools
import itertools
import json
import os

import tiktoken

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Meta's llama3 tokenizer.py: 256 specials numbered right after the mergeable ranks (128000 for Llama 3).
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>",
] + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - 11)]
CHAT_ROLES = ("system", "user", "assistant")


class Tokenizer:
    """Byte-level BPE on tiktoken. Special-token text is plain text unless allowed_special says otherwise."""

    def __init__(self, mergeable_ranks: dict[bytes, int], pat_str: str, special_tokens: dict[str, int],
                 eos: str | None = None, bos: str | None = None):
        missing = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
        if missing:  # tiktoken cannot encode a byte that has no token
            raise ValueError(f"tokenizer vocab lacks tokens for {len(missing)} of 256 bytes: {missing[:5]}")
        clash = set(special_tokens.values()) & set(mergeable_ranks.values())
        if clash:
            raise ValueError(f"special token ids {sorted(clash)[:5]} are also ids of ordinary tokens")
        self.mergeable_ranks, self.pat_str = mergeable_ranks, pat_str
        self.special_tokens = dict(special_tokens)
        self.enc = tiktoken.Encoding("retroformer", pat_str=pat_str, mergeable_ranks=mergeable_ranks,
                                     special_tokens=self.special_tokens)
        self.vocab_size = self.enc.n_vocab
        if eos is None:  # GPT-2, then Llama 3 base; instruct models name <|eot_id|> in tokenizer_config.json
            eos = next((t for t in ("<|endoftext|>", "<|end_of_text|>", "<|eot_id|>") if t in special_tokens),
                       None)
        if eos not in special_tokens:
            raise ValueError(f"end-of-sequence token {eos!r} is not a special token of this tokenizer")
        if bos is None and "<|begin_of_text|>" in special_tokens:
            bos = "<|begin_of_text|>"
        if bos is not None and bos not in special_tokens:
            raise ValueError(f"begin-of-sequence token {bos!r} is not a special token of this tokenizer")
        if bos == eos:  # GPT-2's configs name <|endoftext|> as bos too, but it has no real bos
            bos = None
        self.eos, self.bos = eos, bos
        self.eos_id = special_tokens[eos]
        self.bos_id = special_tokens[bos] if bos is not None else None
        # generation stops at any end-of-turn token, not only eos (chat models end turns with <|eot_id|>)
        ends = ("<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>")
        self.stop_ids = sorted({self.eos_id} | {special_tokens[t] for t in ends if t in special_tokens})

    @classmethod
    def from_ranks(cls, mergeable_ranks, pat_str, special_tokens, eos=None, bos=None) -> "Tokenizer":
        return cls(mergeable_ranks, pat_str, special_tokens, eos=eos, bos=bos)

    def encode(self, text: str, allowed_special="none") -> list[int]:
        if allowed_special == "none":
            return self.enc.encode_ordinary(text)
        if allowed_special != "all":
            unknown = set(allowed_special) - set(self.special_tokens)
            if unknown:
                raise ValueError(f"allowed_special names unknown special tokens {sorted(unknown)}")
        return self.enc.encode(text, allowed_special=allowed_special, disallowed_special=())

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]  # accepts tensors and numpy arrays too
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"decode: token ids {bad[:5]} outside the vocabulary (size {self.vocab_size})")
        try:
            return self.enc.decode_bytes(ids).decode("utf-8", errors="replace")
        except KeyError as e:  # a gap in the id range (e.g. an unused id below the specials)
            raise ValueError(f"decode: {e.args[0]}") from None

    def _chat_parts(self, messages, add_generation_prompt):
        """Llama 3 chat format as (text, is_control) pieces."""
        need = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")
        if any(t not in self.special_tokens for t in need):
            raise ValueError(f"the Llama 3 chat template needs special tokens {need}; tokenizer lacks them")
        messages, parts = list(messages), [("<|begin_of_text|>", True)]
        turns = messages + ([{"role": "assistant"}] if add_generation_prompt else [])
        for i, m in enumerate(turns):
            if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
                raise ValueError(f"chat message {i}: expected a dict with role in {CHAT_ROLES}, got {m!r}")
            parts += [("<|start_header_id|>", True), (m["role"], False), ("<|end_header_id|>", True),
                      ("\n\n", False)]
            if i == len(messages):  # the generation prompt: an open assistant header
                break
            if not isinstance(m.get("content"), str):
                raise ValueError(f"chat message {i}: 'content' must be a string, got {m.get('content')!r}")
            parts += [(m["content"].strip(), False), ("<|eot_id|>", True)]
        return parts

    def apply_chat_template(self, messages: list[dict], add_generation_prompt=True) -> str:
        """Llama 3 chat format. Encode with allowed_special="all"; encode_chat also keeps content inert."""
        return "".join(t for t, _ in self._chat_parts(messages, add_generation_prompt))

    def encode_chat(self, messages: list[dict], add_generation_prompt=True) -> list[int]:
        """Ids of apply_chat_template's string, but control-token text inside messages stays plain text."""
        ids, plain = [], ""
        for text, is_control in self._chat_parts(messages, add_generation_prompt):
            if is_control:  # plain runs are encoded whole, as in the string form, so both give the same ids
                ids += self.encode(plain) + [self.special_tokens[text]]
                plain = ""
            else:
                plain += text
        return ids + self.encode(plain)

    def save(self, path):
        """Write tiktoken-format tokenizer.model + tiktoken_config.json (pattern, specials) into `path`."""
        os.makedirs(path, exist_ok=True)
        with open(os.path.join(path, "tokenizer.model"), "w") as f:
            for tok, rank in sorted(self.mergeable_ranks.items(), key=lambda kv: kv[1]):
                f.write(f"{base64.b64encode(tok).decode()} {rank}\n")
        cfg = dict(pat_str=self.pat_str, special_tokens=self.special_tokens, eos=self.eos, bos=self.bos)
        with open(os.path.join(path, "tiktoken_config.json"), "w") as f:
            json.dump(cfg, f, indent=1)


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character that stands for each byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in bs]
    return {chr(b): b for b in bs} | {chr(256 + n): b for n, b in enumerate(extra)}


def _bpe_to_ranks(vocab: dict[str, int], merges: list, where: str, specials: dict[str, int], check=True):
    """Byte-level BPE (vocab with bytes_to_unicode strings + merge list) -> tiktoken ranks and specials.

    tiktoken merges the adjacent pair whose concatenation has the lowest rank (and takes a whole piece
    at once when it is a token); HF merges pairs by merge order. Both agree when ids grow with merge order
    and every token's own bytes BPE back to it, which `check` verifies (skipped for vocabs converted from
    tiktoken ranks, where the ids are the ranks by construction).
    """
    dec = _byte_decoder()
    to_bytes = lambda s: bytes(dec[c] for c in s)
    ranks, pair_rank, made, prev = {}, {}, set(), -1
    for n, m in enumerate(merges):
        if len(m) != 2:
            raise ValueError(f"{where}: merge {n + 1} is {m!r}, expected two tokens")
        a, b = m
        if a not in vocab or b not in vocab or a + b not in vocab:
            raise ValueError(f"{where}: merge {n + 1} ({a!r} {b!r}) uses or makes a token not in the vocab")
        if check and vocab[a + b] < prev:
            raise ValueError(f"{where}: merge {n + 1} ({a!r} {b!r}) makes id {vocab[a + b]} after id {prev}; "
                             "ids must grow with merge order for rank-based (tiktoken) merging")
        prev = vocab[a + b]
        pair_rank.setdefault((a, b), n)
        made.add(a + b)
    for tok, i in vocab.items():
        if tok in specials:
            continue
        if (len(tok) == 1 or tok in made) and all(c in dec for c in tok):
            ranks[to_bytes(tok)] = i
        elif tok.startswith("<") and tok.endswith(">"):  # e.g. GPT-2's <|endoftext|> listed in vocab.json
            specials = {**specials, tok: i}
        else:
            raise ValueError(f"{where}: vocab token {tok!r} (id {i}) is neither a byte, a merge result "
                             "nor a special token")
    if check:
        NONE = len(merges)  # rank of a pair that is not a merge
        for tok in made:
            parts = list(tok)
            while len(parts) > 1:  # HF's BPE on the token's own characters
                r, j = min((pair_rank.get(p, NONE), j) for j, p in enumerate(itertools.pairwise(parts)))
                if r == NONE:
                    break
                parts[j : j + 2] = [parts[j] + parts[j + 1]]
            if parts != [tok]:
                raise ValueError(f"{where}: token {tok!r} BPE-encodes to {parts} under its own merges, so "
                                 "tiktoken's rank-based merging cannot reproduce this tokenizer")
    return ranks, specials


def read_json(file):
    """A JSON file's contents; invalid JSON is a ValueError that names the file."""
    try:
        with open(file, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{file}: invalid JSON ({e})") from None


def _read_merges(file) -> list[list[str]]:
    with open(file, encoding="utf-8") as f:
        lines = f.read().split("\n")
    merges = []
    for n, line in enumerate(lines, 1):
        if (n == 1 and line.startswith("#version")) or not line:
            continue
        if len(line.split(" ")) != 2:
            raise ValueError(f"{file}: line {n}: expected two space-separated tokens, got {line!r}")
        merges.append(line.split(" "))
    return merges


def _read_tiktoken_ranks(file) -> dict[bytes, int]:
    with open(file, "rb") as f:
        data = f.read()
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError:
        raise ValueError(f"{file}: not a tiktoken-format tokenizer.model (base64 token and rank per line); "
                         "a SentencePiece model (e.g. Llama 2) is not supported") from None
    ranks = {}
    for n, line in enumerate(text.splitlines(), 1):
        tok, _, rank = line.partition(" ")
        try:
            ranks[base64.b64decode(tok, validate=True)] = int(rank)
        except ValueError as e:
            raise ValueError(f"{file}: line {n}: expected '<base64 token> <rank>', got {line[:60]!r}") from e
    return ranks


def _load_tokenizer_json(file, specials):
    tj = read_json(file)
    model = tj.get("model") or {}
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    norm = (tj.get("normalizer") or {}).get("type")
    found = f"model {model.get('type')!r}, pre_tokenizer {kinds}, normalizer {norm}"
    supported = "only byte-level BPE (GPT-2 / Llama 3 style: BPE with a ByteLevel pre-tokenizer) is supported"
    if (model.get("type") != "BPE" or "ByteLevel" not in kinds or set(kinds) - {"ByteLevel", "Split"}
            or tj.get("normalizer") or model.get("byte_fallback")):
        raise ValueError(f"{file}: found {found}; {supported}")
    byte_level = steps[kinds.index("ByteLevel")]
    split = steps[kinds.index("Split")] if "Split" in kinds else None
    if any((byte_level.get("add_prefix_space"), model.get("continuing_subword_prefix"),
            model.get("end_of_word_suffix"))):
        raise ValueError(f"{file}: add_prefix_space / subword prefix or suffix are not supported")
    mode = split and (split.get("behavior"), split.get("invert", False), "Regex" in split.get("pattern", {}))
    if split is None:
        pat = GPT2_PATTERN
    elif mode != ("Isolated", False, True):
        raise ValueError(f"{file}: only an isolating Split with a Regex pattern is supported, got {split}")
    elif byte_level.get("use_regex", True):
        raise ValueError(f"{file}: a Split regex followed by ByteLevel(use_regex=true) is not supported")
    else:
        pat = split["pattern"]["Regex"]
    for t in tj.get("added_tokens") or []:
        if not t.get("special"):
            raise ValueError(f"{file}: added token {t.get('content')!r} is not special; not supported")
        specials = {**specials, t["content"]: t["id"]}
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]
    check = not model.get("ignore_merges")  # set in vocabs converted from tiktoken ranks (Llama 3)
    ranks, specials = _bpe_to_ranks(model.get("vocab", {}), merges, file, specials, check=check)
    return ranks, pat, specials


def load_tokenizer(path) -> Tokenizer:
    """Folder (or file) with tokenizer.json, tokenizer.model (tiktoken format), vocab.json + merges.txt,
    or encoder.json + vocab.bpe. tokenizer_config.json / special_tokens_map.json, if present, name eos/bos."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"tokenizer path {path} does not exist")
    kinds = {"tokenizer.json": "json", "tokenizer.model": "tiktoken", "vocab.json": "hf", "merges.txt": "hf",
             "encoder.json": "openai", "vocab.bpe": "openai"}
    if os.path.isdir(path):
        folder, kind = path, next((k for f, k in kinds.items() if os.path.isfile(os.path.join(path, f))),
                                  None)
    else:
        folder, kind = os.path.dirname(path), kinds.get(os.path.basename(path))
    if kind is None:
        raise FileNotFoundError(f"no tokenizer files at {path}: expected tokenizer.json, tokenizer.model "
                                "(tiktoken), vocab.json + merges.txt, or encoder.json + vocab.bpe")
    file = lambda f: os.path.join(folder, f)
    cfg = {}
    for f in ("special_tokens_map.json", "tokenizer_config.json", "tiktoken_config.json"):  # later ones win
        if os.path.isfile(file(f)):
            cfg |= {k: v for k, v in read_json(file(f)).items() if v is not None}
    specials = {t["content"]: int(i) for i, t in (cfg.get("added_tokens_decoder") or {}).items()}
    specials |= cfg.get("special_tokens", {})
    pat = cfg.get("pat_str")
    if kind == "json":
        ranks, pat, specials = _load_tokenizer_json(file("tokenizer.json"), specials)
    elif kind == "tiktoken":
        ranks = _read_tiktoken_ranks(file("tokenizer.model"))
        pat = pat or LLAMA3_PATTERN
        specials = specials or {t: len(ranks) + i for i, t in enumerate(LLAMA3_SPECIALS)}
    else:
        v, m = ("vocab.json", "merges.txt") if kind == "hf" else ("encoder.json", "vocab.bpe")
        for f in (v, m):
            if not os.path.isfile(file(f)):
                raise FileNotFoundError(f"{file(f)} is missing: a GPT-2 tokenizer needs both {v} and {m}")
        ranks, specials = _bpe_to_ranks(read_json(file(v)), _read_merges(file(m)), file(v), specials)
        pat = pat or GPT2_PATTERN
    token = lambda k: (cfg.get(k) or {}).get("content") if isinstance(cfg.get(k), dict) else cfg.get(k)
    eos, bos = token("eos") or token("eos_token"), token("bos") or token("bos_token")
    return Tokenizer(ranks, pat, specials, eos=eos, bos=bos)
