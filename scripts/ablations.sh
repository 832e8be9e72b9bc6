#!/usr/bin/env bash
# The ablations of docs/ablations.md on the offline default: for each, train.py with the changed keys,
# then eval.py on the validation tasks (3 evaluation seeds), into out/ablations/NAME/.
#   scripts/ablations.sh                 # all of them, one after another
#   scripts/ablations.sh reward_success  # some of them (two shells can each run some: --threads=1)
# One thread per run: the same training updates as the default's two threads (docs/results.md),
# and two runs side by side on a 2-core machine.
set -euo pipefail
cd "$(dirname "$0")/.."
declare -A KEYS=(
  [default]=""
  [reward_success]="--reward=success"
  [memory_k1]="--memory_k=1"
  [trials2]="--max_trials=2"
  [lora_r2]="--lora_r=2 --lora_alpha=4"
  [lora_qv]="--lora_targets=q_proj,v_proj"
  [kl0]="--kl_coef=0"
  [kl02]="--kl_coef=0.2"
  [prompt384]="--reflection_prompt_tokens=384"
)
names=("$@")
[ ${#names[@]} -gt 0 ] || names=(default reward_success memory_k1 trials2 lora_r2 lora_qv kl0 kl02 prompt384)
for name in "${names[@]}"; do  # every name checked before the first run starts
  [ -n "${KEYS[$name]+set}" ] || { echo "unknown ablation $name: one of ${!KEYS[*]}" >&2; exit 2; }
done
for name in "${names[@]}"; do
  out="out/ablations/$name"
  # shellcheck disable=SC2086  # KEYS holds several arguments
  python train.py --threads=1 --progress=false --out_dir="$out" ${KEYS[$name]}
  python eval.py --threads=1 --progress=false --out_dir="$out" --eval_split=val ${KEYS[$name]}
done
