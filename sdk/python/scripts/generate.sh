#!/usr/bin/env bash
# Generates the Python SDK's protobuf and gRPC modules (src/palisade/v1/) from every
# proto/palisade/v1/*.proto, with the pinned generator in scripts/generator-requirements.txt
# installed into a throwaway venv: messages (--python_out), their stubs (--pyi_out), services
# (--grpc_python_out) and typed service stubs (mypy-protobuf's --mypy_grpc_out). Imports
# between the generated modules are made relative so they resolve inside our package.
#
#   sdk/python/scripts/generate.sh           rewrite src/palisade/v1/
#   sdk/python/scripts/generate.sh --check   regenerate into a temporary directory and fail
#                                            with a diff if the committed code differs, or if
#                                            pyproject.toml's floors do not match it
#
# PYTHON picks the interpreter for the venv (default python3, 3.11 or newer).
set -euo pipefail

sdk=$(cd "$(dirname "$0")/.." && pwd)
root=$(cd "$sdk/../.." && pwd)
committed=$sdk/src/palisade/v1
python=${PYTHON:-python3}

case ${1:-} in
  '') check=0 ;;
  --check) check=1 ;;
  *) echo "usage: $0 [--check]" >&2; exit 2 ;;
esac

work=$(mktemp -d "${TMPDIR:-/tmp}/palisade-py-gen.XXXXXX")
trap 'rm -rf "$work"' EXIT

"$python" -m venv "$work/venv"
"$work/venv/bin/pip" install --quiet --disable-pip-version-check --no-input \
  --requirement "$sdk/scripts/generator-requirements.txt"

# Sorted, relative names: protoc records the name it was given in each descriptor, and the
# order of files must not depend on the directory listing.
mapfile -t protos < <(cd "$root/proto" && LC_ALL=C ls palisade/v1/*.proto | LC_ALL=C sort)
[[ ${#protos[@]} -gt 0 ]] || { echo "generate: no .proto files under $root/proto/palisade/v1" >&2; exit 1; }

gen=$work/gen
mkdir -p "$gen"
# The well-known types (google/protobuf/timestamp.proto) ship inside grpcio-tools.
wkt=$("$work/venv/bin/python" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
(cd "$root/proto" && "$work/venv/bin/python" -m grpc_tools.protoc \
  --proto_path=. --proto_path="$wkt" \
  --python_out="$gen" --pyi_out="$gen" \
  --grpc_python_out="$gen" \
  --plugin=protoc-gen-mypy_grpc="$work/venv/bin/protoc-gen-mypy_grpc" --mypy_grpc_out="$gen" \
  "${protos[@]}") >"$work/protoc.log" 2>&1 || { cat "$work/protoc.log" >&2; exit 1; }

cat >"$gen/palisade/v1/__init__.py" <<'EOF'
"""Palisade API v1, generated from proto/palisade/v1/*.proto by sdk/python/scripts/generate.sh.

Do not edit: every file in this package is regenerated. Import the modules directly, e.g.
`from palisade.v1 import policy_pb2, policy_pb2_grpc`.
"""
EOF
"$work/venv/bin/python" "$sdk/scripts/postprocess.py" relativize "$gen"
status=0
if [[ $check -eq 1 ]]; then
  # Relative names, so the diff reads committed/... against generated/...
  ln -s "$committed" "$work/committed"
  ln -s "$gen/palisade/v1" "$work/generated"
  if ! (cd "$work" && diff -ru --exclude=__pycache__ committed/ generated/) >"$work/drift.diff"; then
    cat "$work/drift.diff"
    echo "generate: src/palisade/v1/ is not what proto/palisade/v1/*.proto generates; run sdk/python/scripts/generate.sh and commit the result" >&2
    status=1
  else
    echo "generate: src/palisade/v1/ matches the ${#protos[@]} protos" >&2
  fi
else
  rm -rf "$committed"
  cp -r "$gen/palisade/v1" "$committed"
  echo "generate: wrote $(find "$committed" -type f | wc -l) files from ${#protos[@]} protos into ${committed#"$root"/}" >&2
fi
# After writing, so a generator bump shows its code and then says which floors to raise.
"$work/venv/bin/python" "$sdk/scripts/postprocess.py" floors "$sdk/pyproject.toml" "$gen" || status=1
exit $status
