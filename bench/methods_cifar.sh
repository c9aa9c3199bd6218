#!/usr/bin/env bash
# Every method on CIFAR-10 for the same fixed budget of optimiser steps, then its kNN accuracy
# next to the same backbone at random initialisation (docs/METHODS.md, "CIFAR-10 after a
# fixed budget").
#
#   bench/methods_cifar.sh                           # every method, 25 steps of 64 images
#   STEPS=300 METHODS="simclr dino" bench/methods_cifar.sh
#
# The budget is in steps, not minutes, so that a busy machine changes how long the table
# takes but not what it says; each line also gives the wall time the training took.
# `--steps` makes the run that long (warm-up and cosine scaled to it), `--batch-size` rescales
# the learning rate (lr = base_lr x batch / 256).
#
# Recipes: the method's CIFAR recipe where it has one (ResNet-18 with the CIFAR stem for the
# two-view and SwAV methods, a 6-block ViT-Tiny with patch 4 for the ViT methods); MoCo v2,
# MoCo v3, Barlow Twins and VICReg, which have only ImageNet recipes, get
# `simclr_resnet18_cifar`'s data and views with their recipe's `[objective]` and `[optim]`.
# kNN: k = 20 over MAX_TRAIN training images, scored on MAX_VAL test images (`tessera eval`,
# features of the frozen backbone; the momentum teacher is not used). Random init: the
# recipe's backbone before its first step (same seed for every method), measured once per
# backbone. One line per method on stdout; run directories stay in WORK, and a second run of
# the script with the same WORK reuses the finished ones (several copies with different
# METHODS may share one WORK, e.g. to fill both cores when one run scales poorly).
set -euo pipefail
cd "$(dirname "$0")/.."

STEPS=${STEPS:-25}
BATCH=${BATCH:-64}
METHODS=${METHODS:-"simclr moco_v2 moco_v3 byol simsiam barlow_twins vicreg nnclr swav dino ibot msn mae simmim data2vec"}
MAX_TRAIN=${MAX_TRAIN:-5000}
MAX_VAL=${MAX_VAL:-1000}
WORK=${WORK:-$(mktemp -d)}
cargo build --release --quiet
BIN=target/release/tessera

if [ ! -d "$WORK/shards-train" ]; then
  tar xzf ../shared/datasets/cifar10-jpg.tar.gz -C "$WORK"
  # --shuffle: every shard mixes the ten classes (sorted folders put one class in each).
  "$BIN" shard "$WORK/train" --out "$WORK/shards-train" --labels folders --max-samples 5000 --shuffle 0 >/dev/null
  "$BIN" shard "$WORK/test" --out "$WORK/shards-test" --labels folders --max-samples 5000 >/dev/null
fi

# The recipe file of `method`.
recipe() {
  local method=$1 out=$WORK/$1.toml source
  case $method in
    simclr | byol | simsiam | nnclr | swav) cp "configs/${method}_resnet18_cifar.toml" "$out" ;;
    dino | ibot | msn | mae | simmim | data2vec) cp "configs/${method}_vit_tiny_cifar.toml" "$out" ;;
    moco_v2 | moco_v3 | barlow_twins | vicreg)
      case $method in
        moco_v2) source=configs/mocov2_resnet50.toml ;;
        moco_v3) source=configs/mocov3_vit_small.toml ;;
        barlow_twins) source=configs/barlowtwins_resnet50.toml ;;
        vicreg) source=configs/vicreg_resnet50.toml ;;
      esac
      sed -n '/^\[model\]/q;p' configs/simclr_resnet18_cifar.toml > "$out"
      printf '[model]\narch = "resnet18"\ncifar_stem = true\n\n' >> "$out"
      sed -n '/^\[objective\]/,/^\[train\]/p' "$source" | sed '$d' >> "$out"
      printf '[train]\nepochs = 1000\nwarmup_epochs = 10\n\n' >> "$out"
      sed -n '/^\[optim\]/,$p' "$source" >> "$out"
      ;;
    *) echo "methods_cifar: unknown method $method" >&2; exit 2 ;;
  esac
  echo "$out"
}

# The backbone of a recipe: its [model] section without comments and drop path (a training
# setting), as a name for the random-init cache.
backbone() {
  sed -n '/^\[model\]/,/^\[/p' "$1" | sed -e 's/#.*//' -e '/^\[/d' -e '/drop_path/d' -e '/^\s*$/d' \
    | tr -d ' "' | paste -sd, | tr '=' '-'
}

knn() {
  "$BIN" eval --checkpoint "$1" --train-shards "$WORK/shards-train/*.tar" \
    --val-shards "$WORK/shards-test/*.tar" --max-train "$MAX_TRAIN" --max-val "$MAX_VAL" \
    --probe-epochs 1 --json --quiet | python3 -c 'import json,sys; print(round(100 * json.load(sys.stdin)["knn_top1"], 1))'
}

train() { # train RECIPE OUT [flags...]: prints the --json summary's file
  local r=$1 out=$2
  shift 2
  rm -rf "$out"
  "$BIN" train --config "$r" --shards "$WORK/shards-train/*.tar" --out "$out" \
    --batch-size "$BATCH" --json --quiet "$@" > "$out.json" 2> "$out.log"
}
field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); $STEPS steps of $BATCH; kNN k=20 over $MAX_TRAIN train, $MAX_VAL test images"
printf '%-13s %-40s %6s %7s %9s %9s %9s %8s\n' method backbone steps images "train_s" first_loss last_loss "knn_%"
for method in $METHODS; do
  r=$(recipe "$method")
  b=$(backbone "$r")
  # Random init, once per backbone (kept in WORK for later runs of the script).
  if [ ! -s "$WORK/random-$b.knn" ]; then
    train "$r" "$WORK/init-$method" --stop-after 0
    knn "$WORK/init-$method" > "$WORK/random-$b.knn"
  fi
  printf '%-13s %-40s %6s %7s %9s %9s %9s %8s\n' "random_init" "$b" 0 0 - - - "$(cat "$WORK/random-$b.knn")"
  if [ "$(field "$WORK/run-$method.json" steps_done 2>/dev/null)" != "$STEPS" ]; then
    start=$(date +%s)
    train "$r" "$WORK/run-$method" --steps "$STEPS"
    echo $(($(date +%s) - start)) > "$WORK/run-$method.seconds"
  fi
  seconds=$(cat "$WORK/run-$method.seconds" 2>/dev/null || echo "?")
  steps=$(field "$WORK/run-$method.json" steps_done)
  first=$(python3 -c 'import json,sys; print(round(json.loads(open(sys.argv[1]).readline())["loss"], 3))' "$WORK/run-$method/metrics.jsonl")
  last=$(python3 -c 'import sys; print(round(float(sys.argv[1]), 3))' "$(field "$WORK/run-$method.json" last_loss)")
  printf '%-13s %-40s %6s %7s %9s %9s %9s %8s\n' "$method" "$b" "$steps" $((steps * BATCH)) "$seconds" "$first" "$last" "$(knn "$WORK/run-$method")"
done
