#!/usr/bin/env bash
# The Python SDK's tests (sdk/python): the drift check of the generated code, then, in fresh
# venvs, sdk/python installed as a user gets it (not editable: the tests import what pip
# installed), ruff and mypy --strict over the SDK and its tests, and pytest against the real
# palisade-server and palisade-agent binaries — once with the newest dependencies pip picks and
# once with every dependency at the floor pyproject.toml declares.
#
# Run after `cargo build` (scripts/test.sh does): the binaries come from target/debug, or
# PALISADE_BIN_DIR. As root the kernel test runs (agent, cgroup, a denied connect); without
# root it is skipped with a message, and under CI=true it fails instead.
# PostgreSQL: $DATABASE_URL if it answers, else scripts/ensure-postgres.sh finds or starts one.
# PYTHON picks the interpreter (default python3, 3.11 or newer for the generator).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
python=${PYTHON:-python3}
export PALISADE_BIN_DIR=${PALISADE_BIN_DIR:-$root/target/debug}
pip_install=(--quiet --disable-pip-version-check --no-input)
# The test tools, pinned so a run is repeatable; they are not the SDK's dependencies.
test_tools=(pytest==9.2.0 mypy==2.4.1 types-protobuf==7.35.1.20260906 types-grpcio==1.85.0.20261028 ruff==0.17.6)

say() { printf 'python-sdk-test: %s\n' "$*" >&2; }

for binary in palisade-server palisade-agent; do
  if [[ ! -x $PALISADE_BIN_DIR/$binary ]]; then
    say "$PALISADE_BIN_DIR/$binary is missing: run cargo build first (or set PALISADE_BIN_DIR)"
    exit 1
  fi
done
DATABASE_URL=$(scripts/ensure-postgres.sh)
export DATABASE_URL

say "generated code against proto/palisade/v1/*.proto (sdk/python/scripts/generate.sh --check)"
sdk/python/scripts/generate.sh --check

# pytest in a venv: its own working directory, so nothing but the installed package and the
# tests directory is importable.
run_suite() {
  local venv=$1
  (cd sdk/python && "$venv/bin/python" -I -B -m pytest -p no:cacheprovider -ra --durations=5 tests)
}

venv=$root/.palisade/py-sdk-venv
say "fresh venv $venv: sdk/python with the newest dependencies"
rm -rf "$venv"
"$python" -m venv "$venv"
"$venv/bin/pip" install "${pip_install[@]}" ./sdk/python "${test_tools[@]}"
"$venv/bin/pip" list --disable-pip-version-check 2>/dev/null | grep -Ei '^(palisade|grpcio|protobuf|googleapis-common-protos) ' >&2

say "ruff format --check, ruff check, mypy --strict (sdk/python/pyproject.toml)"
(
  cd sdk/python
  "$venv/bin/ruff" format --check --no-cache .
  "$venv/bin/ruff" check --no-cache .
  "$venv/bin/mypy" --cache-dir "$venv/mypy-cache"
)

say "pytest, newest dependencies"
run_suite "$venv"

floors=$root/.palisade/py-sdk-venv-floors
say "fresh venv $floors: sdk/python with every dependency at its declared floor"
rm -rf "$floors"
"$python" -m venv "$floors"
"$floors/bin/python" - sdk/python/pyproject.toml >"$floors/floors.txt" <<'EOF'
import re, sys, tomllib
for dep in tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]:
    name, floor = re.fullmatch(r"([A-Za-z0-9._-]+)\s*>=\s*([0-9.]+).*", dep).groups()
    print(f"{name}=={floor}")
EOF
"$floors/bin/pip" install "${pip_install[@]}" --constraint "$floors/floors.txt" ./sdk/python pytest==9.2.0
"$floors/bin/pip" list --disable-pip-version-check 2>/dev/null | grep -Ei '^(grpcio|protobuf|googleapis-common-protos) ' >&2

say "pytest, dependencies at their floors"
run_suite "$floors"
