#!/usr/bin/env bash
# Each method on CIFAR-10 for a fixed wall-clock budget, then its kNN accuracy next to the
# same backbone at random initialisation (docs/METHODS.md, "CIFAR-10 after a fixed budget").
#
#   bench/methods_cifar.sh                      # 3 minutes a method, batch 64
#   MINUTES=30 METHODS="simclr byol" bench/methods_cifar.sh
#
# Every method trains a ResNet-18 with the CIFAR stem on the recipe `simclr_resnet18_cifar`'s
# views (two crops of 32 px, flip, colour jitter, greyscale); the four methods that ship a
# CIFAR recipe use it, the others get the same views with their ImageNet recipe's
# `[objective]` and `[optim]`. kNN: k = 20 over MAX_TRAIN training images (10,000), scored on
# MAX_VAL test images (2,000) (`tessera eval`, features of the frozen backbone). Every method
# starts from the same random ResNet-18 (same seed), whose kNN is measured once. One line
# per method on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${MINUTES:-3}
BATCH=${BATCH:-64}
METHODS=${METHODS:-"simclr moco_v2 moco_v3 byol simsiam barlow_twins vicreg nnclr"}
MAX_TRAIN=${MAX_TRAIN:-10000}
MAX_VAL=${MAX_VAL:-2000}
WORK=${WORK:-$(mktemp -d)}
cargo build --release --quiet
BIN=target/release/tessera

if [ ! -d "$WORK/shards-train" ]; then
  tar xzf ../shared/datasets/cifar10-jpg.tar.gz -C "$WORK"
  "$BIN" shard "$WORK/train" --out "$WORK/shards-train" --labels folders --max-samples 5000 >/dev/null
  "$BIN" shard "$WORK/test" --out "$WORK/shards-test" --labels folders --max-samples 5000 >/dev/null
fi

# The recipe of `method`: its CIFAR recipe, or simclr_resnet18_cifar's data and views with
# the [objective] and [optim] of its ImageNet recipe and the CIFAR [train] length.
recipe() {
  local method=$1 out=$WORK/$1.toml
  case $method in
    simclr) cp configs/simclr_resnet18_cifar.toml "$out" ;;
    byol) cp configs/byol_resnet18_cifar.toml "$out" ;;
    simsiam) cp configs/simsiam_resnet18_cifar.toml "$out" ;;
    nnclr) cp configs/nnclr_resnet18_cifar.toml "$out" ;;
    *)
      local source
      case $method in
        moco_v2) source=configs/mocov2_resnet50.toml ;;
        moco_v3) source=configs/mocov3_vit_small.toml ;;
        barlow_twins) source=configs/barlowtwins_resnet50.toml ;;
        vicreg) source=configs/vicreg_resnet50.toml ;;
      esac
      sed -n '/^\[model\]/q;p' configs/simclr_resnet18_cifar.toml > "$out"
      printf '[model]\narch = "resnet18"\ncifar_stem = true\n\n' >> "$out"
      sed -n '/^\[objective\]/,/^\[train\]/p' "$source" | sed '$d' >> "$out"
      printf '[train]\nepochs = 1000\nwarmup_epochs = 10\ncheckpoint_every = 1000\n\n' >> "$out"
      sed -n '/^\[optim\]/,$p' "$source" >> "$out"
      ;;
  esac
  echo "$out"
}

knn() {
  "$BIN" eval --checkpoint "$1" --train-shards "$WORK/shards-train/*.tar" \
    --val-shards "$WORK/shards-test/*.tar" --max-train "$MAX_TRAIN" --max-val "$MAX_VAL" \
    --probe-epochs 1 --json --quiet | python3 -c 'import json,sys; print(json.load(sys.stdin)["knn_top1"])'
}

first=$(recipe simclr)
"$BIN" train --config "$first" --shards "$WORK/shards-train/*.tar" --out "$WORK/init" \
  --batch-size "$BATCH" --stop-after 0 --quiet > /dev/null 2>&1
printf '%-13s %8s %10s %10s\n' method steps images knn_top1
printf '%-13s %8s %10s %10s\n' random_init 0 0 "$(knn "$WORK/init")"
for method in $METHODS; do
  r=$(recipe "$method")
  "$BIN" train --config "$r" --shards "$WORK/shards-train/*.tar" --out "$WORK/run-$method" \
    --batch-size "$BATCH" --minutes "$MINUTES" --quiet > "$WORK/$method.json" 2>/dev/null
  steps=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["steps_done"])' "$WORK/$method.json")
  printf '%-13s %8s %10s %10s\n' "$method" "$steps" $((steps * BATCH)) "$(knn "$WORK/run-$method")"
done
