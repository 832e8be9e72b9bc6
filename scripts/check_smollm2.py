"""Check our loading of the real SmolLM2-135M-Instruct GGUF against transformers' (scripts/fetch_smollm2.sh
first; needs requirements-dev.txt). Not a test: it needs the 98 MB file. Prints logits difference, tokenizer
and chat-template mismatches, load times and a short greedy generation.

    python scripts/check_smollm2.py [checkpoints/smollm2]
"""

import copy
import os
import random
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402

path = sys.argv[1] if len(sys.argv) > 1 else "checkpoints/smollm2"
t0 = time.time()
ours = M.from_pretrained(path)
t1 = time.time()
tok = M.load_tokenizer(path)
print(f"load: model {t1 - t0:.1f}s, tokenizer {time.time() - t1:.1f}s; {ours.config}")

from tokenizers import pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

folder, name = os.path.split(M.formats.gguf.gguf_file(path))
ref = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32).eval()
hf = AutoTokenizer.from_pretrained(folder, gguf_file=name)
# transformers' GGUF converter does not know llama.cpp's "smollm" pre-tokenizer and falls back to GPT-2's
# ByteLevel regex; SmolLM2's own tokenizer.json (and llama.cpp) split digits off first
real = copy.deepcopy(hf.backend_tokenizer)
real.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                              pre_tokenizers.ByteLevel(add_prefix_space=False)])  # fmt: skip

chat = [{"role": "user", "content": "What is the capital of France?"}]
worst = 0.0
for text in ["The quick brown fox jumps over the lazy dog. 12345 + 678 = ?", tok.apply_chat_template(chat)]:
    ids = torch.tensor([tok.encode(text, allowed_special="all")])
    with torch.no_grad():
        worst = max(worst, (ours(ids) - ref(ids).logits).abs().max().item())
print(f"logits: max abs diff vs transformers on the same GGUF {worst:.3g}")

rng = random.Random(0)
chars = list("abcXYZ 019\t\n.,!?'\"-_()") + ["é", "東", "🙂", "²", "\x04", "\u00a0", "\U00040001", "  "]
texts = ["a  1 x   42", "café 東京 🙂 ½ Ⅷ", "\x04\x06 ctrl", "<|im_start|>user\nhi<|im_end|>", "   ", ""]
texts += ["".join(rng.choice(chars) for _ in range(rng.randint(1, 40))) for _ in range(400)]
texts += [line for line in open(os.path.join(os.path.dirname(__file__), "..", "README.md")) if line.strip()]
enc = [tok.encode(t, allowed_special="all") for t in texts]  # transformers matches special-token text
refs = [(real.encode(t, add_special_tokens=False).ids, hf.encode(t, add_special_tokens=False)) for t in texts]
n_real = sum(e != r for e, (r, _) in zip(enc, refs, strict=True))
n_hf = sum(e != h for e, (_, h) in zip(enc, refs, strict=True))
n_other = sum(e != h and r == h for e, (r, h) in zip(enc, refs, strict=True))  # not explained by digits
print(f"tokenizer: {len(texts)} strings, mismatches vs tokenizers with SmolLM2's pre-tokenizer {n_real}; "
      f"vs transformers' GGUF tokenizer {n_hf}, all where it differs from SmolLM2's own (digits not split) "
      f"but {n_other}")

convs = [chat, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
         [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"},
          {"role": "user", "content": " A joke?\n"}]]  # fmt: skip
bad = 0
for msgs in convs:
    for gen in (True, False):
        text = hf.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
        bad += tok.apply_chat_template(msgs, add_generation_prompt=gen) != text
        bad += tok.encode_chat(msgs, add_generation_prompt=gen) != hf.encode(text, add_special_tokens=False)
print(f"chat template: {2 * len(convs)} renders, {bad} mismatches (string or ids)")

t = time.time()
g = M.generate(ours, [tok.encode_chat(chat)], 40, temperature=0, stop_ids=tok.stop_ids, tokenizer=tok)[0]
print(f"greedy ({len(g.tokens)} tokens, {time.time() - t:.1f}s): {g.text!r}")
