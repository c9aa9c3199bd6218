#!/usr/bin/env bash
# Pipeline throughput (issues #3, #16): `tessera profile` against the Python peers on the
# same shards, the same number of workers and the same batch size.
#
# Peers:
# - `pillow`: webdataset + Pillow in worker processes (bench/pipeline_pillow.py), the way
#   DINO's own code augments; also Pillow's decode-only rate (`--recipe decode`).
# - `torch`: torch DataLoader + webdataset + torchvision v2 (bench/pipeline_peer.py).
#   Needs torch; skipped with PEERS=pillow.
# Tessera is measured in two builds: the default one (libjpeg-turbo when `nasm` is there,
# see pipeline/build.rs) and the pure-Rust one (`TESSERA_JPEG=zune`), and `dino` also with
# `--augment-on-device` (the CPU makes crops and flips only).
#
# Every configuration runs ROUNDS times, interleaved (round 1 of all, then round 2, ...),
# so a busy neighbour slows all of them alike; the summary gives medians of images/s and
# of CPU time per image (user + sys of all the processes, which does not depend on what
# else the machine runs), and the ratios the targets use, in CPU time and in wall time.
#
# usage: bench/pipeline_bench.sh [WORKERS=2] [SECONDS=12] [BATCH=32] [ROUNDS=3]
# env:   PEERS="pillow torch" (default: pillow, plus torch when it imports),
#        PYTHON=... (default: bench/.venv/bin/python, made with the peers' packages),
#        CARGO_TARGET_DIR (default target-light), SHARD_DIR (default $CARGO_TARGET_DIR/bench-shards),
#        BEFORE=<git revision or tessera binary>: also measure that revision (built here,
#        `--no-default-features`) or that binary as `tessera-before`, in the same interleaved
#        rounds (the before/after rows),
#        REUSE=1: measure the binaries already in $CARGO_TARGET_DIR/bench-bin (no builds).
# Shards: 512 ImageNet-like JPEGs (~500x375, q90) in 4 shards (bench/make_pipeline_shards.py).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${1:-2}
SECONDS_PER_RUN=${2:-12}
BATCH=${3:-32}
ROUNDS=${4:-3}
TARGET=${CARGO_TARGET_DIR:-target-light}
PYTHON=${PYTHON:-bench/.venv/bin/python}
if [ ! -x "$PYTHON" ]; then
  python3 -m venv bench/.venv
  bench/.venv/bin/pip install --quiet webdataset pillow numpy
  PYTHON=bench/.venv/bin/python
fi
if [ -z "${PEERS:-}" ]; then
  PEERS=pillow
  "$PYTHON" -c 'import torch, torchvision' 2>/dev/null && PEERS="pillow torch"
fi

BIN=$TARGET/bench-bin
mkdir -p "$BIN"
if [ "${REUSE:-0}" != 1 ]; then
  CARGO_TARGET_DIR=$TARGET cargo build --release --no-default-features --quiet
  cp "$TARGET/release/tessera" "$BIN/tessera-default"
  TESSERA_JPEG=zune CARGO_TARGET_DIR=$TARGET cargo build --release --no-default-features --quiet
  cp "$TARGET/release/tessera" "$BIN/tessera-zune"
  # Leave the target's binary as the default build again.
  CARGO_TARGET_DIR=$TARGET cargo build --release --no-default-features --quiet
  if [ -f "${BEFORE:-}" ]; then
    cp "$BEFORE" "$BIN/tessera-before"
  elif [ -n "${BEFORE:-}" ]; then
    before_tree=$(mktemp -d)
    git worktree add --detach --quiet "$before_tree" "$BEFORE"
    (target=$(realpath "$TARGET") && cd "$before_tree" && CARGO_TARGET_DIR=$target/before cargo build --release --no-default-features --quiet)
    cp "$TARGET/before/release/tessera" "$BIN/tessera-before"
    git worktree remove --force "$before_tree"
  fi
fi
SHARD_DIR=${SHARD_DIR:-$TARGET/bench-shards}
if [ ! -f "$SHARD_DIR/bench-000003.tar" ]; then
  "$PYTHON" bench/make_pipeline_shards.py "$SHARD_DIR" --samples 512 --shards 4
fi
SHARDS="$SHARD_DIR/bench-{000000..000003}.tar"
OUT=$(mktemp -d)
trap 'rm -rf "$OUT"' EXIT

