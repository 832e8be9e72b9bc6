"""Tokenizers: a byte-level BPE `Tokenizer` on tiktoken, its chat formats (Llama 3, ChatML), the loaders.

Every source (tokenizer.json, tokenizer.model in tiktoken format, vocab.json + merges.txt, encoder.json +
vocab.bpe; GGUF metadata in formats/gguf.py) becomes one tiktoken.Encoding: byte-level BPE vocab -> {token
bytes: rank}, a split regex, and special tokens. tiktoken's token ids are its ranks, so a vocab's ids must be
in merge order. The chat format is recognised from the checkpoint's jinja chat_template and rendered here.
"""

import base64
import functools
import itertools
import json
import os
import re
import unicodedata

import regex  # installed with tiktoken (its dependency)
import tiktoken

GPT2_PATTERN = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Qwen2's Split regex: like Llama 3's, but digits one by one
QWEN2_PATTERN = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def digits_pattern(individual=True) -> str:
    r"""One regex for tokenizer.json's Sequence[Digits, ByteLevel] (SmolLM2, StarCoder): digits are split off
    first (one by one, or whole runs), then GPT-2's regex runs within the rest. No piece spans a digit, so
    GPT-2's ` ?\p{N}+` goes, and its `\s+(?!\S)` (true at the end of a piece) also holds before a digit."""
    digits = r"\p{N}" if individual else r"\p{N}+"
    return digits + r"""|'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?[^\s\p{L}\p{N}]+|\s+(?![^\s\p{N}])|\s+"""


# Meta's llama3 tokenizer.py: 256 specials numbered right after the mergeable ranks (128000 for Llama 3).
LLAMA3_SPECIALS = [
    "<|begin_of_text|>", "<|end_of_text|>", "<|reserved_special_token_0|>", "<|reserved_special_token_1|>",
    "<|finetune_right_pad_id|>", "<|step_id|>", "<|start_header_id|>", "<|end_header_id|>", "<|eom_id|>",
    "<|eot_id|>", "<|python_tag|>",
] + [f"<|reserved_special_token_{2 + i}|>" for i in range(256 - 11)]
CHAT_ROLES = ("system", "user", "assistant")


