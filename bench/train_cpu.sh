#!/usr/bin/env bash
# Training throughput on CPU: tessera vs PyTorch, same model, same batch, same threads.
#
#   bench/train_cpu.sh                        # the three table rows of docs/PERFORMANCE.md
#   PRESETS=demo RUNS=5 bench/train_cpu.sh    # one row, more runs
#   PRESETS="demo mae_vit_tiny_cifar simclr_resnet18_cifar vit_tiny_224" ...
#
# Presets: `demo` (the demo's MAE: ViT 4x96 at 32 px, decoder 1x64), `mae_vit_tiny_cifar`
# (the recipe: ViT-Tiny width, 6 blocks, decoder 2x128), `simclr_resnet18_cifar` (the recipe:
# two 32 px views, CIFAR ResNet-18, projector 2048 -> 128, LARS), `vit_tiny_224`.
# Each run, tessera and PyTorch alternate (so load drifts hit both), RUNS times:
#   1. tessera train --synthetic: the model alone (u8 batches uploaded and normalised as in a
#      real run), compute threads = THREADS;
#   2. the PyTorch peer (bench/train_cpu_torch.py for MAE, bench/train_cpu_torch_simclr.py for
#      SimCLR), torch.set_num_threads(THREADS).
# Images/s of a run: median over its steps after WARMUP. CPU ms/image: user+sys time of the
# whole process (start-up and warm-up included) over all images it trained on; less noisy on
# a shared machine than images/s. Output: one markdown row per preset (stdout), runs on stderr.
# (Whole-process CPU includes PyTorch's import, ~3 s: keep STEPS at the defaults or above.)
# REAL=1 adds tessera on real CIFAR-10 shards (1 worker) for the 32 px MAE presets: data wait.
set -euo pipefail
cd "$(dirname "$0")/.."

PRESETS=${PRESETS:-"demo mae_vit_tiny_cifar simclr_resnet18_cifar"}
THREADS=${THREADS:-2}
RUNS=${RUNS:-3}
WARMUP=${WARMUP:-3}
PY=${PY:-bench/.venv/bin/python}
WORK=${WORK:-$(mktemp -d)}
BIN=${TESSERA_BIN:-target/release/tessera}

if ! "$PY" -c 'import torch, torchvision' 2>/dev/null; then
  python3 -m venv bench/.venv
  # PyTorch's CPU-only wheels where its index is reachable; else PyPI's (they bring the CUDA
  # libraries, a few GB, unused here).
  bench/.venv/bin/pip install --quiet torch torchvision --index-url https://download.pytorch.org/whl/cpu \
    || bench/.venv/bin/pip install --quiet torch torchvision
  PY=bench/.venv/bin/python
fi
if [ -z "${TESSERA_BIN:-}" ]; then cargo build --release --quiet; fi

# The demo's MAE as a recipe file (the demo's own recipe trains on shards).
demo_recipe() {
  cat > "$WORK/demo.toml" <<TOML
[data]
batch_size = 64
image_fields = ["jpg"]
[[views]]
name = "image"
size = 32
scale = [0.35, 1.0]
interpolation = "bicubic"
[[views.transforms]]
op = "horizontal_flip"
p = 0.5
[views.mask]
kind = "random"
ratio = 0.75
patch_size = 4
[model]
arch = "vit_tiny_patch16_224"
img_size = 32
patch_size = 4
embed_dim = 96
depth = 4
num_heads = 3
[objective]
method = "mae"
decoder_embed_dim = 64
decoder_depth = 1
decoder_num_heads = 2
[train]
steps = 100
checkpoint_every = 0
[optim]
base_lr = 1.5e-4
TOML
  echo "$WORK/demo.toml"
}

vit224_recipe() {
  sed -e 's/^size = 32/size = 224/' -e 's/^patch_size = 4/patch_size = 16/' \
      -e 's/^img_size = 32/img_size = 224/' -e 's/^embed_dim = 96/embed_dim = 192/' \
      -e 's/^depth = 4/depth = 12/' -e 's/^decoder_embed_dim = 64/decoder_embed_dim = 512/' \
      -e 's/^decoder_depth = 1/decoder_depth = 8/' -e 's/^decoder_num_heads = 2/decoder_num_heads = 16/' \
      "$(demo_recipe)" > "$WORK/vit224.toml"
  echo "$WORK/vit224.toml"
}

