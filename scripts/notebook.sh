#!/usr/bin/env bash
# make notebook: start Jupyter and TensorBoard detached, print the URLs. The token is random, made on first
# use and kept in .env (mode 600, ignored by git); it never enters an image.
set -euo pipefail
cd "$(dirname "$0")/.."
fail() {
  echo "error: $*" >&2
  exit 2
}
setting() { grep -E "^$1=" .env | tail -n 1 | cut -d= -f2-; }

if [[ ! -f .env ]]; then
  (umask 077 && cp .env.example .env)
  echo "created .env from .env.example"
fi
chmod 600 .env
if [[ -z $(setting JUPYTER_TOKEN) ]]; then
  token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  if grep -q '^JUPYTER_TOKEN=' .env; then
    sed -i "s/^JUPYTER_TOKEN=.*/JUPYTER_TOKEN=$token/" .env
  else
    echo "JUPYTER_TOKEN=$token" >>.env
  fi
fi
for key in JUPYTER_TOKEN JUPYTER_PORT TENSORBOARD_PORT BIND_ADDRESS; do
  [[ -n $(setting "$key") ]] || fail "$key has no value in .env: set it (see .env.example)"
done
address=$(setting BIND_ADDRESS)

if [[ -z $(scripts/compose.sh ps --status running --quiet notebook 2>/dev/null) ]]; then
  for key in JUPYTER_PORT TENSORBOARD_PORT; do
    port=$(setting "$key")
    python3 -c 'import socket, sys; socket.create_server((sys.argv[1], int(sys.argv[2]))).close()' "$address" "$port" 2>/dev/null \
      || fail "port $port ($key in .env) on $address is busy: stop what uses it or choose another port in .env"
  done
fi
scripts/compose.sh up --detach --quiet-pull notebook tensorboard 2>&1 | grep -v -e '^ *Container' -e '^ *Network' >&2 || true

container=$(scripts/compose.sh ps --quiet notebook)
[[ -n $container ]] || fail "the notebook container did not start: see 'scripts/compose.sh logs notebook'"
for _ in $(seq 120); do
  status=$("${DOCKER:-docker}" inspect --format '{{.State.Health.Status}}' "$container")
  [[ $status == healthy ]] && break
  [[ $status == unhealthy ]] && fail "Jupyter is unhealthy: see 'make down' and 'scripts/compose.sh logs notebook'"
  sleep 1
done
[[ $status == healthy ]] || fail "Jupyter did not become healthy in 120 s: see 'scripts/compose.sh logs notebook'"
host=$([[ $address == 0.0.0.0 ]] && echo 127.0.0.1 || echo "$address")
echo "Jupyter:     http://$host:$(setting JUPYTER_PORT)/lab?token=$(setting JUPYTER_TOKEN)"
echo "TensorBoard: http://$host:$(setting TENSORBOARD_PORT)/"
echo "stop both with: make down"
