#!/usr/bin/env bash
# Soak (issue 14): run the input pipeline for a long time and sample its resident memory
# (VmRSS, every 5 s) to show it stays flat. Two runs, one after the other:
#
#   slow-consumer  `tessera profile --throttle`: a consumer slower than the pipeline, so
#                  backpressure stalls every stage (queues full, pools exhausted) for the
#                  whole run; over the reference shards (epochs repeat).
#   hostile        as fast as it goes over ../shared/testdata/hostile/shards/hostile-files.tar
#                  (truncated, bomb, CMYK, arithmetic, zero-byte, HTML-as-JPEG samples...):
#                  every epoch rejects the same bad samples again.
#
#   scripts/soak.sh                 # 600 s each
#   scripts/soak.sh --seconds 120   # shorter
#
# Prints, per run: RSS at the end of the first minute (after warm-up), the last sample, the
# maximum, and the peaks of the two halves of the run after the first minute; fails when the
# second half's peak is over the first half's by more than 10% + 16 MiB (peaks, not single
# samples: RSS swings with the images in flight). Raw samples: target/soak-RUN.csv.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=600
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    *) echo "usage: scripts/soak.sh [--seconds N]" >&2; exit 2 ;;
  esac
done
testdata=../shared/testdata
target="${CARGO_TARGET_DIR:-target}"
echo "==> cargo build --release --no-default-features (data-only tessera)"
cargo build --release --no-default-features --quiet
tessera="$target/release/tessera"
mkdir -p "$target"

soak() { # soak NAME ARGS...
  local name="$1"; shift
  local csv="$target/soak-$name.csv"
  echo "==> $name: tessera profile $* --seconds $seconds"
  "$tessera" profile "$@" --seconds "$seconds" --json > "$target/soak-$name.json" 2> "$target/soak-$name.log" &
  local pid=$! start
  start=$(date +%s)
  echo "seconds,rss_mib" > "$csv"
  while kill -0 "$pid" 2>/dev/null; do
    rss=$(awk '/^VmRSS:/ {printf "%.1f", $2 / 1024}' "/proc/$pid/status" 2>/dev/null || true)
    [ -n "$rss" ] && echo "$(( $(date +%s) - start )),$rss" >> "$csv"
    sleep 5
  done
  wait "$pid" || { echo "$name: tessera profile failed:"; tail -20 "$target/soak-$name.log"; return 1; }
  python3 - "$csv" "$target/soak-$name.json" "$name" <<'PY'
import csv, json, sys
rows = [(int(r["seconds"]), float(r["rss_mib"])) for r in csv.DictReader(open(sys.argv[1]))]
report = json.load(open(sys.argv[2]))
warm = [m for s, m in rows if s >= 60] or [m for _, m in rows]
# RSS swings with the images in flight (a hostile shard's large ones come and go), so the
# check compares peaks: the second half of the run after warm-up against the first half.
half = len(warm) // 2
early, late = max(warm[:half] or warm), max(warm[half:])
last, peak = rows[-1][1], max(m for _, m in rows)
print(f"    {sys.argv[3]}: {len(rows)} samples over {rows[-1][0]} s; RSS at 60 s {warm[0]:.1f} MiB, "
      f"end {last:.1f} MiB, max {peak:.1f} MiB; peak of the first half after 60 s {early:.1f} MiB, "
      f"of the second half {late:.1f} MiB ({late - early:+.1f}); "
      f"{report['images']} images in {report['batches']} batches, "
      f"{report['rejected']['total']} rejected, bottleneck {report['bottleneck']['stage']}")
if late > early * 1.10 + 16:
    sys.exit(f"{sys.argv[3]}: RSS peaks grew from {early:.1f} to {late:.1f} MiB")
PY
}

soak slow-consumer --recipe mae --shards "$testdata/reference-shards/ref-{000000..000001}.tar" \
  --batch-size 16 --workers 2 --throttle 400
soak hostile --recipe simclr --shards "$testdata/hostile/shards/hostile-files.tar" \
  --batch-size 8 --workers 2
