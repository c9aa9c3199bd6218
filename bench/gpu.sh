#!/usr/bin/env bash
# Training on one NVIDIA GPU (H100/H200 class) against PyTorch on the same GPU:
#   - MAE ViT-B/16 at 224 (`mae_vit_base`, batch 256): the device alone (synthetic batches),
#     the same with pageable batch buffers, fed by the real pipeline (data-wait fraction),
#     model-FLOPs utilisation; PyTorch f32 and bf16 autocast (bench/train_cpu_torch.py).
#   - DINO ViT-S/16 with 2 x 224 + 10 x 96 crops (`dino_vit_small`, batch 64 per GPU as the
#     paper): synthetic and fed by the real pipeline; PyTorch bf16 (bench/train_torch_dino.py);
#     the pipeline alone on the machine's cores (`tessera profile`): can it feed that rate?
# Run on the GPU machine from the repository root:
#
#   bench/gpu.sh                                   # builds with cargo, 3 rounds
#   TESSERA_BIN=path/to/tessera-cuda PY=python3 SHARDS='dir/*.tar' bench/gpu.sh
#
# A GPU machine without a package registry gets a binary built elsewhere (TESSERA_BIN;
# `CUDARC_CUDA_VERSION=13000 cargo build --release --features cuda`, stripped). Device time is
# scarce, so the script runs in rounds (each benchmark once per round, RUNS rounds) and stops
# starting runs after DEADLINE seconds: whatever finished is summarised (median over the
# rounds that ran). Every run appends one JSON line to RESULTS as it ends.
#
# Precision: both recipes train with `precision = "bf16"` (bf16 matmuls over f32 master
# weights, gradients and AdamW state: trainer/src/precision.rs).
set -uo pipefail
cd "$(dirname "$0")/.."

RUNS=${RUNS:-3}
DEADLINE=${DEADLINE:-100000}     # seconds after which no new run starts
RUN_TIMEOUT=${RUN_TIMEOUT:-240}  # seconds one run may take
MAE_BATCH=${MAE_BATCH:-256}
DINO_BATCH=${DINO_BATCH:-64}
STEPS=${STEPS:-20}
WARMUP=${WARMUP:-5}
WORKERS=${WORKERS:-$(( $(nproc) > 3 ? $(nproc) - 2 : 1 ))}
PY=${PY:-bench/.venv/bin/python}
WORK=${WORK:-$(mktemp -d)}
RESULTS=${RESULTS:-$WORK/results.jsonl}
# Which benchmarks each round runs, in this order (the most wanted first).
BENCHES=${BENCHES:-mae_synthetic torch_mae_bf16 dino_synthetic torch_dino_bf16 dino_real dino_pipeline mae_real torch_mae_f32 mae_pageable}
# Dense peaks of an H200/H100 SXM (TFLOP/s): bf16 tensor cores, plain f32.
PEAK_BF16=${PEAK_BF16:-989}
PEAK_F32=${PEAK_F32:-67}
START=$SECONDS
mkdir -p "$WORK" && touch "$RESULTS" || exit 1

# 1. The binary, and what it needs at run time: the driver (loaded by cudarc), NVRTC (kernels
# are compiled at run time) and CUDA's headers (cubecl-cuda includes them; CUDA_PATH).
export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
if [ -n "${TESSERA_BIN:-}" ]; then
  BIN=$TESSERA_BIN
else
  cargo build --release --features cuda || exit 1
  BIN=target/release/tessera-cuda
  cp target/release/tessera "$BIN" && strip "$BIN"
fi
# PyTorch's CUDA wheels (nvidia/*/) hold NVRTC and the headers where no toolkit is installed.
NVIDIA_WHEELS=$("$PY" -c 'import nvidia, os; [print(os.path.join(p, s)) for p in nvidia.__path__ for s in os.listdir(p)]' 2>/dev/null)
if [ -z "${CUDA_PATH:-}" ]; then
  for d in /usr/local/cuda /opt/cuda $(dirname "$(dirname "$(command -v nvcc 2>/dev/null || echo /x/x)")") $NVIDIA_WHEELS; do
    if [ -f "$d/include/cuda_runtime.h" ]; then export CUDA_PATH=$d; break; fi
  done
fi
for d in "${CUDA_PATH:-/usr/local/cuda}/lib64" $(for w in $NVIDIA_WHEELS; do echo "$w/lib"; done); do
  if ls "$d"/libnvrtc.so* > /dev/null 2>&1; then export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; break; fi
