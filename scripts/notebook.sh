#!/usr/bin/env bash
# make notebook: start Jupyter and TensorBoard detached, print the URLs. The token is random, made on first
# use and kept in .env (mode 600, ignored by git); it never enters an image.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh

require_settings JUPYTER_PORT TENSORBOARD_PORT BIND_ADDRESS
if [[ -z $(setting JUPYTER_TOKEN) ]]; then
  token=$(python3 -c 'import secrets; print(secrets.token_hex(24))')
  if grep -q '^JUPYTER_TOKEN=' .env; then
    sed -i "s/^JUPYTER_TOKEN=.*/JUPYTER_TOKEN=$token/" .env
  else
    echo "JUPYTER_TOKEN=$token" >>.env
  fi
fi
check_ports_free notebook JUPYTER_PORT TENSORBOARD_PORT
start_healthy notebook tensorboard
echo "Jupyter:     http://$(url_host):$(setting JUPYTER_PORT)/lab?token=$(setting JUPYTER_TOKEN)"
echo "TensorBoard: http://$(url_host):$(setting TENSORBOARD_PORT)/"
echo "stop both with: make down"