# Median images/s of a run's steps after warmup, and images trained on in all.
summarise() {
  "$PY" - "$1" "$WARMUP" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
timed = rows[int(sys.argv[2]):]
print(statistics.median(r["images_per_second"] for r in timed), sum(r["images"] for r in rows),
      sum(r["data_wait_fraction"] for r in timed) / len(timed))
PY
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
# `cpu_of FILE`: user+sys seconds from GNU time's `-f '%U %S'` line.
cpu_of() { tail -1 "$1" | awk '{print $1 + $2}'; }

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs); load $(cut -d' ' -f1-3 /proc/loadavg); $THREADS threads, $RUNS runs" >&2
echo "| preset | batch | tessera images/s (runs) | PyTorch images/s (runs) | ratio | tessera CPU ms/image | PyTorch CPU ms/image | ratio, CPU time |"
echo "|---|---|---|---|---|---|---|---|"
for preset in $PRESETS; do
  case $preset in
    demo)                  config=$(demo_recipe); batch=${BATCH:-64}; steps=${STEPS:-20}
                           peer=(bench/train_cpu_torch.py --preset demo) ;;
    mae_vit_tiny_cifar)    config=mae_vit_tiny_cifar; batch=${BATCH:-64}; steps=${STEPS:-10}
                           peer=(bench/train_cpu_torch.py --preset mae_vit_tiny_cifar) ;;
    simclr_resnet18_cifar) config=simclr_resnet18_cifar; batch=${BATCH:-32}; steps=${STEPS:-4}
                           peer=(bench/train_cpu_torch_simclr.py) ;;
    vit_tiny_224)          config=$(vit224_recipe); batch=${BATCH:-8}; steps=${STEPS:-5}
                           peer=(bench/train_cpu_torch.py --preset vit_tiny_224) ;;
    *) echo "unknown preset $preset" >&2; exit 2 ;;
  esac
  t_ips=(); p_ips=(); t_cpu=(); p_cpu=()
  for i in $(seq "$RUNS"); do
    out="$WORK/$preset-$i"
    /usr/bin/time -f '%U %S' -o "$out.time" "$BIN" train --config "$config" --synthetic \
      --steps $((steps + WARMUP)) --batch-size "$batch" --threads "$THREADS" \
      --checkpoint-every 0 --picture-every 1000000 --out "$out" --quiet > /dev/null 2> "$out.log"
    read -r ips images _ < <(summarise "$out/metrics.jsonl")
    t_ips+=("$ips"); t_cpu+=("$(awk -v c="$(cpu_of "$out.time")" -v n="$images" 'BEGIN {print 1000 * c / n}')")
    /usr/bin/time -f '%U %S' -o "$out.peer.time" "$PY" "${peer[@]}" --batch "$batch" \
      --steps "$steps" --warmup "$WARMUP" --threads "$THREADS" > "$out.peer.json"
    ips=$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["images_per_second"])' "$out.peer.json")
    p_ips+=("$ips"); p_cpu+=("$(awk -v c="$(cpu_of "$out.peer.time")" -v n=$(((steps + WARMUP) * batch)) 'BEGIN {print 1000 * c / n}')")
    echo "$preset run $i: tessera ${t_ips[-1]} img/s ${t_cpu[-1]} CPU ms/img; pytorch ${p_ips[-1]} img/s ${p_cpu[-1]} CPU ms/img" >&2
  done
  t=$(median "${t_ips[@]}"); p=$(median "${p_ips[@]}"); tc=$(median "${t_cpu[@]}"); pc=$(median "${p_cpu[@]}")
  runs() { printf '%.1f / ' "$@" | sed 's| / $||'; }
  printf '| `%s` | %s | **%.1f** (%s) | **%.1f** (%s) | **%.2f** | %.2f | %.2f | %.2f |\n' \
    "$preset" "$batch" "$t" "$(runs "${t_ips[@]}")" "$p" "$(runs "${p_ips[@]}")" \
    "$(awk -v a="$t" -v b="$p" 'BEGIN {print a / b}')" "$tc" "$pc" "$(awk -v a="$tc" -v b="$pc" 'BEGIN {print b / a}')"

  if [ "${REAL:-0}" = 1 ] && [ "$preset" != simclr_resnet18_cifar ] && [ "$preset" != vit_tiny_224 ]; then
    # Real pipeline: 2,000 CIFAR-10 training images in 4 shards, one worker.
    if [ ! -d "$WORK/shards" ]; then
      mkdir -p "$WORK/cifar"
      tar -xzf ../shared/datasets/cifar10-jpg.tar.gz -C "$WORK/cifar" --wildcards 'train/*/0[0-1]??.jpg'
      "$BIN" shard "$WORK/cifar/train" --out "$WORK/shards" --labels folders --max-samples 500 > /dev/null
    fi
    "$BIN" train --config "$config" --shards "$WORK/shards/*.tar" --steps $((steps + WARMUP)) \
      --batch-size "$batch" --threads "$THREADS" --workers 1 --checkpoint-every 0 \
      --picture-every 1000000 --out "$WORK/$preset-real" --quiet > /dev/null 2>&1
    read -r ips _ wait < <(summarise "$WORK/$preset-real/metrics.jsonl")
    echo "$preset on CIFAR-10 shards (1 worker): $ips images/s, data wait $wait" >&2
  fi
done
echo "work dir: $WORK" >&2