done
echo "binary: $(ls -l "$BIN")" >&2
echo "CUDA_PATH=${CUDA_PATH:-unset} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-}" >&2
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader >&2
echo "cores: $(nproc), pipeline workers: $WORKERS" >&2

# FLOPs of one image through MAE ViT-B/16 (forward), multiply-add = 2 FLOPs: encoder on the
# 49 visible patches + class token, decoder on all 196 + class token.
MAE_FLOPS=$("$PY" - <<'PY'
def blocks(n, d, depth, mlp=4):
    return depth * (2 * n * d * 3 * d + 4 * n * n * d + 2 * n * d * d + 2 * n * d * mlp * d * 2)
L, K, P, D, DD = 196, 49, 16, 768, 512
f = 2 * L * (3 * P * P) * D + blocks(K + 1, D, 12) + 2 * (K + 1) * D * DD
f += blocks(L + 1, DD, 8) + 2 * (L + 1) * DD * (P * P * 3)
print(f)
PY
)

# 2. Shards for the real pipeline: ImageNet-like JPEGs when none are given.
if [ -z "${SHARDS:-}" ]; then
  "$PY" bench/make_pipeline_shards.py "$WORK/shards" --samples 512 --shards 4 >&2
  SHARDS="$WORK/shards/*.tar"
fi

# One run of tessera: NAME ROUND ARGS...; appends its summary line to RESULTS.
tessera_run() {
  local name=$1 round=$2; shift 2
  local dir="$WORK/$name-$round" t0=$SECONDS
  timeout -k 10 "$RUN_TIMEOUT" "$BIN" train "$@" --device cuda --steps $((STEPS + WARMUP)) \
    --checkpoint-every 0 --picture-every 0 --out "$dir" --quiet > "$dir.stdout" 2> "$dir.stderr"
  local rc=$?
  "$PY" - "$dir/metrics.jsonl" "$WARMUP" "$name" "$round" "$rc" $((SECONDS - t0)) >> "$RESULTS" <<'PY'
import json, os, statistics, sys
path, warmup, name, rnd, rc, wall = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
rows = [json.loads(l) for l in open(path)] if os.path.exists(path) else []
timed = rows[warmup:]
out = {"bench": name, "round": rnd, "rc": rc, "wall_s": wall, "steps": len(rows)}
if timed:
    out["images_per_second"] = statistics.median(r["images_per_second"] for r in timed)
    out["data_wait_fraction"] = sum(r["data_wait_fraction"] for r in timed) / len(timed)
    out["first_loss"], out["last_loss"] = rows[0]["loss"], rows[-1]["loss"]
if rows:
    out["first_step_s"] = rows[0]["step_seconds"]
print(json.dumps(out))
PY
  if [ "$rc" -ne 0 ]; then echo "== $name round $round exited $rc; stderr tail:" >&2; tail -5 "$dir.stderr" >&2; fi
  tail -1 "$RESULTS" >&2
}

# One run of a PyTorch peer: NAME ROUND SCRIPT ARGS...
torch_run() {
  local name=$1 round=$2 script=$3; shift 3
  local line
  line=$(timeout -k 10 "$RUN_TIMEOUT" "$PY" "$script" --device cuda --steps "$STEPS" --warmup "$WARMUP" "$@" 2> "$WORK/$name-$round.stderr" | tail -1)
  if [ -n "$line" ]; then
    echo "$line" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); d.update(bench=sys.argv[1], round=int(sys.argv[2])); print(json.dumps(d))' "$name" "$round" >> "$RESULTS"
    tail -1 "$RESULTS" >&2
  else
    echo "== $name round $round failed:" >&2; tail -5 "$WORK/$name-$round.stderr" >&2
  fi
}

# One run of `tessera profile` (the pipeline alone, no device): NAME ROUND ARGS...
pipeline_run() {
  local name=$1 round=$2; shift 2
  timeout -k 10 "$RUN_TIMEOUT" "$BIN" profile "$@" --shards "$SHARDS" --workers "$WORKERS" --seconds 20 --json \
    2> "$WORK/$name-$round.stderr" | "$PY" -c 'import json,sys; d=json.load(sys.stdin); print(json.dumps({"bench": sys.argv[1], "round": int(sys.argv[2]), "images_per_second": d["images_per_second"], "cpu_ms_per_image": d["cpu_ms_per_image"], "jpeg_decoder": d["jpeg_decoder"]}))' "$name" "$round" >> "$RESULTS" \
    || { echo "== $name round $round failed:" >&2; tail -5 "$WORK/$name-$round.stderr" >&2; }
  tail -1 "$RESULTS" >&2
}

