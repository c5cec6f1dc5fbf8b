#!/usr/bin/env bash
# Data-parallel scaling on this machine: the general captioner config trained for STEPS
# steps by 1 process with NPROC threads, then by NPROC processes with 1 thread each under
# torchrun (Gloo), the same global batch. Prints samples/s both ways, their ratio, and
# the share of training time spent averaging gradients. Evaluation is excluded.
#
#   make bench-ddp [DATA=data/synth] [STEPS=40] [NPROC=2] [CONFIG=experiments/general/captioner.yaml]
set -euo pipefail
bin="${BIN:-target/release/ekphrasis}"
data="${DATA:-data/synth}"
steps="${STEPS:-40}"
nproc="${NPROC:-2}"
config="${CONFIG:-experiments/general/captioner.yaml}"
device="${DEVICE:-cpu}"
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
stage="$(basename "$config" .yaml)"
stage="${stage%%-*}"
common=(train "$stage" -c "$config" --set "data=$data" --set "train.steps=$steps"
        --set "train.eval_every=1000000")
# The evaluation at the last step is excluded from the figures; keep it short.
case "$stage" in
  clip | probe) common+=(--set "eval_subset=4") ;;
  *) common+=(--set "eval.subset=2") ;;
esac
fail() {
  echo "error: $1 failed; its log:" >&2
  cat "$2" >&2
  exit 1
}
echo "==> 1 process x $nproc threads: $stage, $steps steps ($config on $data)"
OMP_NUM_THREADS="$nproc" "$bin" --device "$device" "${common[@]}" --run "$out/one" \
  2>"$out/one.log" >/dev/null || fail "the one-process run" "$out/one.log"
echo "==> $nproc processes x 1 thread (torchrun, gloo)"
OMP_NUM_THREADS=1 EKPHRASIS_BIN="$bin" scripts/ekphrasis-torchrun --nproc-per-node="$nproc" -- \
  --device "$device" "${common[@]}" --run "$out/many" 2>"$out/many.log" >/dev/null \
  || fail "the data-parallel run" "$out/many.log"
rate() { sed -n 's/^throughput: \([0-9.]*\) samples\/s.*/\1/p' "$1" | tail -1; }
one="$(rate "$out/one.log")"
many="$(rate "$out/many.log")"
share="$(sed -n 's/^data-parallel: .*(\([0-9.]*\) %)$/\1/p' "$out/many.log" | tail -1)"
if [[ -z "$one" || -z "$many" ]]; then
  echo "error: a run printed no throughput line; logs:" >&2
  cat "$out/one.log" "$out/many.log" >&2
  exit 1
fi
printf '\n| setup | samples/s |\n|---|---|\n'
printf '| 1 process x %s threads | %s |\n' "$nproc" "$one"
printf '| %s processes x 1 thread (gloo) | %s |\n' "$nproc" "$many"
python3 -c "print(f'\nratio (data-parallel / threads): {float(\"$many\")/float(\"$one\"):.2f}; gradient averaging: $share % of training time')"
