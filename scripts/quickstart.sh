#!/usr/bin/env bash
# Palisade in one command: PostgreSQL, the server, an agent, the policies from examples/
# (one denies connects from a demo cgroup to port 9999, one records and tunes its TCP
# connections), the denied connect and its event, the allowed connect's flow aggregate —
# then everything it started is stopped and removed again. Needs root (it loads BPF programs).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$root/.palisade/quickstart
mkdir -p "$work"

say() { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

if [[ $(id -u) -ne 0 ]]; then
  echo "quickstart: run as root (it loads eBPF programs and creates a cgroup)" >&2
  exit 1
fi

say "PostgreSQL"
pg_was_up=0
if port_open 127.0.0.1 5432 || port_open 127.0.0.1 55432; then pg_was_up=1; fi
base_url=$(scripts/ensure-postgres.sh)
db=palisade_quickstart
server_url=${base_url%/*}/$db
psql "$base_url" -qc "DROP DATABASE IF EXISTS $db" >/dev/null
psql "$base_url" -qc "CREATE DATABASE $db" >/dev/null
echo "database: $server_url"

say "Building (cargo build --locked)"
cargo build --locked -q -p palisade-server -p palisade-agent -p palisade-cli
bin=$root/target/debug
# The secure path: TLS with a development PKI, and the agent's node certificate.
export PALISADE_SERVER=https://127.0.0.1:15151
export PALISADE_CA_CERT=$work/pki/ca.crt

cgroup2=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
[[ -n $cgroup2 ]] || { echo "quickstart: no cgroup2 mount" >&2; exit 1; }
demo=$cgroup2/palisade-demo
pins=/sys/fs/bpf/palisade-quickstart
server_pid='' agent_pid=''

cleanup() {
  set +e
  say "Cleaning up"
  [[ -n $agent_pid ]] && kill "$agent_pid" 2>/dev/null && wait "$agent_pid" 2>/dev/null
  [[ -n $server_pid ]] && kill "$server_pid" 2>/dev/null && wait "$server_pid" 2>/dev/null
  rm -rf "$pins"            # removing the pins detaches the programs
  rmdir "$demo" 2>/dev/null
  psql "$base_url" -qc "DROP DATABASE IF EXISTS $db" >/dev/null 2>&1
  if [[ $pg_was_up -eq 0 ]]; then
    if port_open 127.0.0.1 55432; then
      runuser -u postgres -- "$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)/pg_ctl" \
        -D "$root/.palisade/postgres" stop -m fast >/dev/null
    elif port_open 127.0.0.1 5432; then
      pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -n 1)" main stop
    fi
  fi
  echo "stopped the server and the agent, detached the programs, removed the demo cgroup and database"
}
trap cleanup EXIT

say "palisade-server pki init (a development CA, server and node certificates)"
rm -rf "$work/pki"
"$bin/palisade-server" pki init "$work/pki"
"$bin/palisade-server" pki issue-node quickstart "$work/pki"

say "palisade-server token create (an admin token for the CLI, PALISADE_TOKEN)"
PALISADE_TOKEN=$("$bin/palisade-server" token create --role admin --name quickstart-admin \
  --database-url "$server_url" | tail -n 1)
export PALISADE_TOKEN

say "Starting palisade-server on 127.0.0.1:15151 (TLS, node certificates, tokens required)"
rm -f "$work/bundle.key" "$work/bundle.key.pub"
PALISADE_LOG=warn "$bin/palisade-server" --listen 127.0.0.1:15151 --database-url "$server_url" \
  --bundle-signing-key "$work/bundle.key" \
  --tls-cert "$work/pki/server.crt" --tls-key "$work/pki/server.key" --client-ca "$work/pki/ca.crt" \
  >"$work/server.log" 2>&1 &
server_pid=$!
for _ in $(seq 1 100); do "$bin/palisade" list >/dev/null 2>&1 && break; sleep 0.1; done

say "Starting palisade-agent (node quickstart, programs attached at the demo cgroup)"
mkdir -p "$demo"
for _ in $(seq 1 50); do [[ -s $work/bundle.key.pub ]] && break; sleep 0.1; done
PALISADE_LOG=info "$bin/palisade-agent" --node-name quickstart --labels env=demo \
  --bundle-public-key "$work/bundle.key.pub" \
  --ca-cert "$work/pki/ca.crt" --cert "$work/pki/quickstart.crt" --key "$work/pki/quickstart.key" \
  --attach-cgroup /palisade-demo --bpffs "$pins" --state-dir "$work/agent" --flow-window-seconds 2 \
  >"$work/agent.log" 2>&1 &
agent_pid=$!

# Both example policies in one call, so they reach the node in one bundle: the deny of
# deny-demo-port.yaml, and the flow records and tuning of observe-demo-connections.yaml.
say "palisade apply -f examples/"
"$bin/palisade" apply -f examples/
"$bin/palisade" get deny-demo-port

# A connect from inside the demo cgroup (bash's /dev/tcp); prints the error, if any.
attempt() {
  bash -c "echo \$\$ > '$demo/cgroup.procs'; exec 3<>/dev/tcp/$1/$2" 2>&1 | head -n 1 | sed 's/^.*: //' || true
}

say "Waiting for the node to enforce it"
for _ in $(seq 1 150); do
  [[ $(attempt 127.0.0.1 9999) == *"Operation not permitted"* ]] && break
  sleep 0.1
done
"$bin/palisade" nodes

say "connect() to 127.0.0.1:9999 from the demo cgroup"
echo "result: $(attempt 127.0.0.1 9999)"
say "connect() to [::1]:9999 from the demo cgroup"
echo "result: $(attempt ::1 9999)"
say "connect() to the server port 15151 from the demo cgroup (allowed)"
r=$(attempt 127.0.0.1 15151); echo "result: ${r:-connected}"

say "palisade events --policy deny-demo-port"
for _ in $(seq 1 100); do
  [[ $("$bin/palisade" events --policy deny-demo-port | wc -l) -ge 3 ]] && break
  sleep 0.1
done
"$bin/palisade" events --policy deny-demo-port

say "palisade flows --policy observe-demo-connections (the connect to 15151, aggregated)"
for _ in $(seq 1 100); do
  [[ $("$bin/palisade" flows --policy observe-demo-connections -o json | wc -l) -ge 1 ]] && break
  sleep 0.2
done
"$bin/palisade" flows --policy observe-demo-connections
"$bin/palisade" flows --policy observe-demo-connections -o json
