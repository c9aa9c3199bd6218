#!/usr/bin/env bash
# Pipeline throughput: `tessera profile` against the PyTorch peer (bench/pipeline_peer.py)
# on the same shards with the same workers and batch size, median of 3 runs each, plus the
# decode-only ceiling (`tessera profile --decode-only`: full-size decode, nothing else).
# Two builds of tessera are measured: the default one (zune-jpeg) and, when `nasm` is
# installed, the `libjpeg-turbo` one (crop-aware decode). The ceiling is the faster of the
# two builds' full-size decodes, so a faster decoder never flatters the ratio.
#
# usage: bench/pipeline_bench.sh [WORKERS=2] [SECONDS=20] [BATCH=32]
# Makes bench/.venv (torch, torchvision, webdataset, pillow from PyPI) if missing, builds
# `tessera` (release, no trainer) in target-light, and writes 512 ImageNet-like JPEGs
# (~500x375, q90) into 4 shards under target-light/bench-shards/ (bench/make_pipeline_shards.py).
# Prints one line per measurement and a summary with the ratios the targets use.
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${1:-2}
SECONDS_PER_RUN=${2:-20}
BATCH=${3:-32}
VENV=bench/.venv
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install --quiet torch torchvision webdataset pillow
fi
BIN=target-light/bench-bin
mkdir -p "$BIN"
CARGO_TARGET_DIR=target-light cargo build --release --no-default-features --quiet
cp target-light/release/tessera "$BIN/tessera-zune"
BUILDS=zune
if command -v nasm >/dev/null; then
  CARGO_TARGET_DIR=target-light cargo build --release --no-default-features --features libjpeg-turbo --quiet
  cp target-light/release/tessera "$BIN/tessera-turbo"
  BUILDS="zune turbo"
else
  echo "nasm not installed: measuring the default (zune-jpeg) build only" >&2
fi
SHARD_DIR=target-light/bench-shards
if [ ! -f "$SHARD_DIR/bench-000003.tar" ]; then
  "$VENV/bin/python" bench/make_pipeline_shards.py "$SHARD_DIR" --samples 512 --shards 4
fi
SHARDS="$SHARD_DIR/bench-{000000..000003}.tar"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

median() { sort -g | sed -n 2p; }
rate() { "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["images_per_second"])'; }

run_tessera() { # build, name, extra args...
  local build=$1 name=$2; shift 2
  for i in 1 2 3; do
    "$BIN/tessera-$build" profile --shards "$SHARDS" --workers "$WORKERS" --batch-size "$BATCH" \
      --seconds "$SECONDS_PER_RUN" --json "$@" 2>/dev/null > "$OUT/$build-$name.$i.json"
    echo "tessera ($build) $name run $i: $(rate < "$OUT/$build-$name.$i.json") images/s" >&2
    rate < "$OUT/$build-$name.$i.json"
  done | median
}

run_peer() { # recipe
  for i in 1 2 3; do
    "$VENV/bin/python" -W ignore bench/pipeline_peer.py --recipe "$1" --shards "$SHARDS" \
      --workers "$WORKERS" --batch-size "$BATCH" --seconds "$SECONDS_PER_RUN" --json > "$OUT/peer-$1.$i.json"
    echo "peer $1 run $i: $(rate < "$OUT/peer-$1.$i.json") images/s" >&2
    rate < "$OUT/peer-$1.$i.json"
  done | median
}

declare -A T_DINO T_MAE T_DECODE
for build in $BUILDS; do
  T_DINO[$build]=$(run_tessera "$build" dino --recipe dino)
  T_MAE[$build]=$(run_tessera "$build" mae --recipe mae)
  T_DECODE[$build]=$(run_tessera "$build" decode --recipe mae --decode-only)
done
P_DINO=$(run_peer dino)
P_MAE=$(run_peer mae)

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "workers $WORKERS, batch $BATCH, $SECONDS_PER_RUN s a run, median of 3 (images/s)"
args=("$P_DINO" "$P_MAE")
for build in $BUILDS; do args+=("$build" "${T_DINO[$build]}" "${T_MAE[$build]}" "${T_DECODE[$build]}"); done
"$VENV/bin/python" - "${args[@]}" <<'PY'
import sys
p_dino, p_mae = map(float, sys.argv[1:3])
rest = sys.argv[3:]
builds = {rest[i]: tuple(map(float, rest[i + 1:i + 4])) for i in range(0, len(rest), 4)}
ceiling_build, ceiling = max(((b, v[2]) for b, v in builds.items()), key=lambda x: x[1])
print(f"peer:  dino {p_dino:8.1f}   mae {p_mae:8.1f}")
print(f"decode-only ceiling: {ceiling:8.1f} ({ceiling_build} build)")
for build, (dino, mae, dec) in builds.items():
    print(f"{build:>5}: dino {dino:8.1f} ({dino / p_dino:5.1f}x peer, target >= 5x)"
          f"   mae {mae:8.1f} ({mae / p_mae:4.1f}x peer; {100 * mae / ceiling:5.1f}% of the ceiling, target >= 90%)"
          f"   own decode-only {dec:8.1f}")
PY
echo "per-stage profile of the median-ish dino and mae runs:"
for build in $BUILDS; do
  for name in dino mae; do
    "$VENV/bin/python" - "$OUT/$build-$name.2.json" "$build" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
b = r["bottleneck"]
print(f"  {r['recipe']} ({sys.argv[2]}): bottleneck {b['stage']}: {b['message']}")
for s in r["stages"]:
    print(f"    {s['name']:<18} busy {100 * s['busy_fraction']:5.1f}%  in {100 * s['blocked_on_input_fraction']:5.1f}%"
          f"  out {100 * s['blocked_on_output_fraction']:5.1f}%")
PY
  done
done
