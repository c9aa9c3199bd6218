#!/usr/bin/env bash
# Pipeline throughput: `tessera profile` against the PyTorch peer (bench/pipeline_peer.py)
# on the same shards with the same workers and batch size, median of 3 runs each, plus the
# decode-only ceiling (`tessera profile --decode-only`: full-size decode, nothing else).
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
CARGO_TARGET_DIR=target-light cargo build --release --no-default-features --quiet
TESSERA=target-light/release/tessera
SHARD_DIR=target-light/bench-shards
if [ ! -f "$SHARD_DIR/bench-000003.tar" ]; then
  "$VENV/bin/python" bench/make_pipeline_shards.py "$SHARD_DIR" --samples 512 --shards 4
fi
SHARDS="$SHARD_DIR/bench-{000000..000003}.tar"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

median() { sort -g | sed -n 2p; }
rate() { "$VENV/bin/python" -c 'import json,sys; print(json.load(sys.stdin)["images_per_second"])'; }

run_tessera() { # name, extra args...
  local name=$1; shift
  for i in 1 2 3; do
    "$TESSERA" profile --shards "$SHARDS" --workers "$WORKERS" --batch-size "$BATCH" \
      --seconds "$SECONDS_PER_RUN" --json "$@" 2>/dev/null > "$OUT/$name.$i.json"
    echo "tessera $name run $i: $(rate < "$OUT/$name.$i.json") images/s" >&2
    rate < "$OUT/$name.$i.json"
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

T_DINO=$(run_tessera dino --recipe dino)
P_DINO=$(run_peer dino)
T_MAE=$(run_tessera mae --recipe mae)
P_MAE=$(run_peer mae)
T_DECODE=$(run_tessera decode --recipe mae --decode-only)

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "workers $WORKERS, batch $BATCH, $SECONDS_PER_RUN s a run, median of 3 (images/s)"
"$VENV/bin/python" - "$T_DINO" "$P_DINO" "$T_MAE" "$P_MAE" "$T_DECODE" <<'PY'
import sys
t_dino, p_dino, t_mae, p_mae, t_dec = map(float, sys.argv[1:])
print(f"dino:  tessera {t_dino:8.1f}   peer {p_dino:8.1f}   ratio {t_dino / p_dino:5.1f}x   (target >= 5x)")
print(f"mae:   tessera {t_mae:8.1f}   peer {p_mae:8.1f}   ratio {t_mae / p_mae:5.1f}x")
print(f"mae vs decode-only ceiling {t_dec:8.1f}: {100 * t_mae / t_dec:5.1f}%   (target >= 90%)")
PY
echo "per-stage profile of the median-ish dino and mae runs:"
for name in dino mae; do
  "$VENV/bin/python" - "$OUT/$name.2.json" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
b = r["bottleneck"]
print(f"  {r['recipe']}: bottleneck {b['stage']}: {b['message']}")
for s in r["stages"]:
    print(f"    {s['name']:<18} busy {100 * s['busy_fraction']:5.1f}%  in {100 * s['blocked_on_input_fraction']:5.1f}%"
          f"  out {100 * s['blocked_on_output_fraction']:5.1f}%")
PY
done