# name -> command; each prints one JSON object with images_per_second and cpu_ms_per_image.
declare -A CMD
ORDER=()
add() { ORDER+=("$1"); CMD[$1]=$2; }
T="--shards $SHARDS --workers $WORKERS --batch-size $BATCH --seconds $SECONDS_PER_RUN --json"
for build in default zune; do
  add "tessera-$build dino" "$BIN/tessera-$build profile --recipe dino $T"
  add "tessera-$build mae" "$BIN/tessera-$build profile --recipe mae $T"
  add "tessera-$build decode-only" "$BIN/tessera-$build profile --recipe mae --decode-only $T"
done
if [ -n "${BEFORE:-}" ]; then
  add "tessera-before dino" "$BIN/tessera-before profile --recipe dino $T"
  add "tessera-before mae" "$BIN/tessera-before profile --recipe mae $T"
fi
add "tessera-default dino on-device" "$BIN/tessera-default profile --recipe dino --augment-on-device $T"
P="--shards $SHARDS --workers $WORKERS --batch-size $BATCH --seconds $SECONDS_PER_RUN --json"
for peer in $PEERS; do
  case $peer in
    pillow)
      for r in dino mae decode; do add "pillow $r" "$PYTHON -W ignore bench/pipeline_pillow.py --recipe $r $P"; done ;;
    torch)
      for r in dino mae; do add "torch $r" "$PYTHON -W ignore bench/pipeline_peer.py --recipe $r $P"; done ;;
  esac
done

for round in $(seq "$ROUNDS"); do
  for name in "${ORDER[@]}"; do
    file="$OUT/${name// /_}.$round.json"
    # The torch peer reports no CPU time: measure every command from outside the same way.
    /usr/bin/time -f '%U %S' -o "$file.time" ${CMD[$name]} 2>/dev/null > "$file" || true
    echo "round $round: $name: $("$PYTHON" -c 'import json,sys; print(round(json.load(open(sys.argv[1]))["images_per_second"], 1))' "$file" 2>/dev/null || echo failed) images/s" >&2
  done
done

echo
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "workers $WORKERS, batch $BATCH, $SECONDS_PER_RUN s a run, median of $ROUNDS interleaved rounds"
"$PYTHON" - "$OUT" "$ROUNDS" "${ORDER[@]}" <<'PY'
import json, statistics, sys
out, rounds, names = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
res = {}
for name in names:
    rates, cpus = [], []
    for r in range(1, rounds + 1):
        base = f"{out}/{name.replace(' ', '_')}.{r}"
        try:
            j = json.load(open(base + ".json"))
            user, sys_ = map(float, open(base + ".json.time").read().split()[-2:])
        except Exception:
            continue
        rates.append(j["images_per_second"])
        decoder = j.get("jpeg_decoder")
        # CPU of the whole command (all threads and worker processes) per image.
        cpus.append(1000 * (user + sys_) / max(j["images"], 1))
    if rates:
        res[name] = (statistics.median(rates), statistics.median(cpus), rates, cpus)
        if decoder:
            print(f"{name}: JPEG decoder {decoder}")
print("| configuration | images/s (median) | CPU ms/image (median) | runs (images/s) |")
print("|---|---|---|---|")
for name, (rate, cpu, rates, cpus) in res.items():
    print(f"| {name} | {rate:.1f} | {cpu:.2f} | {' / '.join(f'{r:.1f}' for r in rates)} |")
def ratio(a, b, target):
    if a in res and b in res:
        wall = res[a][0] / res[b][0]
        cpu = res[b][1] / res[a][1]
        verdict = "met" if cpu >= target else "missed"
        print(f"| {a} vs {b} | {cpu:.2f}x | {wall:.2f}x | >= {target}x in CPU time: {verdict} |")
print()
print("| ratio | CPU time | wall | target |")
print("|---|---|---|---|")
ratio("tessera-default dino", "pillow dino", 6.0)
ratio("tessera-default dino", "torch dino", 6.0)
ratio("tessera-default mae", "pillow decode", 1.0)
ratio("tessera-zune mae", "pillow decode", 1.0)
ratio("tessera-default mae", "tessera-default decode-only", 0.9)
ratio("tessera-default dino on-device", "tessera-default dino", 1.0)
ratio("tessera-default dino", "tessera-before dino", 1.0)
ratio("tessera-default mae", "tessera-before mae", 1.0)
PY
