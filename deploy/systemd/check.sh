#!/usr/bin/env bash
# Checks the systemd units and example environment files in deploy/systemd against the
# binaries they run; exits non-zero on any mismatch.
#
#   deploy/systemd/check.sh            # uses target/debug/palisade-{server,agent}
#   PALISADE_BIN_DIR=DIR deploy/systemd/check.sh
#
# 1. Static checks (always; python3, standard library):
#    - every NAME=VALUE line of an env file, active or shown as `#NAME=VALUE`, and every
#      PALISADE_*/DATABASE_URL name or `--flag` its comments mention, is one the daemon's
#      `--help` lists (`[env: NAME=]`) — or, for the few variables read outside clap
#      (PALISADE_LOG), a string literal in that crate's source;
#    - values fit the flag: `true`/`false` for switches, integers where the default is one;
#    - every `--flag` (and `$VAR`) in ExecStart= and every variable in Environment= exists;
#    - EnvironmentFile= names the env file shipped next to the unit; `%d/NAME` paths have
#      a LoadCredential=NAME;
#    - what the daemon writes is writable in the unit's sandbox: the agent's --state-dir
#      and --bpffs, the server's --bundle-signing-key (created on first start); the bpffs
#      mount the agent's unit asserts is the one --bpffs lives in;
#    - the invariants issue 14 asked for: the agent restarts always and holds exactly
#      CAP_BPF CAP_PERFMON CAP_NET_ADMIN CAP_SYS_ADMIN; the server holds no capability.
# 2. `systemd-analyze verify` on copies of the units whose ExecStart= points at the binaries
#    under test, when systemd-analyze is installed (it needs no running systemd). Any
#    warning about a unit (unknown key, bad value, missing binary) fails the check.
# 3. A self-test: copies of the files with a bogus variable, a bogus ExecStart= flag and a
#    bad switch value must each fail the static check, so this script cannot pass by
#    checking nothing.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
bin_dir=${PALISADE_BIN_DIR:-$root/target/debug}
log() { printf 'check.sh: %s\n' "$*" >&2; }

for daemon in palisade-server palisade-agent; do
  if [[ ! -x $bin_dir/$daemon ]]; then
    log "no $bin_dir/$daemon: build first (cargo build) or set PALISADE_BIN_DIR"
    exit 1
  fi
done

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# Help texts, in an empty environment: clap prints a variable's current value inside
# `[env: NAME=value]`, and nothing from this shell should leak into the comparison.
help() {
  env -i PATH=/usr/bin:/bin "$@" --help || { log "\`$* --help\` failed"; exit 1; }
}
command -v python3 >/dev/null || { log "python3 is needed for the static checks"; exit 1; }
help "$bin_dir/palisade-server" >"$work/palisade-server.help"
help "$bin_dir/palisade-agent" >"$work/palisade-agent.help"
# Subcommand flags may be named in comments (`palisade-server pki init DIR --san NAME`).
: >"$work/palisade-server.subhelp"
for sub in "pki init" "pki issue-node" "token create"; do
  # shellcheck disable=SC2086 # the subcommand is two words on purpose
  help "$bin_dir/palisade-server" $sub >>"$work/palisade-server.subhelp"
done
: >"$work/palisade-agent.subhelp"