late() { [ $((SECONDS - START)) -ge "$DEADLINE" ]; }

for round in $(seq "$RUNS"); do
  for bench in $BENCHES; do
    late && break 2
    case $bench in
      mae_synthetic) tessera_run "$bench" "$round" --config mae_vit_base --synthetic --batch-size "$MAE_BATCH" ;;
      # What page-locking the pipeline's pool (trainer/src/pinned.rs) buys; the synthetic
      # batches are seeded, so the losses must equal the pinned run's.
      mae_pageable) tessera_run "$bench" "$round" --config mae_vit_base --synthetic --batch-size "$MAE_BATCH" --pageable-buffers ;;
      mae_real) tessera_run "$bench" "$round" --config mae_vit_base --shards "$SHARDS" --batch-size "$MAE_BATCH" --workers "$WORKERS" ;;
      dino_synthetic) tessera_run "$bench" "$round" --config dino_vit_small --synthetic --batch-size "$DINO_BATCH" ;;
      dino_real) tessera_run "$bench" "$round" --config dino_vit_small --shards "$SHARDS" --batch-size "$DINO_BATCH" --workers "$WORKERS" ;;
      # The pipeline alone on this machine's cores: can it feed DINO at PyTorch's rate?
      dino_pipeline) pipeline_run "$bench" "$round" --recipe dino_vit_small --batch-size "$DINO_BATCH" ;;
      torch_mae_bf16) torch_run "$bench" "$round" bench/train_cpu_torch.py --preset vit_base_224 --batch "$MAE_BATCH" --bf16 ;;
      torch_mae_f32) torch_run "$bench" "$round" bench/train_cpu_torch.py --preset vit_base_224 --batch "$MAE_BATCH" ;;
      torch_dino_bf16) torch_run "$bench" "$round" bench/train_torch_dino.py --batch "$DINO_BATCH" --bf16 ;;
      *) echo "unknown benchmark $bench" >&2; exit 2 ;;
    esac
  done
done

# 3. Summary: medians over the rounds that ran, MFU for MAE, ratios to PyTorch.
"$PY" - "$RESULTS" "$MAE_FLOPS" "$PEAK_BF16" "$PEAK_F32" "$MAE_BATCH" "$DINO_BATCH" "$WORKERS" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
flops, peak_bf16, peak_f32 = float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
by = {}
for r in rows:
    if "images_per_second" in r:
        by.setdefault(r["bench"], []).append(r)
def med(name, key="images_per_second"):
    rs = by.get(name, [])
    return (statistics.median(r[key] for r in rs), len(rs)) if rs else (None, 0)
print(f"== MAE ViT-B/16 224 px, batch {sys.argv[5]}; DINO ViT-S/16 2x224 + 10x96, batch {sys.argv[6]}; {sys.argv[7]} pipeline workers ==")
for name in ["mae_synthetic", "mae_pageable", "mae_real", "torch_mae_f32", "torch_mae_bf16",
             "dino_synthetic", "dino_real", "torch_dino_bf16", "dino_pipeline"]:
    ips, n = med(name)
    if ips is None:
        print(f"{name:16} no result"); continue
    line = f"{name:16} {ips:9.1f} images/s (median of {n})"
    if name.startswith(("mae", "torch_mae")):
        line += f"  MFU {100 * ips * 3 * flops / (peak_bf16 * 1e12):.1f}% of bf16 peak, {100 * ips * 3 * flops / (peak_f32 * 1e12):.1f}% of f32 peak"
    if name.endswith("real"):
        line += f"  data wait {100 * med(name, 'data_wait_fraction')[0]:.1f}%"
    print(line)
for a, b in [("mae_synthetic", "torch_mae_bf16"), ("mae_synthetic", "torch_mae_f32"), ("dino_synthetic", "torch_dino_bf16"), ("mae_synthetic", "mae_pageable")]:
    x, y = med(a)[0], med(b)[0]
    if x and y:
        print(f"{a} / {b}: {x / y:.2f}")
p, s = by.get("mae_pageable"), by.get("mae_synthetic")
if p and s:
    d = abs(p[0]["last_loss"] - s[0]["last_loss"]) / max(abs(s[0]["last_loss"]), 1e-12)
    print(f"pinned vs pageable last loss, round 1: relative difference {d:.2e}", "(same bytes)" if d < 1e-3 else "MISMATCH")
PY
echo "results: $RESULTS; work dir: $WORK" >&2
