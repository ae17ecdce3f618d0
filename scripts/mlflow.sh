#!/usr/bin/env bash
# make mlflow: start the MLflow tracking server detached on runs/mlflow.db (the store --tracking mlflow writes
# by default) and print its URL. Like Jupyter it listens on BIND_ADDRESS, loopback unless .env says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/services.sh
source scripts/services.sh

require_settings MLFLOW_PORT BIND_ADDRESS
check_ports_free mlflow MLFLOW_PORT
start_healthy mlflow
echo "MLflow: http://$(url_host):$(setting MLFLOW_PORT)/"
echo "train with --tracking mlflow to log runs there (runs/mlflow.db); stop it with: make down"
