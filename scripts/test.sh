#!/usr/bin/env bash
# The project's one test command (README, CI): sets up what the tests need, then runs them.
#
# - `.tools/s3s-fs`: the S3-compatible server of the remote tests (built once).
# - `.venv/`: a local Python with the reference WebDataset reader, used as a test oracle
#   (made once; re-made when scripts/test-requirements.txt changes).
# - `cargo test --release`: every crate and the end-to-end tests through `tessera`, in the
#   same optimised profile as the program, so burn compiles once.
# - JPEGs decode with libjpeg-turbo by default where `nasm` is installed (pipeline/build.rs),
#   else with the pure-Rust zune-jpeg. When the default is libjpeg-turbo, the pipeline's
#   test binaries run a second time on the pure-Rust path (`TESSERA_JPEG=zune` at run time:
#   the same binaries, no rebuild). With `--libjpeg-turbo` (CI), a missing nasm is an error
#   instead of a skipped path.
# - With `--cuda-check` (CI), also proves that the `cuda` feature and the data-only build
#   (`--no-default-features`: shard, profile, preview without burn) compile, without a GPU
#   (`cargo check`: type-checks everything; no second optimised build of burn).
# - With `--fuzz-smoke` (CI), last, runs every parser fuzz target briefly (scripts/fuzz-smoke.sh:
#   nightly toolchain and cargo-fuzz, installed if missing; its own instrumented build).
# - With `--lint` (CI), first checks formatting (`cargo fmt`) and lints (`cargo clippy`,
#   warnings are errors).
set -euo pipefail
cd "$(dirname "$0")/.."

cuda_check=0
fuzz_smoke=0
lint=0
libjpeg_turbo=auto
for arg in "$@"; do
  case "$arg" in
    --cuda-check) cuda_check=1 ;;
    --fuzz-smoke) fuzz_smoke=1 ;;
    --libjpeg-turbo) libjpeg_turbo=1 ;;
    --lint) lint=1 ;;
    *) echo "usage: scripts/test.sh [--lint] [--libjpeg-turbo] [--cuda-check] [--fuzz-smoke]" >&2; exit 2 ;;
  esac
done

if [ "$lint" = 1 ]; then
  echo "==> cargo fmt --check; cargo clippy --release --workspace --all-targets -D warnings"
  cargo fmt --all -- --check
  cargo clippy --release --workspace --all-targets -- -D warnings
fi

venv=.venv
stamp="$venv/.requirements.sha256"
want=$(sha256sum scripts/test-requirements.txt | cut -d' ' -f1)
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  echo "==> setting up $venv (Python test oracles)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r scripts/test-requirements.txt
  echo "$want" > "$stamp"
fi
export TESSERA_PYTHON="$PWD/$venv/bin/python"
export TESSERA_REQUIRE_PYTHON=1

# Tools for the remote-shard tests (issue 12): `s3s-fs`, an S3-compatible server the tests
# start on 127.0.0.1, built once from crates.io into .tools/ (0.14.1: the last release that
# builds with our toolchain; its own lock file pins its dependencies) and reused after.
s3s="$PWD/.tools/s3s-fs/bin/s3s-fs"
if [ ! -x "$s3s" ]; then
  echo "==> installing s3s-fs 0.14.1 into .tools/ (S3-compatible test server)"
  cargo install s3s-fs --version 0.14.1 --features binary --locked --quiet \
    --root "$PWD/.tools/s3s-fs" --target-dir "$PWD/target/tools"
fi
export TESSERA_S3S_FS="$s3s"
export TESSERA_REQUIRE_S3=1

echo "==> cargo test --release --workspace"
cargo test --release --workspace

if command -v nasm >/dev/null; then
  # The binaries `cargo test` just built, run directly: TESSERA_JPEG in cargo's environment
  # would rerun the pipeline's build script and rebuild it with zune-jpeg alone, and
  # `cargo test -p tessera-pipeline` resolves its dependencies' features differently from
  # the workspace (a rebuild of ~50 crates).
  echo "==> the pipeline's tests again with TESSERA_JPEG=zune at run time (the pure-Rust JPEG path)"
  binaries=$(cargo test --release --workspace --no-run --message-format=json 2>/dev/null | python3 -c '
import json, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["profile"]["test"] \
            and m["target"]["src_path"].startswith(sys.argv[1]):
        print(m["executable"])
' "$PWD/pipeline/")
  [ -n "$binaries" ] || { echo "no test binaries of tessera-pipeline found" >&2; exit 1; }
  for binary in $binaries; do
    echo "--> $(basename "$binary")"
    (cd pipeline && TESSERA_JPEG=zune "$binary" -q)
  done
elif [ "$libjpeg_turbo" = 1 ]; then
  echo "--libjpeg-turbo: nasm is needed to build libjpeg-turbo's SIMD kernels (apt-get install nasm)" >&2
  exit 1
else
  echo "==> nasm not installed: the tests above ran on the pure-Rust JPEG path (install nasm for libjpeg-turbo)"
fi

if [ "$cuda_check" = 1 ]; then
  echo "==> cargo check --release --features cuda; --no-default-features (compile only: no GPU needed)"
  CUDARC_CUDA_VERSION="${CUDARC_CUDA_VERSION:-13000}" cargo check --release --features cuda
  cargo check --release --no-default-features
fi

if [ "$fuzz_smoke" = 1 ]; then
  echo "==> scripts/fuzz-smoke.sh --seconds 15 (every parser fuzz target briefly)"
  scripts/fuzz-smoke.sh --seconds 15
fi