static_check() { # DIR: the directory holding the units and env files
  python3 - "$1" "$work" "$root" <<'PY'
import os, pathlib, re, shlex, sys

unit_dir, work, root = map(pathlib.Path, sys.argv[1:4])
DAEMONS = {"palisade-server": "server/src", "palisade-agent": "node-agent/src"}
errors = []

def err(path, line, message):
    errors.append(f"{path.name}:{line}: {message}" if line else f"{path.name}: {message}")

OPT_RE = re.compile(r"^\s+(?:-[A-Za-z], )?--([a-z0-9][a-z0-9-]*)(?: <([^>]+)>)?")

def parse_help(text):
    """--flag -> {value: bool, env: str|None, default: str|None, possible: [..]|None}"""
    opts, current = {}, None
    for line in text.splitlines():
        m = OPT_RE.match(line)
        if m:
            current = {"value": m.group(2) is not None, "env": None, "default": None, "possible": None}
            opts[m.group(1)] = current
            rest = line[m.end():]
        elif current is not None:
            rest = line
        else:
            continue
        if (e := re.search(r"\[env: ([A-Z0-9_]+)[=\]]", rest)):
            current["env"] = e.group(1)
        if (d := re.search(r"\[default: ([^\]]*)\]", rest)):
            current["default"] = d.group(1)
        if (p := re.search(r"\[possible values: ([^\]]*)\]", rest)):
            current["possible"] = [v.strip() for v in p.group(1).split(",")]
    return opts

helps, subflags, envs, extra_envs, declared = {}, {}, {}, {}, {}
for d, src in DAEMONS.items():
    helps[d] = parse_help((work / f"{d}.help").read_text())
    subflags[d] = set(parse_help((work / f"{d}.subhelp").read_text()))
    envs[d] = {o["env"]: name for name, o in helps[d].items() if o["env"]}
    # Variables read outside clap (PALISADE_LOG): a string literal naming them in the
    # crate's source. Names in a clap `env = "..."` attribute do not count: those must be in
    # the binary's --help, or the binary is older than its source.
    literals, clap_names = set(), set()
    for f in (root / src).rglob("*.rs"):
        text = f.read_text(errors="replace")
        literals.update(re.findall(r'"([A-Z][A-Z0-9_]+)"', text))
        clap_names.update(re.findall(r'\benv\s*=\s*"([A-Z][A-Z0-9_]+)"', text))
    extra_envs[d] = literals - clap_names
    declared[d] = clap_names

def known_env(daemon, name):
    return name in envs[daemon] or name in extra_envs[daemon]

def unknown_env(daemon, name):
    """Why `name` is not a variable of `daemon`."""
    if name in declared[daemon]:
        return (f"{name} is declared in {DAEMONS[daemon]} but not in this {daemon}'s --help "
                "(the binary is older than its source: rebuild)")
    return f"{name} is not a variable of {daemon} (not in --help, not read by its source)"

def check_value(path, line, daemon, name, value):
    flag = envs[daemon].get(name)
    if flag is None:
        return
    opt = helps[daemon][flag]
    if "%" in value or "$" in value:
        return  # systemd specifiers / variables: resolved at run time
    if not opt["value"]:
        if value not in ("true", "false"):
            err(path, line, f"{name}={value!r}: --{flag} is a switch; clap accepts only true or false")
    elif opt["possible"] and value not in opt["possible"]:
        err(path, line, f"{name}={value!r}: --{flag} takes one of {', '.join(opt['possible'])}")
    elif opt["default"] and re.fullmatch(r"\d+", opt["default"]) and not re.fullmatch(r"\d+", value):
        err(path, line, f"{name}={value!r}: --{flag} takes a whole number (default {opt['default']})")

def check_mentions(path, line, daemon, text):
    """Names and flags mentioned in a comment exist, for the binary named before them."""
    for m in re.finditer(r"\b(PALISADE_[A-Z0-9_]+|DATABASE_URL)\b", text):
        if not known_env(daemon, m.group(1)):
            err(path, line, unknown_env(daemon, m.group(1)))
    # A flag inside a `code span` belongs to the command the span starts with: skip other
    # programs' flags (`setpriv --bounding-set`). Elsewhere it belongs to the last daemon
    # named before it on the line, or to this file's daemon.
    spans = [(m.start(), m.end(), m.group(1).split()) for m in re.finditer(r"`([^`]*)`", text)]
    for m in re.finditer(r"(?<![\w-])--([a-z][a-z0-9-]*)", text):
        span = next((words for a, b, words in spans if a < m.start() < b), None)
        if span and not span[0].startswith("--"):
            if span[0] not in DAEMONS:
                continue
            owner = span[0]
        else:
            before = text[:m.start()]
            named = [(before.rfind(d), d) for d in DAEMONS if d in before]
            owner = max(named)[1] if named else daemon
        if m.group(1) not in helps[owner] and m.group(1) not in subflags[owner]:
            err(path, line, f"--{m.group(1)} is not a flag of {owner}")

# ---- env files
env_values = {}  # daemon -> {NAME: (value, line)} for active lines
ASSIGN = re.compile(r"^(#?)([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
for d in DAEMONS:
    path = unit_dir / f"{d}.env"
    if not path.exists():
        err(path, 0, "missing")
        continue
    env_values[d] = {}
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line:
            continue
        m = ASSIGN.match(line)
        if m:
            commented, name, value = m.groups()
            if not known_env(d, name):
                err(path, n, unknown_env(d, name))
            else:
                check_value(path, n, d, name, value)
            if not commented:
                if name in env_values[d]:
                    err(path, n, f"{name} is set twice (line {env_values[d][name][1]} too)")
                env_values[d][name] = (value, n)
        elif line.startswith("#"):
            check_mentions(path, n, d, line)
        else:
            err(path, n, f"not NAME=VALUE: {line!r}")

# ---- units
def parse_unit(path):
    sections, section, pending, start = {}, None, "", 0
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if pending:
            raw = pending + raw
        else:
            start = n
        if raw.endswith("\\"):
            pending = raw[:-1] + " "
            continue
        pending = ""
        line = raw.strip()
        if not line or line[0] in "#;":
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            sections.setdefault(section, [])
            continue
        key, _, value = line.partition("=")
        sections.setdefault(section, []).append((key.strip(), value.strip(), start))
    return sections

def values(sections, section, key):
    return [(v, n) for k, v, n in sections.get(section, []) if k == key]

def under(path, roots):
    p = os.path.normpath(path)
    return any(p == r or p.startswith(r.rstrip("/") + "/") for r in roots)

for d in DAEMONS:
    path = unit_dir / f"{d}.service"
    if not path.exists():
        err(path, 0, "missing")
        continue
    u = parse_unit(path)
    for n, raw in enumerate(path.read_text().splitlines(), 1):
        if raw.lstrip().startswith("#"):
            check_mentions(path, n, d, raw)
    svc = "Service"
    # ExecStart: the right binary, and only flags it has.
    execs = values(u, svc, "ExecStart")
    if len(execs) != 1:
        err(path, 0, f"expected one ExecStart=, found {len(execs)}")
    for cmd, n in execs:
        words = shlex.split(cmd)
        binary = words[0].lstrip("-@:+!")
        if os.path.basename(binary) != d:
            err(path, n, f"ExecStart= runs {binary}, not {d}")
        args = iter(words[1:])
        for w in args:
            if w.startswith("--"):
                name, eq, _ = w[2:].partition("=")
                opt = helps[d].get(name)
                if opt is None:
                    err(path, n, f"ExecStart=: --{name} is not a flag of {d}")
                elif opt["value"] and not eq:
                    next(args, None)
            elif re.fullmatch(r"\$\{?([A-Z0-9_]+)\}?", w):
                var = re.fullmatch(r"\$\{?([A-Z0-9_]+)\}?", w).group(1)
                if not known_env(d, var):
                    err(path, n, "ExecStart=: " + unknown_env(d, var))
            else:
                err(path, n, f"ExecStart=: unexpected argument {w!r} ({d} takes flags only)")
    # Environment=
    unit_env = {}
    for value, n in values(u, svc, "Environment"):
        for assignment in shlex.split(value):
            name, _, v = assignment.partition("=")
            if not known_env(d, name):
                err(path, n, "Environment=: " + unknown_env(d, name))
            else:
                check_value(path, n, d, name, v)
            unit_env[name] = v
    # EnvironmentFile= must be the example shipped here.
    files = values(u, svc, "EnvironmentFile")
    if [os.path.basename(v.lstrip("-")) for v, _ in files] != [f"{d}.env"]:
        err(path, 0, f"EnvironmentFile= should be one file named {d}.env (the example next to the unit)")
    # Credentials referenced as %d/NAME exist.
    creds = {v.split(":", 1)[0] for v, _ in values(u, svc, "LoadCredential")}
    for name, v in unit_env.items():
        for c in re.findall(r"%d/([^/\s]+)", v):
            if c not in creds:
                err(path, 0, f"{name}={v}: no LoadCredential={c}:...")
    # What the daemon writes must be writable in the sandbox.
    def effective(var):
        if var in env_values.get(d, {}):
            return env_values[d][var][0]
        if var in unit_env:
            return unit_env[var]
        flag = envs[d].get(var)
        return helps[d][flag]["default"] if flag else None
    writable = [v.lstrip("-") for value, _ in values(u, svc, "ReadWritePaths") for v in value.split()]
    writable += ["/var/lib/" + v for value, _ in values(u, svc, "StateDirectory") for v in value.split()]
    def expand(p):
        return p.replace("%S", "/var/lib") if p else p
    wanted = {"palisade-agent": ["PALISADE_STATE_DIR", "PALISADE_BPFFS"],
              "palisade-server": ["PALISADE_BUNDLE_SIGNING_KEY"]}[d]
    for var in wanted:
        p = expand(effective(var))
        if not p:
            err(path, 0, f"{var} is not set, so {d} has nowhere to write")
        elif not under(p, writable):
            err(path, 0, f"{var}={p} is not under a writable path of the unit ({', '.join(writable) or 'none'})")
    first = lambda key: (values(u, svc, key) or [("", 0)])[0][0]
    caps = sorted(first("CapabilityBoundingSet").split())
    if d == "palisade-agent":
        bpffs = expand(effective("PALISADE_BPFFS")) or ""
        asserted = [v for v, _ in values(u, "Unit", "AssertPathIsMountPoint")]
        if os.path.dirname(os.path.normpath(bpffs)) not in asserted:
            err(path, 0, f"AssertPathIsMountPoint= should name {os.path.dirname(bpffs)}, the bpffs holding --bpffs {bpffs}")
        if first("Restart") != "always":
            err(path, 0, "Restart= must be always: enforcement outlives the agent, the agent must come back")
        want = sorted(["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"])
        if caps != want:
            err(path, 0, f"CapabilityBoundingSet= is {' '.join(caps)}, expected {' '.join(want)}")
    else:
        if caps:
            err(path, 0, f"CapabilityBoundingSet= grants {' '.join(caps)}; the server needs none")
        if first("NoNewPrivileges") != "yes" or first("User") in ("root", "0"):
            err(path, 0, "the server must run unprivileged with NoNewPrivileges=yes")

for e in errors:
    print(f"check.sh: {e}", file=sys.stderr)
sys.exit(1 if errors else 0)
PY
}

status=0

# 1. Static checks on the shipped files.
if static_check "$here"; then
  log "static checks passed (env files, ExecStart=, Environment=, writable paths, capabilities)"
else
  status=1
fi

# 2. systemd's own parser.
if command -v systemd-analyze >/dev/null 2>&1 && systemd-analyze --version >/dev/null 2>&1; then
  mkdir "$work/units"
  for daemon in palisade-server palisade-agent; do
    sed "s#^ExecStart=/usr/local/bin/$daemon#ExecStart=$bin_dir/$daemon#" \
      "$here/$daemon.service" >"$work/units/$daemon.service"
  done
  out=$(cd "$work/units" && systemd-analyze verify --man=no ./palisade-server.service ./palisade-agent.service 2>&1) &&
    rc=0 || rc=$?
  # Unknown keys and bad values are warnings with exit status 0: any line about our units
  # counts.
  if [[ $rc -ne 0 ]] || grep -q 'palisade-\(server\|agent\)\.service' <<<"$out"; then
    log "systemd-analyze verify:"
    printf '%s\n' "$out" >&2
    status=1
  else
    log "systemd-analyze verify passed ($(systemd-analyze --version | head -1))"
  fi
else
  log "SKIPPED systemd-analyze verify (not installed: apt-get install systemd); static checks only"
fi

# 3. The static check must catch what it claims to catch.
# Each mutation must fail the check with its own complaint (matched by EXPECTED), so the
# self-test means something even while the shipped files have other errors.
self_test() { # NAME SED-EXPRESSION FILE EXPECTED
  local case_dir=$work/self-test-$1 out
  mkdir -p "$case_dir"
  cp "$here"/*.service "$here"/*.env "$case_dir"/
  sed -i "$2" "$case_dir/$3"
  if cmp -s "$here/$3" "$case_dir/$3"; then
    log "self-test $1: the mutation did not apply to $3"
    return 1
  fi
  if out=$(static_check "$case_dir" 2>&1) || ! grep -q -- "$4" <<<"$out"; then
    log "self-test $1: a broken $3 was not reported (expected: $4)"
    return 1
  fi
}
tests_ok=0
self_test unknown-variable '$a PALISADE_NO_SUCH_SETTING=1' palisade-server.env \
  'PALISADE_NO_SUCH_SETTING is not a variable' || tests_ok=1
self_test unknown-flag 's#^ExecStart=\(.*\)$#ExecStart=\1 --no-such-flag#' palisade-agent.service \
  '--no-such-flag is not a flag' || tests_ok=1
self_test bad-switch 's/^#PALISADE_LOG_JSON=false$/PALISADE_LOG_JSON=1/' palisade-agent.env \
  'PALISADE_LOG_JSON=.1.: --log-json is a switch' || tests_ok=1
self_test comment-flag '$a # see --no-such-option' palisade-agent.env \
  '--no-such-option is not a flag of palisade-agent' || tests_ok=1
self_test unwritable-state 's#^ReadWritePaths=/sys/fs/bpf$#ReadWritePaths=/sys/fs/bpf/elsewhere#' \
  palisade-agent.service 'PALISADE_BPFFS=/sys/fs/bpf/palisade is not under a writable path' || tests_ok=1
if [[ $tests_ok -eq 0 ]]; then
  log "self-tests passed: each broken copy is rejected with its own error"
else
  status=1
fi

exit "$status"
