#!/usr/bin/env bash
# Two (or more) tessera builds on the same training step, interleaved: what a change bought.
#
#   bench/train_ab.sh BEFORE_BIN AFTER_BIN                     # mae_vit_tiny_cifar, 1 thread
#   RUNS=5 THREADS=2 CONFIG=simclr_resnet18_cifar bench/train_ab.sh A B C
#
# Each round runs every binary once (so load drifts hit all of them): `tessera train --config
# CONFIG --synthetic --steps STEPS --batch-size BATCH --threads THREADS`. Per run: the median
# images/s of the steps after WARMUP, and user+sys seconds of the whole process. One line per
# run on stdout, then the medians per binary. Keep the machine otherwise idle for images/s;
# the CPU seconds say more when it is not.
set -euo pipefail

RUNS=${RUNS:-3}
THREADS=${THREADS:-1}
CONFIG=${CONFIG:-mae_vit_tiny_cifar}
STEPS=${STEPS:-16}
BATCH=${BATCH:-64}
WARMUP=${WARMUP:-3}
PY=${PY:-python3}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
[ $# -ge 2 ] || { echo "usage: $0 BIN_A BIN_B [BIN...]" >&2; exit 2; }

median() { printf '%s\n' "$@" | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
declare -A ips cpu
for round in $(seq "$RUNS"); do
  for i in $(seq $#); do
    bin=${!i}
    rm -rf "$WORK/run"
    /usr/bin/time -f '%U %S' -o "$WORK/time" "$bin" train --config "$CONFIG" --synthetic \
      --steps "$STEPS" --batch-size "$BATCH" --threads "$THREADS" --checkpoint-every 0 \
      --picture-every 1000000 --out "$WORK/run" --quiet > /dev/null 2> "$WORK/log" \
      || { cat "$WORK/log" >&2; exit 1; }
    rate=$("$PY" - "$WORK/run/metrics.jsonl" "$WARMUP" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2]):]
print(round(statistics.median(r["images_per_second"] for r in rows), 1))
PY
)
    seconds=$(tail -1 "$WORK/time" | awk '{print $1 + $2}')
    ips[$i]="${ips[$i]:-} $rate"
    cpu[$i]="${cpu[$i]:-} $seconds"
    echo "round $round  $bin  images/s $rate  cpu s $seconds"
  done
done
echo "$CONFIG, batch $BATCH, $THREADS threads, $RUNS rounds (medians):"
for i in $(seq $#); do
  # shellcheck disable=SC2086
  echo "  ${!i}: images/s $(median ${ips[$i]})  cpu s $(median ${cpu[$i]})"
done
