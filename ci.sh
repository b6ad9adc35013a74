#!/usr/bin/env bash
# Runs every check and test corelog has. This is the README's test command and what
# .ci/run calls. It installs what the tests need on a fresh machine.
set -euo pipefail
cd "$(dirname "$0")"
export CARGO_TERM_COLOR=never

step() { printf '\n==> %s\n' "$*"; }

step "toolchain components"
rustup component add rustfmt clippy >/dev/null 2>&1 || true


step "interop clients (kcat, librdkafka's CLI), the openssl CLI (test certificates), OpenSSL's headers (rdkafka links the system's)"
if ! command -v kcat >/dev/null 2>&1 || ! command -v openssl >/dev/null 2>&1 \
  || ! command -v pkg-config >/dev/null 2>&1 || ! pkg-config --exists openssl; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq kcat openssl libssl-dev pkg-config >/dev/null
fi
kcat -V | head -1
openssl version

step "interop clients (Python: confluent-kafka, kafka-python, duckdb, moto S3 server into target/py)"
if [ ! -x target/py/bin/python ] || ! target/py/bin/python -c "import confluent_kafka, kafka, duckdb, moto, boto3" 2>/dev/null; then
  python3 -m venv target/py
  target/py/bin/pip install -q --disable-pip-version-check confluent-kafka==2.16.1 kafka-python==2.3.3 duckdb==1.4.2 'moto[server]==5.2.5'
fi
target/py/bin/python -c "import confluent_kafka, kafka, duckdb, moto; print('confluent-kafka', confluent_kafka.version()[0], 'librdkafka', confluent_kafka.libversion()[0], 'kafka-python', kafka.__version__, 'duckdb', duckdb.__version__, 'moto', moto.__version__)"

step "module cycles (none in any crate; ARCHITECTURE.md names the layers)"
if [ -f ../shared/tools/module_cycles.py ]; then
  for crate in engine lander batch query security sim tools benches; do python3 ../shared/tools/module_cycles.py "$crate/src"; done
else
  echo "../shared/tools/module_cycles.py not on this machine: skipped"
fi

step "cargo fmt --check"
cargo fmt --all -- --check

# Clippy runs in the release profile, like the tests: build scripts, proc macros and the
# C libraries behind the -sys crates (librdkafka, zstd, lz4, mimalloc) are then built
# once for both steps instead of once per profile.
step "cargo clippy --release --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --release -- -D warnings

step "tests (release build; the crash tests kill real processes)"
if command -v cargo-nextest >/dev/null 2>&1; then
  cargo nextest run --workspace --release --no-fail-fast
else
  cargo test --workspace --release --no-fail-fast
fi

# The simulator: the real partition log against a faulty simulated disk, seed after
# seed for about a minute (SIM_SECONDS for longer runs), zero failures; then each
# planted bug must be caught, or the simulator proves nothing. See docs/SIMULATION.md.
step "simulator (corelog-sim: seeds for ${SIM_SECONDS:-60} s, then every plant caught)"
cargo run -q --release -p sim --bin corelog-sim -- --seconds "${SIM_SECONDS:-60}"
cargo run -q --release -p sim --bin corelog-sim -- --check-plants

step "loom models (--cfg loom, own target dir)"
LOOM_MAX_PREEMPTIONS="${LOOM_MAX_PREEMPTIONS:-3}" RUSTFLAGS="--cfg loom" \
  CARGO_TARGET_DIR=target/loom cargo test -p loom-tests --release
