"""Weight-only int8 / int4 (infra/quantize.py): generation speed, and the logit error they cost.

    python bench/bench_quant.py [--threads 1] [--new-tokens 128] [--repeats 2] [--batches 1,8]

Speed: the random-init Llama (~125M) of bench_generate.py, saved by transformers and loaded by our
from_pretrained, so every side starts from the same fp32 weights: transformers fp32, ours fp32, ours
int8 and ours int4 (projections, and lm_head or not; int4 groups of --group-size), greedy, exactly
--new-tokens tokens, batch 1 and 8, runs interleaved, best of --repeats. Ratio = tok/s over
transformers fp32's (wall), and transformers' CPU seconds over ours. Target: int8 >= 1.5x at batch 1.
"weights MiB" = bytes of all parameters (embeddings and norms stay fp32). "same tokens" = rows whose
128 greedy tokens equal ours fp32's.

Error: next-token logits at each of the first --positions tokens of README.md (tiny tokenizer) against
the same model in fp32: max and mean |diff|, the fp32 logits' std for scale, and top-1 agreement; for
the random Llama and for the pretrained tiny checkpoint (checkpoints/tiny/retrospector), with the
lm_head quantized or kept fp32.
"""

import argparse
import copy
import os
import sys
import tempfile
from functools import partial

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from bench_generate import build, measure, prompts_for, run_hf, run_ours  # noqa: E402

import model as M  # noqa: E402
from infra.quantize import quantize  # noqa: E402


def weight_mib(model):
    return sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20


@torch.inference_mode()
def logit_error(ref, variants, ids):
    """{name: (max |diff|, mean |diff|, ref std, top-1 agreement)} of next-token logits over `ids`."""
    want = ref(ids)[0].float()  # (T, V)
    out = {}
    for name, m in variants.items():
        got = m(ids)[0].float()
        d = (got - want).abs()
        agree = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
        out[name] = (d.max().item(), d.mean().item(), want.std().item(), agree)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=2, help="timed runs per case; the fastest is kept")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batches", default="1,8")
    ap.add_argument("--group-size", type=int, default=64, help="int4 group size")
    ap.add_argument("--positions", type=int, default=300, help="text positions for the logit error")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    n, gs = args.new_tokens, args.group_size
    tiny_path = os.path.join(ROOT, "checkpoints", "tiny", "retrospector")
    with open(os.path.join(ROOT, "README.md")) as f:
        text_ids = M.load_tokenizer(tiny_path).encode(f.read())[: args.positions]
    ids = torch.tensor([text_ids])
    with tempfile.TemporaryDirectory() as folder:
        ref, ours = build("llama", folder)
        models = {"ours fp32": ours}
        for kind in ("int8", "int4"):
            for head in (True, False):
                name = f"ours {kind}{'' if head else ', lm_head fp32'}"
                models[name] = quantize(copy.deepcopy(ours), kind, gs, head)
    mib = {k: weight_mib(m) for k, m in models.items()}
    mib["transformers fp32"] = weight_mib(ref)
    rows = []
    for batch in map(int, args.batches.split(",")):
        prompts = prompts_for(batch, ours.config.vocab_size)
        fns = {"transformers fp32": partial(run_hf, ref, prompts, n)}
        fns.update({k: partial(run_ours, m, prompts, n) for k, m in models.items()})
        for fn in fns.values():
            fn.func(*fn.args[:2], 8)  # warm-up
        runs = {k: [] for k in fns}
        for _ in range(args.repeats):  # interleaved, best of N: the CPU is shared and noisy
            for who, fn in fns.items():
                runs[who].append(measure(fn))
        best = {k: (min(r[0] for r in v), min(r[1] for r in v)) for k, v in runs.items()}
        hf_wall, hf_cpu = best["transformers fp32"]
        for who, (wall, cpu) in best.items():
            same = sum(a == b for a, b in zip(runs[who][0][3], runs["ours fp32"][0][3], strict=True))
            same = f"{same}/{batch}"
            rows.append((who, batch, batch * n / wall, hf_wall / wall, hf_cpu / cpu, mib[who], same))
            print(rows[-1], flush=True)
    errors = {}
    for label, path in (("random llama 125M", None), ("tiny pretrained 1.1M", tiny_path)):
        base = ours if path is None else M.from_pretrained(path)
        variants = {f"{kind}{'' if head else ', lm_head fp32'}": quantize(copy.deepcopy(base), kind, gs, head)
                    for kind in ("int8", "int4") for head in (True, False)}  # fmt: skip
        errors[label] = logit_error(base, variants, ids)
        print(label, errors[label], flush=True)

    print(f"\ntorch {torch.__version__}, {args.threads} thread(s), greedy, {n} new tokens, CPU, best of "
          f"{args.repeats}; int4 group size {gs}\n")  # fmt: skip
    print("| model | batch | tok/s | vs transformers fp32 (wall) | (CPU time) | weights MiB | same tokens |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print("| {} | {} | {:.1f} | {:.2f}x | {:.2f}x | {:.0f} | {} |".format(*r))
    print(f"\nnext-token logits over {ids.shape[1]} positions of README.md, vs the same model in fp32\n")
    print("| model | quantized | max abs diff | mean abs diff | fp32 logit std | top-1 agreement |")
    print("|---|---|---|---|---|---|")
    for label, errs in errors.items():
        for name, (mx, mean, std, agree) in errs.items():
            print(f"| {label} | {name} | {mx:.4f} | {mean:.4f} | {std:.3f} | {100 * agree:.1f}% |")


if __name__ == "__main__":
    main()
