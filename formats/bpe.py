"""Byte-level BPE training from scratch (pretrain.py's tokenizer)."""

import collections
import heapq
import itertools

import regex  # installed with tiktoken (its dependency)

from formats.tokenizer import LLAMA3_PATTERN, Tokenizer


def train_bpe(texts, vocab_size: int, pat_str=LLAMA3_PATTERN, special_tokens=("<|endoftext|>",)) -> Tokenizer:
    """Byte-level BPE from scratch: 256 byte tokens, then merges, then special_tokens (the first is eos).

    Counts pairs once over unique pre-tokenized pieces and updates only the pieces a merge touches.
    """
    n_merges = vocab_size - 256 - len(special_tokens)
    if n_merges < 0:
        raise ValueError(f"vocab_size {vocab_size} is below 256 bytes + {len(special_tokens)} special tokens")
    pat = regex.compile(pat_str)
    pieces = collections.Counter(p for t in texts for p in pat.findall(t))
    words = [[bytes([b]) for b in p.encode()] for p in pieces]  # each piece as a list of tokens
    counts = list(pieces.values())
    pair_count, pair_words = collections.Counter(), collections.defaultdict(set)
    for w, (word, c) in enumerate(zip(words, counts, strict=True)):
        for pair in itertools.pairwise(word):
            pair_count[pair] += c
            pair_words[pair].add(w)
    heap = [(-c, pair) for pair, c in pair_count.items()]  # max count first, ties by smallest bytes
    heapq.heapify(heap)
    ranks = {bytes([b]): b for b in range(256)}
    while len(ranks) < 256 + n_merges and heap:
        neg, pair = heapq.heappop(heap)
        if pair_count.get(pair, 0) != -neg or neg == 0:  # stale entry
            continue
        ranks.setdefault(pair[0] + pair[1], len(ranks))  # (a, bc) and (ab, c) make the same token
        for w in pair_words.pop(pair):
            word, c, new = words[w], counts[w], []
            for p in itertools.pairwise(word):
                pair_count[p] -= c
            i = 0  # merge left to right, without overlaps
            while i < len(word):
                if i + 1 < len(word) and (word[i], word[i + 1]) == pair:
                    new.append(word[i] + word[i + 1])
                    i += 2
                else:
                    new.append(word[i])
                    i += 1
            words[w] = new
            for p in itertools.pairwise(new):
                pair_count[p] += c
                pair_words[p].add(w)
            for p in {*itertools.pairwise(word), *itertools.pairwise(new)} - {pair}:  # changed counts
                heapq.heappush(heap, (-pair_count[p], p))
    if len(ranks) < 256 + n_merges:
        raise ValueError(f"the texts allow only {len(ranks) - 256} merges: vocab_size {vocab_size} too big")
    specials = {t: len(ranks) + i for i, t in enumerate(special_tokens)}
    return Tokenizer(ranks, pat_str, specials, eos=special_tokens[0] if special_tokens else None)
