"""Post-processing of the generated code, run by generate.sh (never imported by the SDK).

relativize ROOT
    Rewrites the imports protoc writes between our own generated modules
    (`from palisade.v1 import policy_pb2 as ...`) into relative imports, so the generated
    modules resolve inside the installed `palisade` package whatever else is on sys.path.
    Fails if any absolute `palisade` import survives.

floors PYPROJECT ROOT
    Checks that pyproject.toml's runtime floors are what the generated code demands: grpcio
    refuses `*_pb2_grpc.py` made by a newer grpcio-tools (GRPC_GENERATED_VERSION), and the
    protobuf runtime must be at least the gencode version and of the same major.
"""

from __future__ import annotations

import functools
import re
import sys
from pathlib import Path

import tomllib

# Both protoc's `from palisade.v1 import x_pb2 as alias` and mypy-protobuf's `.pyi` spelling.
FROM_IMPORT = re.compile(r"^from (palisade(?:\.\w+)*) import (\w+)( as \w+)?$", re.MULTILINE)
ANY_ABSOLUTE = re.compile(r"^\s*(?:from|import)\s+palisade\b", re.MULTILINE)
GRPC_VERSION = re.compile(r"^GRPC_GENERATED_VERSION = '([0-9.]+)'$", re.MULTILINE)
PROTOBUF_VERSION = re.compile(r"^# Protobuf Python Version: ([0-9]+)\.([0-9]+)\.([0-9]+)$", re.MULTILINE)


def relative(current: list[str], target: list[str]) -> str:
    """The relative spelling of module `target` as seen from package `current`."""
    common = 0
    while common < min(len(current), len(target)) and current[common] == target[common]:
        common += 1
    return "." * (len(current) - common + 1) + ".".join(target[common:])


def rewrite(package: list[str], match: re.Match[str]) -> str:
    """One `from palisade... import name [as alias]` line, relative to `package`."""
    module, name, alias = match.group(1), match.group(2), match.group(3) or ""
    return f"from {relative(package, module.split('.'))} import {name}{alias}"


def relativize(out: Path) -> None:
    """Rewrites every generated module under `out` (the protoc output root)."""
    for path in sorted(out.rglob("*.py*")):
        if path.suffix not in (".py", ".pyi"):
            continue
        package = list(path.relative_to(out).parent.parts)
        text = path.read_text()
        text = FROM_IMPORT.sub(functools.partial(rewrite, package), text)
        if left := ANY_ABSOLUTE.search(text):
            sys.exit(f"postprocess: {path}: absolute import left after rewriting: {left.group(0).strip()!r}")
        path.write_text(text)


def requirement(dependencies: list[str], name: str) -> dict[str, str]:
    """The specifiers of `name` in `dependencies`, keyed by operator ({'>=': '1.2'})."""
    for dep in dependencies:
        match = re.fullmatch(rf"{re.escape(name)}\s*((?:[<>=!~]=?\s*[0-9.*]+\s*,?\s*)+)", dep.strip())
        if match:
            specs = [s.strip() for s in match.group(1).split(",") if s.strip()]
            return {re.match(r"[<>=!~]=?", s).group(0): s.lstrip("<>=!~ ") for s in specs}
    return {}


def floors(pyproject: Path, out: Path) -> None:
    """Exits with the differences when pyproject.toml's floors are not what `out` needs."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    grpc_versions = {m.group(1) for p in out.rglob("*_pb2_grpc.py") for m in GRPC_VERSION.finditer(p.read_text())}
    proto_versions = {m.groups() for p in out.rglob("*_pb2.py") for m in PROTOBUF_VERSION.finditer(p.read_text())}
    if len(grpc_versions) != 1 or len(proto_versions) != 1:
        sys.exit(f"postprocess: expected one generator version, found grpc {grpc_versions}, protobuf {proto_versions}")
    (grpc_version,) = grpc_versions
    ((major, minor, patch),) = proto_versions
    wanted = {
        "grpcio": {">=": grpc_version},
        "protobuf": {">=": f"{major}.{minor}.{patch}", "<": str(int(major) + 1)},
    }
    problems = [
        f"  {name}: pyproject.toml has {requirement(dependencies, name) or 'nothing'}, the code needs {specs}"
        for name, specs in wanted.items()
        if requirement(dependencies, name) != specs
    ]
    if problems:
        sys.exit("postprocess: runtime floors do not match the generated code:\n" + "\n".join(problems))


def main(argv: list[str]) -> None:
    match argv:
        case ["relativize", out]:
            relativize(Path(out))
        case ["floors", pyproject, out]:
            floors(Path(pyproject), Path(out))
        case _:
            sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