CHATML_SPECIALS = ("<|im_start|>", "<|im_end|>")
LLAMA3_CHAT_SPECIALS = ("<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def chat_format(template: str | None, special_tokens) -> tuple[str, str | None]:
    r"""(format, default system message) of a jinja chat_template, recognised without jinja.

    "chatml" (Qwen, SmolLM2: <|im_start|>role\ncontent<|im_end|>\n) with the system message the template
    inserts when the conversation has none, or "llama3". Without a template, or with one not recognised,
    the format the special tokens allow, Llama 3 first (what this class always rendered).
    """
    if template and "<|start_header_id|>" in template:
        return "llama3", None
    if template and "<|im_start|>" in template:
        # a constant system turn in the template, e.g. '<|im_start|>system\nYou are a helpful ...<|im_end|>\n'
        # (the newline a real one, or \n in a JSON-escaped template); a quote would mean an expression
        m = re.search(r"<\|im_start\|>system(\n|\\n)([^'\"{}]*?)<\|im_end\|>", template)
        if m is None:
            return "chatml", None
        return "chatml", m.group(2).replace("\\n", "\n") if m.group(1) != "\n" else m.group(2)
    if all(t in special_tokens for t in CHATML_SPECIALS) and "<|start_header_id|>" not in special_tokens:
        return "chatml", None
    return "llama3", None


class Tokenizer:
    """Byte-level BPE on tiktoken. Special-token text is plain text unless allowed_special says otherwise.

    drop_unknown_bytes: a Hugging Face BPE vocab may lack tokens for some bytes (SmolLM2's lacks 21), which
    the `tokenizers` library drops from a piece before merging; tiktoken needs every byte, so these get
    placeholder ranks past the vocab (never emitted) and text holding them is encoded the `tokenizers` way.
    normalizer: "NFC" (Qwen2) or None, applied to text before encoding.
    """

    def __init__(self, mergeable_ranks: dict[bytes, int], pat_str: str, special_tokens: dict[str, int],
                 eos: str | None = None, bos: str | None = None, chat_template: str | None = None,
                 drop_unknown_bytes: bool = False, normalizer: str | None = None):  # fmt: skip
        missing = [b for b in range(256) if bytes([b]) not in mergeable_ranks]
        if missing and not drop_unknown_bytes:  # tiktoken cannot encode a byte that has no token
            raise ValueError(f"tokenizer vocab lacks tokens for {len(missing)} of 256 bytes: {missing[:5]}")
        clash = set(special_tokens.values()) & set(mergeable_ranks.values())
        if clash:
            raise ValueError(f"special token ids {sorted(clash)[:5]} are also ids of ordinary tokens")
        if normalizer not in (None, "NFC"):
            raise ValueError(f"normalizer {normalizer!r} is not supported (None or 'NFC')")
        self.mergeable_ranks, self.pat_str = mergeable_ranks, pat_str
        self.special_tokens = dict(special_tokens)
        self.vocab_size = max([*mergeable_ranks.values(), *special_tokens.values()]) + 1
        self.drop_unknown_bytes, self.normalizer = drop_unknown_bytes, normalizer
        self._lacking = bytes(missing)  # bytes without a token, and (below) the others
        self._kept = bytes(b for b in range(256) if b not in missing)
        ranks = mergeable_ranks | {bytes([b]): self.vocab_size + i for i, b in enumerate(missing)}
        self.enc = tiktoken.Encoding("retroformer", pat_str=pat_str, mergeable_ranks=ranks,
                                     special_tokens=self.special_tokens)
        self._pat = regex.compile(pat_str) if missing else None
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
        self.chat_template = chat_template
        self.chat_format, self.default_system = chat_format(chat_template, special_tokens)
        # generation stops at any end-of-turn token, not only eos (chat models end turns with <|eot_id|>,
        # ChatML ones with <|im_end|>)
        ends = ("<|endoftext|>", "<|end_of_text|>", "<|eot_id|>", "<|eom_id|>", "<|im_end|>")
        self.stop_ids = sorted({self.eos_id} | {special_tokens[t] for t in ends if t in special_tokens})

    @classmethod
    def from_ranks(cls, mergeable_ranks, pat_str, special_tokens, eos=None, bos=None, **kw) -> "Tokenizer":
        return cls(mergeable_ranks, pat_str, special_tokens, eos=eos, bos=bos, **kw)

    def encode(self, text: str, allowed_special="none") -> list[int]:
        if allowed_special not in ("none", "all"):
            unknown = set(allowed_special) - set(self.special_tokens)
            if unknown:
                raise ValueError(f"allowed_special names unknown special tokens {sorted(unknown)}")
        if self.normalizer:
            text = unicodedata.normalize(self.normalizer, text)
        if self._lacking:
            try:
                raw = text.encode()
            except UnicodeEncodeError:  # lone surrogates: replaced, as tiktoken does
                text = text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
                raw = text.encode()
            if raw.translate(None, self._kept):  # the text holds a byte the vocab lacks
                return self._encode_dropping(text, allowed_special)
        if allowed_special == "none":
            return self.enc.encode_ordinary(text)
        return self.enc.encode(text, allowed_special=allowed_special, disallowed_special=())

    def _encode_dropping(self, text, allowed_special) -> list[int]:
        """encode() of text holding bytes without a token, as `tokenizers` does it: split into pieces by the
        regex, drop those bytes from each piece, then BPE what is left (its bytes may now merge)."""
        allowed = {"none": (), "all": self.special_tokens}.get(allowed_special, allowed_special)
        parts = [text]
        if allowed:  # special tokens split the text first, longest first where two overlap
            alts = "|".join(regex.escape(t) for t in sorted(allowed, key=len, reverse=True))
            parts = regex.split(f"({alts})", text)
        ids = []
        for i, part in enumerate(parts):
            if i % 2:
                ids.append(self.special_tokens[part])
                continue
            for piece in self._pat.findall(part):
                kept = piece.encode().translate(None, self._lacking)
                if kept:
                    ids += self._bpe(kept)
        return ids

    def _bpe(self, piece: bytes) -> list[int]:
        """One piece's byte-pair merges, as tiktoken does them: the pair of lowest rank first. Only text
        holding bytes without a token comes here, so plain Python is fast enough."""
        parts = [piece[i : i + 1] for i in range(len(piece))]
        while len(parts) > 1:
            rank, i = min((self.mergeable_ranks.get(parts[i] + parts[i + 1], float("inf")), i)
                          for i in range(len(parts) - 1))  # fmt: skip
            if rank == float("inf"):
                break
            parts[i : i + 2] = [parts[i] + parts[i + 1]]
        return [self.mergeable_ranks[p] for p in parts]

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
        """The chat format as (text, is_control) pieces."""
        messages = list(messages)
        for i, m in enumerate(messages + ([{"role": "assistant"}] if add_generation_prompt else [])):
            if not isinstance(m, dict) or m.get("role") not in CHAT_ROLES:
                raise ValueError(f"chat message {i}: expected a dict with role in {CHAT_ROLES}, got {m!r}")
            if i < len(messages) and not isinstance(m.get("content"), str):
                raise ValueError(f"chat message {i}: 'content' must be a string, got {m.get('content')!r}")
        need = CHATML_SPECIALS if self.chat_format == "chatml" else LLAMA3_CHAT_SPECIALS
        if any(t not in self.special_tokens for t in need):
            name = "ChatML" if self.chat_format == "chatml" else "Llama 3"
            raise ValueError(f"the {name} chat template needs special tokens {need}; tokenizer lacks them")
        if self.chat_format == "chatml":
            # <|im_start|>role\ncontent<|im_end|>\n, content as is; the template's system turn comes first
            # when the conversation has none
            if self.default_system is not None and messages and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": self.default_system}] + messages
            parts = []
            for m in messages:
                parts += [("<|im_start|>", True), (f"{m['role']}\n{m['content']}", False),
                          ("<|im_end|>", True), ("\n", False)]  # fmt: skip
            if add_generation_prompt:
                parts += [("<|im_start|>", True), ("assistant\n", False)]
            return parts
        parts = [("<|begin_of_text|>", True)]  # Llama 3: content stripped, a header per turn
        for m in messages:
            parts += [("<|start_header_id|>", True), (m["role"], False), ("<|end_header_id|>", True),
                      ("\n\n" + m["content"].strip(), False), ("<|eot_id|>", True)]  # fmt: skip
        if add_generation_prompt:  # an open assistant header
            parts += [("<|start_header_id|>", True), ("assistant", False), ("<|end_header_id|>", True),
                      ("\n\n", False)]  # fmt: skip
        return parts

    def apply_chat_template(self, messages: list[dict], add_generation_prompt=True) -> str:
        """The chat format's string (Llama 3 or ChatML). Encode with allowed_special="all"; encode_chat also
        keeps content inert."""
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
        extra = dict(chat_template=self.chat_template, normalizer=self.normalizer,
                     drop_unknown_bytes=self.drop_unknown_bytes)  # fmt: skip
        cfg |= {k: v for k, v in extra.items() if v}  # only when set: older files stay as they were
        with open(os.path.join(path, "tiktoken_config.json"), "w") as f:
            json.dump(cfg, f, indent=1)


@functools.cache
def _byte_decoder() -> dict[str, int]:
    """Inverse of GPT-2's bytes_to_unicode: the printable character that stands for each byte."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    extra = [b for b in range(256) if b not in bs]
    return {chr(b): b for b in bs} | {chr(256 + n): b for n, b in enumerate(extra)}


def bpe_to_ranks(vocab: dict[str, int], merges: list, where: str, specials: dict[str, int], check=True):
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


def _post_processor_bos(pp: dict) -> str:
    """The token a tokenizer.json post_processor puts before a sequence ("" for none): what `tokenizers`
    prepends when encoding with add_special_tokens, so the bos a plain prompt starts with."""
    for p in pp.get("processors", []) if pp.get("type") == "Sequence" else [pp]:
        if p.get("type") == "TemplateProcessing":
            return ((p.get("single") or [{}])[0].get("SpecialToken") or {}).get("id", "")
        if p.get("type") in ("RobertaProcessing", "BertProcessing"):
            return p["cls"][0]
    return ""


def _load_tokenizer_json(file, specials):
    """(ranks, split regex, specials, Tokenizer options) of a byte-level BPE tokenizer.json."""
    tj = read_json(file)
    model = tj.get("model") or {}
    pre = tj.get("pre_tokenizer") or {}
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    norm = (tj.get("normalizer") or {}).get("type")
    found = f"model {model.get('type')!r}, pre_tokenizer {kinds}, normalizer {norm}"
    supported = "only byte-level BPE (GPT-2 / Llama 3 style: BPE with a ByteLevel pre-tokenizer) is supported"
    if (model.get("type") != "BPE" or "ByteLevel" not in kinds or len(kinds) > 2
            or set(kinds) - {"ByteLevel", "Split", "Digits"} or norm not in (None, "NFC")
            or model.get("byte_fallback")):  # fmt: skip
        raise ValueError(f"{file}: found {found}; {supported}")
    byte_level = steps[kinds.index("ByteLevel")]
    first = steps[0] if len(steps) == 2 else None
    if any((byte_level.get("add_prefix_space"), model.get("continuing_subword_prefix"),
            model.get("end_of_word_suffix"))):
        raise ValueError(f"{file}: add_prefix_space / subword prefix or suffix are not supported")
    if first is None:
        pat = GPT2_PATTERN
    elif kinds != [first["type"], "ByteLevel"]:
        raise ValueError(f"{file}: pre_tokenizer {kinds}: ByteLevel must come last")
    elif first["type"] == "Digits":  # SmolLM2, StarCoder: digits split off, then ByteLevel's GPT-2 regex
        if not byte_level.get("use_regex", True):
            raise ValueError(f"{file}: Digits followed by ByteLevel(use_regex=false) is not supported")
        pat = digits_pattern(bool(first.get("individual_digits")))
    elif (first.get("behavior"), first.get("invert", False), "Regex" in first.get("pattern", {})) != (
            "Isolated", False, True):  # fmt: skip
        raise ValueError(f"{file}: only an isolating Split with a Regex pattern is supported, got {first}")
    elif byte_level.get("use_regex", True):
        raise ValueError(f"{file}: a Split regex followed by ByteLevel(use_regex=true) is not supported")
    else:
        pat = first["pattern"]["Regex"]
    for t in tj.get("added_tokens") or []:
        if not t.get("special"):
            raise ValueError(f"{file}: added token {t.get('content')!r} is not special; not supported")
        specials = {**specials, t["content"]: t["id"]}
    merges = [m.split(" ") if isinstance(m, str) else m for m in model.get("merges", [])]
    check = not model.get("ignore_merges")  # set in vocabs converted from tiktoken ranks (Llama 3)
    ranks, specials = bpe_to_ranks(model.get("vocab", {}), merges, file, specials, check=check)
    opts = dict(normalizer=norm, drop_unknown_bytes=True)
    if tj.get("post_processor"):  # it, not tokenizer_config's bos_token, says whether a bos is prepended
        opts["bos"] = _post_processor_bos(tj["post_processor"]) or None
    return ranks, pat, specials, opts


def _chat_template(cfg: dict, folder) -> str | None:
    """tokenizer_config.json's chat_template (a string, or named templates: the default one), else
    chat_template.jinja, which newer transformers write beside it."""
    t = cfg.get("chat_template")
    if isinstance(t, list):
        t = next((x.get("template") for x in t if isinstance(x, dict) and x.get("name") == "default"), None)
    if t is None and os.path.isfile(os.path.join(folder, "chat_template.jinja")):
        with open(os.path.join(folder, "chat_template.jinja"), encoding="utf-8") as f:
            t = f.read()
    return t if isinstance(t, str) else None


def load_tokenizer(path) -> Tokenizer:
    """Folder (or file) with tokenizer.json, tokenizer.model (tiktoken format), vocab.json + merges.txt,
    or encoder.json + vocab.bpe. tokenizer_config.json / special_tokens_map.json, if present, name eos/bos
    and hold the chat template."""
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
    # Hugging Face BPE vocabs may lack bytes (see Tokenizer); a tiktoken file must have them all
    opts = dict(drop_unknown_bytes=kind != "tiktoken" or bool(cfg.get("drop_unknown_bytes")),
                normalizer=cfg.get("normalizer"))  # fmt: skip
    if kind == "json":
        ranks, pat, specials, json_opts = _load_tokenizer_json(file("tokenizer.json"), specials)
        opts |= json_opts
    elif kind == "tiktoken":
        ranks = _read_tiktoken_ranks(file("tokenizer.model"))
        pat = pat or LLAMA3_PATTERN
        specials = specials or {t: len(ranks) + i for i, t in enumerate(LLAMA3_SPECIALS)}
    else:
        v, m = ("vocab.json", "merges.txt") if kind == "hf" else ("encoder.json", "vocab.bpe")
        for f in (v, m):
            if not os.path.isfile(file(f)):
                raise FileNotFoundError(f"{file(f)} is missing: a GPT-2 tokenizer needs both {v} and {m}")
        ranks, specials = bpe_to_ranks(read_json(file(v)), _read_merges(file(m)), file(v), specials)
        pat = pat or GPT2_PATTERN
    token = lambda k: (cfg.get(k) or {}).get("content") if isinstance(cfg.get(k), dict) else cfg.get(k)
    eos, bos = token("eos") or token("eos_token"), token("bos") or token("bos_token")
    # whether a plain prompt starts with bos: tokenizer_config's add_bos_token if set, else what the
    # tokenizer.json post-processor prepends (SmolLM2 names <|im_start|> its bos_token but never adds it)
    adds_bos, post_bos = cfg.get("add_bos_token"), opts.pop("bos", bos)
    bos = None if adds_bos is False else post_bos if adds_bos is None else bos
    chat = _chat_template(cfg, folder)
    return Tokenizer(ranks, pat, specials, eos=eos, bos=bos, chat_template=chat, **opts)
