"""A cache of earlier prompts' keys/values that model.generate reuses (its prefix_cache argument)."""

import collections
from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from model import KVCache


class PrefixCache:
    """Keys/values of earlier prompts, so that generate() runs only the tokens past the longest match.

    A ReAct actor's next prompt is its last prompt + completion + observation: re-encoding the shared
    prefix at every step dominates the cost of a small model. An entry is one prompt's token ids and
    its keys/values at every layer; matching is on token ids (not text: BPE merges across a cut). Keys
    depend on the weights: one cache per model, clear() after changing them (LoRA, merge, load).
    Least recently used entries are evicted beyond max_entries or max_bytes of keys/values (a real
    model's are large: Llama-3-8B in bf16 holds 128 KiB per token).
    """

    def __init__(self, max_entries: int = 64, max_bytes: int | None = None):
        if max_entries < 1:
            raise ValueError(f"PrefixCache: max_entries must be >= 1, got {max_entries}")
        self.max_entries, self.max_bytes, self.nbytes = max_entries, max_bytes, 0
        self.entries = collections.OrderedDict()  # tuple(ids) -> (ids array, k, v), least recent first

    def __len__(self):
        return len(self.entries)

    def clear(self):
        self.entries.clear()
        self.nbytes = 0

    def pop(self, key):
        _, k, v = self.entries.pop(key)
        self.nbytes -= k.nbytes + v.nbytes

    def match(self, ids: list[int]) -> tuple[tuple | None, int]:
        """(key, n): the entry sharing the longest prefix with ids and that prefix's length n."""
        q, best, best_n = np.asarray(ids), None, 0
        for key, (e, _, _) in self.entries.items():
            n = min(len(q), len(e))
            diff = np.flatnonzero(q[:n] != e[:n])  # numpy, not a Python loop: prompts run to hundreds of ids
            n = int(diff[0]) if diff.size else n
            if n > best_n:
                best, best_n = key, n
        return best, best_n

    def put(self, ids: list[int], k: torch.Tensor, v: torch.Tensor):
        """Store ids with their keys/values k, v (n_layers, n_kv, len(ids), hd)."""
        key = tuple(ids)
        if key in self.entries:
            self.pop(key)
        self.entries[key] = (np.asarray(ids), k, v)
        self.nbytes += k.nbytes + v.nbytes
        while len(self.entries) > self.max_entries or (self.max_bytes and self.nbytes > self.max_bytes):
            self.pop(next(iter(self.entries)))  # the least recently used

    def shared(self, prompts: list[list[int]], min_tokens: int = 16) -> list[list[int]]:
        """Prefixes that two or more prompts share beyond what the cache holds, shortest first.

        When many episodes start at once (a new batch of tasks), their prompts share the instruction
        and few-shot examples but no entry holds them yet: each row would run them again. generate()
        runs each of these prefixes once (batch 1) and stores it, so the rows then run only their own
        tails. A prefix counts if it is at least min_tokens longer than what is stored of it.
        """
        if len(prompts) < 2:
            return []
        order = sorted(range(len(prompts)), key=lambda i: prompts[i])
        common = [0] * len(prompts)  # per row: its longest prefix shared with another row
        # in sorted order the longest prefix a row shares with any other row is one it shares with a neighbour
        for a, b in zip(order, order[1:], strict=False):
            p, q = np.asarray(prompts[a]), np.asarray(prompts[b])
            n = min(len(p), len(q))
            diff = np.flatnonzero(p[:n] != q[:n])
            n = int(diff[0]) if diff.size else n
            common[a], common[b] = max(common[a], n), max(common[b], n)
        out = []
        found = {tuple(p[:n]) for p, n in zip(prompts, common, strict=True) if n >= min_tokens}
        for s in sorted(found, key=len):
            # what is stored, or will be once a shorter prefix taken here has run
            have = max([self.match(s)[1]] + [len(a) for a in out if s[: len(a)] == a])
            if len(s) - have >= min_tokens:
                out.append(s)
        return [list(s) for s in out]

    def fill(self, prompts: list[list[int]], cache: "KVCache") -> tuple[int, list]:
        """Copy each row's cached prefix into the left-padded `cache`; return (L, matches).

        The forward then runs only columns [L, P) (P = longest prompt). Row i may reuse
        c_i = min(match, P_i - 1) tokens (its last token must run to give logits), so the block of
        N = max(P_i - c_i) columns holds every row's new tokens, L = P - N, and row i's slots
        [P - P_i, L) take its first P_i - N cached tokens (c_i >= P_i - N: enough are cached).
        """
        P = max(len(p) for p in prompts)
        matches = [self.match(p) for p in prompts]  # (key, n) per row
        N = max(len(p) - min(n, len(p) - 1) for p, (_, n) in zip(prompts, matches, strict=True))
        L = P - N
        for i, (p, (key, _)) in enumerate(zip(prompts, matches, strict=True)):
            if key is not None:
                self.entries.move_to_end(key)
            # pad slots are masked, but torch.empty may hold NaN, and NaN * 0 attention weight is NaN
            cache.k[:, i, :, : min(P - len(p), L)] = 0
            cache.v[:, i, :, : min(P - len(p), L)] = 0
            m = len(p) - N  # cached tokens this row takes
            if m > 0:
                _, k, v = self.entries[key]  # (n_layers, n_kv, T, hd)
                cache.k[:, i, :, P - len(p) : L] = k[:, :, :m]
                cache.v[:, i, :, P - len(p) : L] = v[:, :, :m]
        cache.length = L
        return L, matches

    def store(self, prompts: list[list[int]], cache: "KVCache", matches):
        """After the prefill: store each prompt with its keys/values (its last len(p) slots of P)."""
        P = max(len(p) for p in prompts)
        for i, (p, (key, n)) in enumerate(zip(prompts, matches, strict=True)):
            if key is not None and n == len(key) and key in self.entries:
                # the old entry is a prefix of this prompt: the new one matches all it would, and more
                self.pop(key)
            # clone: a compact copy, not a view that keeps the whole batch's cache alive
            self.put(p, cache.k[:, i, :, P - len(p) : P].clone(), cache.v[:, i, :, P - len(p) : P].clone())
