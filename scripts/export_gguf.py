"""Write a llama GGUF checkpoint with a LoRA folded into its weights, for llama.cpp (and its OpenAI-compatible
server) to run the fine-tuned model: e.g. the behaviour-cloned SmolLM2 actor of config/smollm2.py.

    python scripts/export_gguf.py checkpoints/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf \
        checkpoints/adapters/smollm2_actor_hotpotqa.pt out-smollm2/actor.gguf [--type q8_0|f16|f32]

Every key of the source's metadata (tokenizer, chat template, ...) is copied with its type; tensors without
an adapter are copied byte for byte (still in their quantization); each adapted matrix becomes its
dequantized weight plus the LoRA's update, written in --type. Q8_0 (the default) is close to the float sum
(its rounding is far below Q4_1's, the source's) at half of F16's size. llama.cpp keeps q/k rows in its
interleaved RoPE order, so their updates (made in our rotate_half order) are permuted back first.
Needs the `gguf` package (requirements-dev.txt): llama.cpp's own writer.
"""

import argparse
import os
import sys
from dataclasses import asdict

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import formats.gguf as fg  # noqa: E402
import model as modelpy  # noqa: E402
from formats.checkpoint import unpermute_rotary  # noqa: E402
from lora import load_lora, lora_modules, merge_lora  # noqa: E402

TYPES = {"q8_0": "Q8_0", "f16": "F16", "f32": "F32"}


def merged_weights(src: str, adapter: str) -> dict[str, torch.Tensor]:
    """{GGUF tensor name: dequantized weight plus the adapter's update (out, in), in llama.cpp's row order}
    for every matrix the adapter touches."""
    model = merge_lora(load_lora(modelpy.from_pretrained(src, dtype=torch.float32), adapter))
    if model.config.arch != "llama":
        raise ValueError(f"{src}: general.architecture {model.config.arch!r}: only llama is exported")
    ours = {name: (g, heads) for g, (name, _, heads) in fg.tensor_schema(asdict(model.config)).items()}
    merged = {}
    for name, m in lora_modules(model).items():
        g, heads = ours[name + ".weight"]
        w = m.base.weight.detach()  # (out, in)
        merged[g] = unpermute_rotary(w, heads) if heads else w
    return merged


def export(src: str, adapter: str, out: str, qtype: str = "q8_0") -> int:
    """Write `out`; returns the number of tensors that took an update."""
    import gguf  # a dev requirement: only this script writes GGUF

    if qtype not in TYPES:
        raise ValueError(f"--type {qtype!r}: expected one of {sorted(TYPES)}")
    kind = gguf.GGMLQuantizationType[TYPES[qtype]]
    src = fg.gguf_file(src) or src
    if os.path.abspath(out) == os.path.abspath(src):  # the source is read while the output is written
        raise ValueError(f"{out}: the output would overwrite the source; pick another path")
    merged = merged_weights(src, adapter)
    reader = gguf.GGUFReader(src)
    writer = gguf.GGUFWriter(out, "llama")
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture":  # the writer writes these itself
            continue
        vtype = field.types[0]
        sub = field.types[1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub_type=sub)
    for t in reader.tensors:
        if t.name not in merged:
            writer.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
            continue
        a = merged[t.name].numpy()  # (out, in)
        if kind == gguf.GGMLQuantizationType.F32:
            writer.add_tensor(t.name, a)
        elif kind == gguf.GGMLQuantizationType.F16:
            writer.add_tensor(t.name, a.astype(np.float16))
        elif a.shape[-1] % 32:  # Q8_0 quantizes blocks of 32 along a row
            raise ValueError(f"{src}: tensor {t.name!r} has rows of {a.shape[-1]}, not a multiple of 32: "
                             "Q8_0 cannot hold it; use --type f16")
        else:
            writer.add_tensor(t.name, gguf.quants.quantize(a, kind), raw_dtype=kind)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return len(merged)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("src", help="a llama GGUF file (or a folder with one)")
    p.add_argument("adapter", help="a lora.save_lora file (scripts/bc_lora.py makes one)")
    p.add_argument("out", help="the GGUF file to write")
    p.add_argument("--type", default="q8_0", choices=sorted(TYPES), help="of the updated matrices")
    args = p.parse_args()
    n = export(args.src, args.adapter, args.out, args.type)
    print(f"wrote {args.out}: {n} matrices with the adapter folded in ({args.type}), the rest copied")


if __name__ == "__main__":
    main()
