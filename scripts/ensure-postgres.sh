#!/usr/bin/env bash
# Makes sure a PostgreSQL server is reachable and prints its URL on stdout.
#
# Order: $DATABASE_URL if it answers; else the local server on 127.0.0.1:5432 (starting the
# Debian cluster if one is installed but stopped); else a private cluster under
# .palisade/postgres on port 55432, installing Debian's postgresql package if needed.
# PALISADE_PG=private forces the private cluster.
# Progress goes to stderr so callers can do: export DATABASE_URL=$(scripts/ensure-postgres.sh)
set -euo pipefail

root=$(cd "$(dirname "$0")/.." && pwd)
log() { printf 'ensure-postgres: %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

url_host_port() {
  # postgres://user@host:port/db -> "host port"
  local rest=${1#*://}
  rest=${rest#*@}
  rest=${rest%%/*}
  local host=${rest%%:*} port=5432
  [[ $rest == *:* ]] && port=${rest##*:}
  printf '%s %s\n' "$host" "$port"
}

wait_port() {
  for _ in $(seq 1 100); do
    port_open "$1" "$2" && return 0
    sleep 0.1
  done
  return 1
}

# PALISADE_PG=private skips every shared server (used to test the fresh-machine path).
if [[ ${PALISADE_PG:-} == private ]]; then
  DATABASE_URL=
fi

if [[ -n ${DATABASE_URL:-} ]]; then
  read -r host port < <(url_host_port "$DATABASE_URL")
  if port_open "$host" "$port"; then
    printf '%s\n' "$DATABASE_URL"
    exit 0
  fi
  log "DATABASE_URL=$DATABASE_URL does not answer; looking for another server"
fi

system_url=postgres://postgres@127.0.0.1:5432/postgres
if [[ ${PALISADE_PG:-} != private ]] && port_open 127.0.0.1 5432; then
  printf '%s\n' "$system_url"
  exit 0
fi

if [[ ${PALISADE_PG:-} != private ]] && command -v pg_ctlcluster >/dev/null && [[ -d /etc/postgresql ]] && [[ -n $(ls /etc/postgresql 2>/dev/null) ]]; then
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  log "starting the installed PostgreSQL $version cluster"
  if pg_ctlcluster --skip-systemctl-redirect "$version" main start >&2 2>&1 && wait_port 127.0.0.1 5432; then
    printf '%s\n' "$system_url"
    exit 0
  fi
  log "could not start the system cluster; using a private one"
fi

bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [[ -z $bindir || ! -x $bindir/initdb ]]; then
  log "installing PostgreSQL from Debian packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >&2
  apt-get install -y -qq postgresql >&2
  bindir=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)
fi

data=$root/.palisade/postgres
private_port=55432
private_url=postgres://postgres@127.0.0.1:$private_port/postgres
if port_open 127.0.0.1 $private_port; then
  printf '%s\n' "$private_url"
  exit 0
fi
run_pg() {
  # PostgreSQL refuses to run as root: use the postgres user when we are root.
  if [[ $(id -u) -eq 0 ]]; then
    id postgres >/dev/null 2>&1 || useradd --system --home-dir /var/lib/postgresql postgres
    chown -R postgres "$root/.palisade"
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}
mkdir -p "$root/.palisade"
if [[ ! -f $data/PG_VERSION ]]; then
  log "creating a private cluster in $data"
  mkdir -p "$data"
  run_pg "$bindir/initdb" -D "$data" -U postgres --auth=trust >&2
fi
log "starting the private cluster on port $private_port"
run_pg "$bindir/pg_ctl" -D "$data" -l "$root/.palisade/postgres.log" -w \
  -o "-p $private_port -k /tmp -c listen_addresses=127.0.0.1" start >&2
wait_port 127.0.0.1 $private_port
printf '%s\n' "$private_url"
