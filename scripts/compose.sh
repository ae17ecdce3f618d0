#!/usr/bin/env bash
# docker compose with the repository's files: compose/compose.yaml, plus compose/gpu.<how>.yaml when the host
# has NVIDIA GPUs and the engine can hand them to containers (its nvidia runtime, or CDI devices nvidia.com/gpu;
# src/eurosat/doctor.py decides from `docker info`). Called by make with the settings of compose_env.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-docker}
read -r -a compose <<<"${COMPOSE:-docker compose}"

files=(-f compose/compose.yaml)
gpus=0
if command -v nvidia-smi >/dev/null 2>&1; then
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU ' || true)
fi
# The containers learn how many GPUs the host has, so training in them never falls back to the CPU unnoticed.
export HOST_GPUS=$gpus
if ((gpus > 0)); then
  how=$(DOCKER="$DOCKER" "${PYTHON:-python3}" src/eurosat/doctor.py exposure)
  if [[ -n $how ]]; then
    files+=(-f "compose/gpu.$how.yaml")
  elif [[ ${1:-} == run || ${1:-} == up ]]; then
    echo "warning: this host has $gpus NVIDIA GPU(s) but $DOCKER hands them to containers neither through the" \
      "nvidia runtime nor CDI: containers see none (run 'make doctor')" >&2
  fi
elif [[ ${1:-} == run || ${1:-} == up ]]; then
  echo "no NVIDIA GPU on this host: containers run on the CPU" >&2
fi
exec "${compose[@]}" --project-directory . "${files[@]}" "$@"
