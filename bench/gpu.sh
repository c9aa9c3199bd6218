#!/usr/bin/env bash
# MAE ViT-B/16 at 224 on one NVIDIA GPU (H200 class): the device alone, fed by the real
# pipeline, the data-wait fraction and model-FLOPs utilisation; PyTorch on the same GPU as
# the peer. Run on the GPU machine from the repository root:
#
#   bench/gpu.sh                 # batch 256, 30 timed steps, 3 runs each
#   BATCH=128 STEPS=20 SHARDS='/data/imagenet/train-{0000..0099}.tar' bench/gpu.sh
#
#   TESSERA_BIN=path/to/tessera-cuda bench/gpu.sh   # a binary built elsewhere (a GPU machine
#                                                   # without a package registry): no cargo
#
# Precision: the `mae_vit_base` recipe trains with `precision = "bf16"` (bf16 matmuls over f32
# master weights, gradients and AdamW state: trainer/src/precision.rs); MFU is reported
# against both the bf16 and the f32 dense peak. The PyTorch peer runs twice, f32 and bf16
# autocast.
set -euo pipefail
cd "$(dirname "$0")/.."

BATCH=${BATCH:-256}
STEPS=${STEPS:-30}
WARMUP=${WARMUP:-5}
RUNS=${RUNS:-3}
WORKERS=${WORKERS:-$(( $(nproc) - 2 ))}
PY=${PY:-bench/.venv/bin/python}
WORK=${WORK:-$(mktemp -d)}
# Dense peaks of an H200 SXM (TFLOP/s): bf16 tensor cores, plain f32. Override for other GPUs.
PEAK_BF16=${PEAK_BF16:-989}
PEAK_F32=${PEAK_F32:-67}

# 1. Build with CUDA (the driver is loaded at run time) and strip the binary.
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
if [ -n "${TESSERA_BIN:-}" ]; then
  BIN=$TESSERA_BIN
else
  cargo build --release --features cuda
  BIN=target/release/tessera-cuda
  cp target/release/tessera "$BIN"
  strip "$BIN"
fi
ls -l "$BIN" >&2
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader >&2

# FLOPs of one image through MAE ViT-B/16 (forward), multiply-add = 2 FLOPs:
# encoder on the 49 visible patches + class token, decoder on all 196 + class token.
FWD_FLOPS=$("$PY" - <<'PY'
def blocks(n, d, depth, mlp=4):
    return depth * (2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 2 * n * d * mlp * d * 2)
L, K, P, D, DD = 196, 49, 16, 768, 512
f = 2 * L * (3 * P * P) * D                   # patch embedding (all patches, then gathered)
f += blocks(K + 1, D, 12)                     # encoder
f += 2 * (K + 1) * D * DD                     # decoder_embed
f += blocks(L + 1, DD, 8)                     # decoder
f += 2 * (L + 1) * DD * (P * P * 3)           # decoder_pred
print(f)
PY
)
echo "MAE ViT-B/16 forward: $(awk -v f="$FWD_FLOPS" 'BEGIN {printf "%.2f", f / 1e9}') GFLOP/image; x3 for forward+backward" >&2

summarise() {
  "$PY" - "$1" "$WARMUP" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2]):]
print(statistics.median(r["images_per_second"] for r in rows), sum(r["data_wait_fraction"] for r in rows) / len(rows))
PY
}
median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
mfu() { awk -v ips="$1" -v f="$FWD_FLOPS" -v peak="$2" 'BEGIN {printf "%.1f%%", 100 * ips * 3 * f / (peak * 1e12)}'; }

# 2. The device alone: synthetic batches (same u8 upload + on-device normalisation).
syn=()
for i in $(seq "$RUNS"); do
  "$BIN" train --config mae_vit_base --synthetic --device cuda --batch-size "$BATCH" \
    --steps $((STEPS + WARMUP)) --checkpoint-every 0 --picture-every 0 --out "$WORK/syn$i" --quiet > /dev/null
  read -r ips _ < <(summarise "$WORK/syn$i/metrics.jsonl"); syn+=("$ips")
done

