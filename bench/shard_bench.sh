#!/usr/bin/env bash
# Shard-building throughput: `tessera shard` vs a Python+Pillow loop doing the same work,
# both pinned to the same CPU cores, median of 3 runs each.
#
#   bench/shard_bench.sh [N_IMAGES=2000] [CORES=0,1]
#
# Modes: copy (verify-decode every image, write original bytes) and resize
# (`--max-side 256`, Lanczos, JPEG q90). Inputs: N distinct ~400-640 px JPEGs made from
# shared/testdata/photos by bench/shard_make_inputs.py. Needs .venv with Pillow
# (scripts/test.sh makes it) and builds tessera in release without the trainer.
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
cores=${2:-0,1}
workers=$(( $(echo "$cores" | tr ',' '\n' | wc -l) ))
python=${TESSERA_PYTHON:-.venv/bin/python}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$PWD/target-light}
cargo build --release --no-default-features --quiet
tessera=$CARGO_TARGET_DIR/release/tessera
work=${BENCH_DIR:-/tmp/tessera-shard-bench}
inputs=$work/inputs-$n
if [ ! -d "$inputs" ]; then
  echo "==> making $n inputs in $inputs"
  "$python" bench/shard_make_inputs.py "$inputs" "$n"
fi
echo "inputs: $n files, $(du -sh "$inputs" | cut -f1); cores $cores ($workers workers); $(nproc) cores on $(uname -n)"

median() { sort -g | sed -n 2p; }
mkdir -p "$work"

# Each run prints "images/s images-per-CPU-second": wall-clock throughput, and throughput
# per CPU second (user+sys, children included), which is steadier on a loaded machine.
cpu_rate() { awk -v n="$n" '{ printf "%.1f\n", n / ($1 + $2) }' "$work/time"; }
run_tessera() { # args...
  local out=$work/out-tessera
  rm -rf "$out"
  local rate
  rate=$(/usr/bin/time -f "%U %S" -o "$work/time" taskset -c "$cores" "$tessera" shard "$inputs" --out "$out" \
    --workers "$workers" --max-samples 1000 --json "$@" \
    | "$python" -c 'import json,sys; print(round(json.load(sys.stdin)["throughput"]["images_per_s"], 1))')
  echo "$rate $(cpu_rate)"
}
run_pillow() {
  local out=$work/out-pillow
  rm -rf "$out"
  local rate
  rate=$(/usr/bin/time -f "%U %S" -o "$work/time" taskset -c "$cores" "$python" bench/shard_pillow.py "$inputs" "$out" "$workers" "$@")
  echo "$rate $(cpu_rate)"
}

for mode in copy resize; do
  if [ $mode = copy ]; then targs=(); pargs=(); else targs=(--max-side 256 --quality 90); pargs=(256); fi
  # Interleaved, so both see the same background load.
  ts=(); ps=()
  for i in 1 2 3; do
    ts+=("$(run_tessera "${targs[@]}")")
    ps+=("$(run_pillow "${pargs[@]}")")
  done
  t=$(printf '%s\n' "${ts[@]}" | cut -d' ' -f1 | median); tc=$(printf '%s\n' "${ts[@]}" | cut -d' ' -f2 | median)
  p=$(printf '%s\n' "${ps[@]}" | cut -d' ' -f1 | median); pc=$(printf '%s\n' "${ps[@]}" | cut -d' ' -f2 | median)
  echo "  runs (images/s, images per CPU-s): tessera ${ts[*]}; pillow ${ps[*]}"
  echo "$mode: tessera $t images/s ($tc per CPU-s), python+pillow $p images/s ($pc per CPU-s);" \
    "ratio $("$python" -c "print(f'{$t / $p:.2f}x wall, {$tc / $pc:.2f}x CPU')") (median of 3)"
done
