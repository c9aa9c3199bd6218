#!/usr/bin/env bash
# Training throughput on CPU: tessera vs PyTorch, same MAE, same batch, same threads.
#
#   bench/train_cpu.sh                  # demo-sized MAE (ViT 4x96 at 32 px), batch 64, 2 threads
#   PRESET=tiny_cifar BATCH=64 bench/train_cpu.sh
#   PRESET=vit_tiny_224 BATCH=8 STEPS=5 bench/train_cpu.sh
#
# Measures, RUNS times each (median reported):
#   1. tessera train --synthetic: the model alone (u8 batches uploaded and normalised as in a real run);
#   2. bench/train_cpu_torch.py: the same model in PyTorch (torch.set_num_threads(THREADS));
#   3. tessera train on real CIFAR-10 shards: images/s and the data-wait fraction.
# Images/s per run is the median over its steps after WARMUP steps (from metrics.jsonl).
set -euo pipefail
cd "$(dirname "$0")/.."

PRESET=${PRESET:-demo}
BATCH=${BATCH:-64}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-3}
THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
PY=${PY:-bench/.venv/bin/python}
WORK=${WORK:-$(mktemp -d)}
export RAYON_NUM_THREADS=$THREADS

if ! "$PY" -c 'import torch' 2>/dev/null; then
  python3 -m venv bench/.venv && bench/.venv/bin/pip install --quiet torch
fi
cargo build --release --quiet
BIN=target/release/tessera

case $PRESET in
  demo)         IMG=32;  PATCH=4;  DIM=96;  DEPTH=4;  HEADS=3;  DDIM=64;  DDEPTH=1; DHEADS=2 ;;
  tiny_cifar)   IMG=32;  PATCH=4;  DIM=192; DEPTH=12; HEADS=3;  DDIM=128; DDEPTH=2; DHEADS=4 ;;
  vit_tiny_224) IMG=224; PATCH=16; DIM=192; DEPTH=12; HEADS=3;  DDIM=512; DDEPTH=8; DHEADS=16 ;;
  vit_base_224) IMG=224; PATCH=16; DIM=768; DEPTH=12; HEADS=12; DDIM=512; DDEPTH=8; DHEADS=16 ;;
  *) echo "unknown PRESET $PRESET" >&2; exit 2 ;;
esac

cat > "$WORK/recipe.toml" <<TOML
[data]
batch_size = $BATCH
image_fields = ["jpg"]
shuffle_buffer = 1000
[[views]]
name = "image"
size = $IMG
scale = [0.35, 1.0]
interpolation = "bicubic"
[[views.transforms]]
op = "horizontal_flip"
p = 0.5
[views.mask]
kind = "random"
ratio = 0.75
patch_size = $PATCH
[model]
arch = "vit_tiny_patch16_224"
img_size = $IMG
patch_size = $PATCH
embed_dim = $DIM
depth = $DEPTH
num_heads = $HEADS
decoder_embed_dim = $DDIM
decoder_depth = $DDEPTH
decoder_num_heads = $DHEADS
[train]
steps = $((STEPS + WARMUP))
checkpoint_every = 0
[optim]
base_lr = 1.5e-4
TOML

# Median images/s and mean data-wait fraction of a run's steps after warmup.
summarise() {
  "$PY" - "$1" "$WARMUP" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2]):]
print(statistics.median(r["images_per_second"] for r in rows), sum(r["data_wait_fraction"] for r in rows) / len(rows))
PY
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); preset $PRESET, batch $BATCH, $THREADS threads, $RUNS runs" >&2
tessera_syn=(); torch_ips=(); tessera_real=(); waits=()
for i in $(seq "$RUNS"); do
  "$BIN" train --config "$WORK/recipe.toml" --synthetic --out "$WORK/syn$i" --quiet > /dev/null
  read -r ips _ < <(summarise "$WORK/syn$i/metrics.jsonl"); tessera_syn+=("$ips")
  t=$("$PY" bench/train_cpu_torch.py --preset "$PRESET" --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" --threads "$THREADS")
  torch_ips+=("$(echo "$t" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["images_per_second"])')")
  echo "run $i: tessera ${tessera_syn[-1]} img/s, pytorch ${torch_ips[-1]} img/s" >&2
done

if [ "$IMG" = 32 ]; then
  # Real pipeline: 2,000 CIFAR-10 training images in 4 shards.
  mkdir -p "$WORK/cifar"
  tar -xzf ../shared/datasets/cifar10-jpg.tar.gz -C "$WORK/cifar" --wildcards 'train/*/0[0-1]??.jpg'
  "$BIN" shard "$WORK/cifar/train" --out "$WORK/shards" --labels folders --max-samples 500 > /dev/null
  for i in $(seq "$RUNS"); do
    "$BIN" train --config "$WORK/recipe.toml" --shards "$WORK/shards/*.tar" --workers 1 --out "$WORK/real$i" --quiet > /dev/null
    read -r ips wait < <(summarise "$WORK/real$i/metrics.jsonl"); tessera_real+=("$ips"); waits+=("$wait")
  done
fi

s=$(median "${tessera_syn[@]}"); p=$(median "${torch_ips[@]}")
echo "tessera synthetic: $s images/s (median of $RUNS)"
echo "pytorch:           $p images/s (median of $RUNS)"
echo "ratio tessera/pytorch: $(awk -v a="$s" -v b="$p" 'BEGIN {printf "%.2f", a / b}')"
if [ ${#tessera_real[@]} -gt 0 ]; then
  echo "tessera real pipeline (1 worker): $(median "${tessera_real[@]}") images/s, data wait $(median "${waits[@]}")"
fi
echo "work dir: $WORK"
