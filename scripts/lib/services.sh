# shellcheck shell=bash
# Finds Postgres, Redis and NATS (with JetStream) for the tests and the local cluster, or
# starts throwaway ones from installed binaries. Sourced by scripts/test and
# deploy/local-cluster; exports DATABASE_URL, REDIS_URL and NATS_URL.
#
#   services_up <state-dir>   use what answers at $DATABASE_URL / $REDIS_URL / $NATS_URL
#                             (default: the standard local ports), else start throwaway
#                             servers under <state-dir>; fails naming exactly what is missing
#   services_down             stops only the servers services_up started
#
# Throwaway servers listen on 127.0.0.1 at free ports and keep their data under <state-dir>.

_started_pids=()
_started_pg_dir=""

_log() { echo "services: $*" >&2; }

_free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
}

# host port from a URL like scheme://[user[:pw]@]host:port[/...]
_host_port() {
  python3 - "$1" "$2" <<'PY'
import sys, urllib.parse
u = urllib.parse.urlsplit(sys.argv[1])
print(u.hostname or "127.0.0.1", u.port or int(sys.argv[2]))
PY
}

# Sends $3 to host $1 port $2 and prints what comes back within a second.
_tcp_say() {
  python3 - "$1" "$2" "$3" <<'PY'
import socket, sys
try:
    s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
    s.settimeout(1)
    if sys.argv[3]:
        s.sendall(sys.argv[3].encode().decode("unicode_escape").encode("latin-1"))
    data = b""
    try:
        while len(data) < 65536:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
            if b"\n" in data:
                break
    except socket.timeout:
        pass
    sys.stdout.write(data.replace(b"\0", b"").decode(errors="replace"))
except OSError:
    sys.exit(1)
PY
}

_find_pg_bin() {
  local name=$1 dir
  if command -v "$name" >/dev/null 2>&1; then command -v "$name"; return 0; fi
  for dir in /usr/lib/postgresql/*/bin /usr/local/pgsql/bin /opt/homebrew/bin /usr/local/bin; do
    [ -x "$dir/$name" ] && { echo "$dir/$name"; return 0; }
  done
  return 1
}

_postgres_up() {
  local state=$1 url="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/postgres}" hp
  hp=$(_host_port "$url" 5432)
  # A Postgres server answers an SSLRequest with a single 'S' or 'N'.
  if [ -n "$(_tcp_say ${hp} '\x00\x00\x00\x08\x04\xd2\x16\x2f' 2>/dev/null || true)" ]; then
    export DATABASE_URL="$url"
    return 0
  fi
  local initdb pg_ctl
  if ! initdb=$(_find_pg_bin initdb) || ! pg_ctl=$(_find_pg_bin pg_ctl); then
    _log "missing: PostgreSQL — nothing answers at ${hp/ /:} and no initdb/pg_ctl is installed (install PostgreSQL 14+, or set DATABASE_URL)"
    return 1
  fi
  local port dir="$state/postgres" as=()
  port=$(_free_port)
  mkdir -p "$dir"
  # Postgres refuses to run as root.
  if [ "$(id -u)" = 0 ]; then
    if ! id postgres >/dev/null 2>&1; then
      _log "missing: a non-root 'postgres' user to run a throwaway PostgreSQL as (running as root)"
      return 1
    fi
    chown postgres "$dir"
    as=(runuser -u postgres --)
  fi
  _log "starting a throwaway PostgreSQL on 127.0.0.1:$port"
  "${as[@]}" "$initdb" -D "$dir/data" -U postgres -A trust >/dev/null
  "${as[@]}" "$pg_ctl" -D "$dir/data" -l "$dir/log" -o "-p $port -k $dir -c listen_addresses=127.0.0.1" -w start >/dev/null
  _started_pg_dir="$dir/data"
  export DATABASE_URL="postgres://postgres@127.0.0.1:$port/postgres"
}

_redis_up() {
  local state=$1 url="${REDIS_URL:-redis://127.0.0.1:6379}" hp
  hp=$(_host_port "$url" 6379)
  if _tcp_say ${hp} 'PING\r\n' 2>/dev/null | grep -q PONG; then
    export REDIS_URL="$url"
    return 0
  fi
  if ! command -v redis-server >/dev/null 2>&1; then
    _log "missing: Redis — nothing answers PING at ${hp/ /:} and redis-server is not installed (install Redis 6.2+, or set REDIS_URL)"
    return 1
  fi
  local port
  port=$(_free_port)
  _log "starting a throwaway Redis on 127.0.0.1:$port"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --dir "$state" \
    --logfile "$state/redis.log" --daemonize no &
  _started_pids+=($!)
  export REDIS_URL="redis://127.0.0.1:$port"
  for _ in $(seq 50); do
    _tcp_say 127.0.0.1 "$port" 'PING\r\n' 2>/dev/null | grep -q PONG && return 0
    sleep 0.1
  done
  _log "the throwaway Redis did not answer; see $state/redis.log"
  return 1
}

_nats_up() {
  local state=$1 url="${NATS_URL:-nats://127.0.0.1:4222}" hp info
  hp=$(_host_port "$url" 4222)
  info=$(_tcp_say ${hp} '' 2>/dev/null || true)
  if [[ "$info" == INFO* ]]; then
    if [[ "$info" != *'"jetstream":true'* ]]; then
      _log "missing: JetStream — the NATS server at ${hp/ /:} runs without it (start nats-server with -js)"
      return 1
    fi
    export NATS_URL="$url"
    return 0
  fi
  if ! command -v nats-server >/dev/null 2>&1; then
    _log "missing: NATS — nothing answers at ${hp/ /:} and nats-server is not installed (install nats-server 2.9+, or set NATS_URL)"
    return 1
  fi
  local port
  port=$(_free_port)
  _log "starting a throwaway NATS (JetStream) on 127.0.0.1:$port"
  mkdir -p "$state/nats"
  nats-server -a 127.0.0.1 -p "$port" -js -sd "$state/nats" -l "$state/nats.log" &
  _started_pids+=($!)
  export NATS_URL="nats://127.0.0.1:$port"
  for _ in $(seq 50); do
    [[ "$(_tcp_say 127.0.0.1 "$port" '' 2>/dev/null || true)" == INFO* ]] && return 0
    sleep 0.1
  done
  _log "the throwaway NATS did not answer; see $state/nats.log"
  return 1
}

services_up() {
  local state=$1 failed=0
  mkdir -p "$state"
  _postgres_up "$state" || failed=1
  _redis_up "$state" || failed=1
  _nats_up "$state" || failed=1
  if [ "$failed" = 1 ]; then
    services_down
    return 1
  fi
  _log "Postgres ${DATABASE_URL%%\?*} · Redis $REDIS_URL · NATS $NATS_URL"
}

services_down() {
  local pid
  for pid in "${_started_pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${_started_pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  _started_pids=()
  if [ -n "$_started_pg_dir" ]; then
    local pg_ctl as=()
    pg_ctl=$(_find_pg_bin pg_ctl) || true
    [ "$(id -u)" = 0 ] && as=(runuser -u postgres --)
    [ -n "$pg_ctl" ] && "${as[@]}" "$pg_ctl" -D "$_started_pg_dir" -m immediate stop >/dev/null 2>&1 || true
    _started_pg_dir=""
  fi
}
