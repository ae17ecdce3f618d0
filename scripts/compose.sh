#!/usr/bin/env bash
# docker compose with the repository's files: compose/compose.yaml, plus compose/compose.gpu.yaml when the
# host has an NVIDIA GPU and the NVIDIA container runtime. Called by make with the settings of compose_env.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-docker}
read -r -a compose <<<"${COMPOSE:-docker compose}"

files=(-f compose/compose.yaml)
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1 \
  && "$DOCKER" info --format '{{json .Runtimes}}' 2>/dev/null | grep -q nvidia; then
  files+=(-f compose/compose.gpu.yaml)
elif [[ ${1:-} == run || ${1:-} == up ]]; then
  echo "no NVIDIA GPU with the NVIDIA container runtime on this host: containers run on the CPU" >&2
fi
exec "${compose[@]}" --project-directory . "${files[@]}" "$@"
