# shellcheck shell=bash
# What make notebook and make mlflow share (sourced): .env, free ports, a detached compose service's health.
fail() {
  echo "error: $*" >&2
  exit 2
}
setting() { grep -E "^$1=" .env | tail -n 1 | cut -d= -f2-; }

# .env from .env.example on first use (mode 600, ignored by git), then each named key must have a value.
require_settings() {
  if [[ ! -f .env ]]; then
    (umask 077 && cp .env.example .env)
    echo "created .env from .env.example"
  fi
  chmod 600 .env
  for key in "$@"; do
    if ! grep -qE "^$key=" .env; then
      grep -E "^$key=" .env.example >>.env || true # a key added to .env.example after this .env was made
    fi
    [[ -n $(setting "$key") ]] || fail "$key has no value in .env: set it (see .env.example)"
  done
}

# Stop before compose does when a port (a key of .env) is taken on BIND_ADDRESS, unless SERVICE already serves it.
check_ports_free() {
  local service=$1 key port
  shift
  [[ -z $(scripts/compose.sh ps --status running --quiet "$service" 2>/dev/null) ]] || return 0
  for key in "$@"; do
    port=$(setting "$key")
    python3 -c 'import socket, sys; socket.create_server((sys.argv[1], int(sys.argv[2]))).close()' "$(setting BIND_ADDRESS)" "$port" 2>/dev/null \
      || fail "port $port ($key in .env) on $(setting BIND_ADDRESS) is busy: stop what uses it or choose another port in .env"
  done
}

# Start SERVICE... detached and wait for the first one's health check.
start_healthy() {
  local name=$1 container status=
  scripts/compose.sh up --detach --quiet-pull "$@" 2>&1 | grep -v -e '^ *Container' -e '^ *Network' >&2 || true
  container=$(scripts/compose.sh ps --quiet "$name")
  [[ -n $container ]] || fail "the $name container did not start: see 'scripts/compose.sh logs $name'"
  for _ in $(seq 120); do
    status=$("${DOCKER:-docker}" inspect --format '{{.State.Health.Status}}' "$container")
    [[ $status == healthy ]] && return 0
    [[ $status == unhealthy ]] && fail "$name is unhealthy: see 'make down' and 'scripts/compose.sh logs $name'"
    sleep 1
  done
  fail "$name did not become healthy in 120 s: see 'scripts/compose.sh logs $name'"
}

# The host part of a URL for BIND_ADDRESS (0.0.0.0 listens everywhere; this machine reaches it on loopback).
url_host() {
  local address
  address=$(setting BIND_ADDRESS)
  [[ $address == 0.0.0.0 ]] && echo 127.0.0.1 || echo "$address"
}