# 2b. The same with pageable batch buffers (`--pageable-buffers`): what page-locking the
# pipeline's pool (trainer/src/pinned.rs) buys, and a check that it uploads the same bytes:
# the synthetic batches are seeded, so both runs must see the same losses.
pageable=()
for i in $(seq "$RUNS"); do
  "$BIN" train --config mae_vit_base --synthetic --device cuda --batch-size "$BATCH" --pageable-buffers \
    --steps $((STEPS + WARMUP)) --checkpoint-every 0 --picture-every 0 --out "$WORK/pageable$i" --quiet > /dev/null
  read -r ips _ < <(summarise "$WORK/pageable$i/metrics.jsonl"); pageable+=("$ips")
done
"$PY" - "$WORK/syn1/metrics.jsonl" "$WORK/pageable1/metrics.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l)["loss"] for l in open(p)][:5] for p in sys.argv[1:3])
worst = max(abs(x - y) / max(abs(y), 1e-12) for x, y in zip(a, b))
print(f"pinned vs pageable losses, first 5 steps: largest relative difference {worst:.2e}",
      "(same bytes uploaded)" if worst < 1e-3 else "MISMATCH: pinned uploads differ", file=sys.stderr)
PY

# 3. Fed by the real pipeline (decode, RandomResizedCrop 224 bicubic, flip, masks).
if [ -z "${SHARDS:-}" ]; then
  mkdir -p "$WORK/cifar"
  tar -xzf ../shared/datasets/cifar10-jpg.tar.gz -C "$WORK/cifar" --wildcards 'train/*/[0-3]???.jpg'
  "$BIN" shard "$WORK/cifar/train" --out "$WORK/shards" --labels folders --max-samples 5000 > /dev/null
  SHARDS="$WORK/shards/*.tar"
  echo "note: no SHARDS given; using 40k CIFAR-10 images (32 px, upscaled by the crop): decode is cheaper than ImageNet's" >&2
fi
real=(); waits=()
for i in $(seq "$RUNS"); do
  "$BIN" train --config mae_vit_base --shards "$SHARDS" --device cuda --batch-size "$BATCH" --workers "$WORKERS" \
    --steps $((STEPS + WARMUP)) --checkpoint-every 0 --picture-every 0 --out "$WORK/real$i" --quiet > /dev/null
  read -r ips wait < <(summarise "$WORK/real$i/metrics.jsonl"); real+=("$ips"); waits+=("$wait")
done

# 4. PyTorch on the same GPU, same model and batch: f32 and bf16 autocast.
torch_f32=(); torch_bf16=()
if "$PY" -c 'import torch; assert torch.cuda.is_available()' 2>/dev/null; then
  for i in $(seq "$RUNS"); do
    torch_f32+=("$("$PY" bench/train_cpu_torch.py --device cuda --preset vit_base_224 --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["images_per_second"])')")
    torch_bf16+=("$("$PY" bench/train_cpu_torch.py --device cuda --bf16 --preset vit_base_224 --batch "$BATCH" --steps "$STEPS" --warmup "$WARMUP" | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["images_per_second"])')")
  done
fi

s=$(median "${syn[@]}"); r=$(median "${real[@]}"); w=$(median "${waits[@]}")
echo "== MAE ViT-B/16, 224 px, batch $BATCH, median of $RUNS runs x $STEPS steps =="
echo "tessera bf16 synthetic (GPU alone): $s images/s  MFU $(mfu "$s" "$PEAK_F32") of f32 peak, $(mfu "$s" "$PEAK_BF16") of bf16 peak"
p=$(median "${pageable[@]}")
echo "tessera bf16 synthetic, pageable buffers: $p images/s (page-locked/pageable $(awk -v a="$s" -v b="$p" 'BEGIN {printf "%.3f", a / b}'))"
echo "tessera real pipeline ($WORKERS workers): $r images/s  data wait $(awk -v w="$w" 'BEGIN {printf "%.1f%%", 100 * w}')"
if [ ${#torch_f32[@]} -gt 0 ]; then
  tf=$(median "${torch_f32[@]}"); tb=$(median "${torch_bf16[@]}")
  echo "pytorch f32:  $tf images/s  MFU $(mfu "$tf" "$PEAK_F32") of f32 peak; tessera/pytorch $(awk -v a="$s" -v b="$tf" 'BEGIN {printf "%.2f", a / b}')"
  echo "pytorch bf16: $tb images/s  MFU $(mfu "$tb" "$PEAK_BF16") of bf16 peak; tessera/pytorch $(awk -v a="$s" -v b="$tb" 'BEGIN {printf "%.2f", a / b}')"
fi
echo "work dir: $WORK"
