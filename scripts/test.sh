#!/usr/bin/env bash
# The test command: formatting, lints, and every test (unit, PostgreSQL, gRPC, CLI, the
# Python SDK, the generated API reference, the systemd units) in the order STYLE.md sets. Starts or installs PostgreSQL when none is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."

DATABASE_URL=$(scripts/ensure-postgres.sh)
export DATABASE_URL
echo "test: using $DATABASE_URL" >&2

cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test --workspace --locked --doc
# BPF-LSM needs a kernel that allows it: stock Debian 6.1 and 6.12 in qemu (root only).
if [[ $(id -u) -eq 0 ]]; then
  scripts/lsm-suite.sh
elif [[ -n ${CI:-} ]]; then
  echo "test: the BPF-LSM suite needs root, and CI runs as root" >&2
  exit 1
else
  echo "test: SKIPPED the BPF-LSM suite (needs root)" >&2
fi
# The binaries, for the checks below that run them as an operator would.
cargo build --workspace --locked --bins
# docs/api.md is generated from the proto comments; the systemd units and example
# environment files name only flags and variables the binaries have.
python3 scripts/gen-api-doc.py --check
deploy/systemd/check.sh
# The Python SDK: generated code current with the protos, then pytest in fresh venvs against
# the real server (and, as root, a real agent and a denied connect).
scripts/python-sdk-test.sh
# The capture filter language is checked against libpcap itself (tcpdump -d).
if ! command -v tcpdump >/dev/null 2>&1; then
  if [[ $(id -u) -eq 0 ]]; then
    echo "test: installing tcpdump (the capture filter differential's oracle)" >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcpdump >/dev/null 2>&1 ||
      { apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq tcpdump >/dev/null; }
  else
    echo "test: tcpdump is missing and only root can install it (apt-get install tcpdump)" >&2
  fi
fi
# Last, so the run's closing line is the full suite's summary.
if cargo nextest --version >/dev/null 2>&1; then
  cargo nextest run --workspace --locked --no-fail-fast
else
  echo "test: cargo-nextest not found, using cargo test" >&2
  cargo test --workspace --locked --no-fail-fast --lib --bins --tests
fi
