#!/usr/bin/env bash
# Fuzz the parsers of untrusted bytes (issue 14): build the cargo-fuzz targets in fuzz/,
# seed their corpora from ../shared/testdata, and run each one for a while.
#
#   scripts/fuzz-smoke.sh                  # CI smoke: every parser target 20 s
#   scripts/fuzz-smoke.sh --seconds 3600 decode tar_reader   # long runs of some targets
#   scripts/fuzz-smoke.sh --seconds 600 checkpoint+plain     # checkpoint loading (burn build)
#
# Targets (fuzz/fuzz_targets/): tar_reader, tar_roundtrip, shard_index, shard_pattern,
# recipe, decode (both JPEG decoders on every input: libjpeg-turbo, crop-aware and
# DCT-scaled, where nasm is installed, and the pure-Rust zune-jpeg), and checkpoint loading
# (resuming from a checkpoint with one file replaced). The parser targets share one
# instrumented build; the CI smoke runs them. The checkpoint target builds burn and the
# trainer (`--features trainer`): under AddressSanitizer that takes 43 minutes on 2 cores,
# `checkpoint+plain` (the same target built with coverage but no sanitizer and no debug
# assertions except in Tessera's own crates, fuzz/Cargo.toml, in fuzz/target-plain) 10;
# either is named to run it (long runs, docs/RELIABILITY.md), and neither is in the CI
# smoke, whose time they would double (`cargo test` covers damaged checkpoints with a
# property test instead). Each run: one target at a time, -rss_limit_mb=2048 (an
# out-of-memory is a failure), -timeout=10 (a hang is a failure).
# A failure leaves the input in fuzz/artifacts/TARGET/ and exits non-zero; reproduce with
# `cargo +nightly fuzz run TARGET fuzz/artifacts/TARGET/crash-...` (add `--features trainer`
# for checkpoint, and `-O --sanitizer none` for checkpoint+plain). Corpora grow in
# fuzz/corpus/ (git-ignored) and are reused by later runs. Needs a nightly toolchain and
# cargo-fuzz (installed here if missing). Results of long runs: docs/RELIABILITY.md.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=20
targets=()
while [ $# -gt 0 ]; do
  case "$1" in
    --seconds) seconds="$2"; shift 2 ;;
    -h|--help) sed -n 2,25p "$0"; exit 0 ;;
    -*) echo "usage: scripts/fuzz-smoke.sh [--seconds N] [TARGET...]" >&2; exit 2 ;;
    *) targets+=("$1"); shift ;;
  esac
done
all=(tar_reader tar_roundtrip shard_index shard_pattern recipe decode)
if [ ${#targets[@]} -eq 0 ]; then targets=("${all[@]}"); fi

testdata=../shared/testdata
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
  echo "fuzz-smoke: a nightly toolchain is needed (rustup toolchain install nightly)" >&2
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "==> installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

# Seeds: real files from the shared test data (small ones: a big seed slows every run).
seed() { # seed TARGET FILE [PREFIX-BYTE]
  local dir="fuzz/corpus/$1" name
  mkdir -p "$dir"
  name="seed-${3:-x}-$(basename "$2")"
  [ -e "$dir/$name" ] && return 0
  if [ -n "${3:-}" ]; then
    { printf "\\x$3"; cat "$2"; } > "$dir/$name"
  else
    cp "$2" "$dir/$name"
  fi
}
small() { find "$@" -maxdepth 1 -type f -size -1100k 2>/dev/null | sort; }
if [ -d "$testdata" ]; then
  for f in $(small "$testdata/hostile/shards" "$testdata/wds-reference" | grep -E '\.(tar|tgz|gz)$'); do
    # tar_reader's first byte: 00 as is, 01 gzip it, 02 zstd it.
    for mode in 00 01 02; do seed tar_reader "$f" "$mode"; done
  done
  for f in $(small "$testdata/hostile/files" "$testdata/photos" | grep -vE '\.json$'); do
    seed decode "$f"
  done
else
  echo "fuzz-smoke: $testdata not found: corpora start without real seeds" >&2
fi
for f in configs/*.toml; do seed recipe "$f"; done
mkdir -p fuzz/corpus/shard_index
printf '%s\n' '{"format":"tessera-shard-index","version":1,"kind":"zstd-frames","compression":"zstd","shard_bytes":1234,"tar_bytes":20480,"samples":2}' \
  '{"key":"img000","offset":0,"len":10240,"raw_offset":0}' '{"key":"img001","offset":10240,"len":9216,"raw_offset":611}' \
  > fuzz/corpus/shard_index/seed-zstd-frames
printf '%s\n' '{"format":"tessera-shard-index","version":1,"kind":"tar","compression":"tar","shard_bytes":9216,"tar_bytes":8192,"samples":2}' \
  '{"key":"s/0000","offset":0,"len":1536}' '{"key":"s/0001","offset":1536,"len":2048}' \
  > fuzz/corpus/shard_index/seed-tar
printf '%s\n' '{"format":"tessera-shard-index","version":1,"kind":"stream","compression":"gzip","shard_bytes":100,"tar_bytes":3072,"samples":1}' \
  '{"key":"s/0000","offset":1536,"len":1536}' > fuzz/corpus/shard_index/seed-stream

flags=(-rss_limit_mb=2048 -timeout=10 -max_total_time="$seconds" -print_final_stats=1)
for t in "${targets[@]}"; do
  features=()
  case "$t" in
    checkpoint) name=checkpoint; features=(--features trainer) ;;
    checkpoint+plain) name=checkpoint
      features=(--features trainer -O --sanitizer none --target-dir "$PWD/fuzz/target-plain") ;;
    *) name="$t" ;;
  esac
  echo "==> fuzz $t for ${seconds}s"
  start=$(date +%s)
  set +e
  # Absolute corpus path: shard_pattern changes its working directory. Targets without
  # seeds start from an empty corpus (libFuzzer refuses a missing directory).
  mkdir -p "fuzz/corpus/$name"
  if [ "$name" = checkpoint ]; then
    # Seeds are a tiny MAE's checkpoint files, written by the target itself (no inputs run).
    CHECKPOINT_FUZZ_SEEDS="$PWD/fuzz/corpus/$name" env -u TESSERA_JPEG cargo +nightly fuzz run \
      "${features[@]}" "$name" "$PWD/fuzz/corpus/$name" -- -runs=0 > "fuzz/last-$t.log" 2>&1
  fi
  env -u TESSERA_JPEG cargo +nightly fuzz run "${features[@]}" "$name" "$PWD/fuzz/corpus/$name" -- "${flags[@]}" > "fuzz/last-$t.log" 2>&1
  status=$?
  set -e
  grep -E '^(#[0-9]+ +DONE|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY)' "fuzz/last-$t.log" || true
  echo "    $t: exit $status, $(( $(date +%s) - start ))s with build (log: fuzz/last-$t.log)"
  if [ "$status" != 0 ]; then
    tail -40 "fuzz/last-$t.log" >&2
    exit "$status"
  fi
done
