#!/usr/bin/env bash
# make train-nodes: two containers acting as two nodes (compose services node0 and node1) train one run with
# torchrun's c10d rendezvous. Streams both logs, waits for both, removes them; the exit status is the first
# non-zero one. Called by make with the settings of compose_env plus PROJECT, TRAIN_ARGS, NPROC_PER_NODE.
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-docker}
compose=(scripts/compose.sh --profile nodes)
export RDZV_ID=${RDZV_ID:-eurosat-$$}

"${compose[@]}" up --detach --force-recreate node0 node1
trap '"${compose[@]}" rm --force --stop node0 node1 >/dev/null 2>&1 || true' EXIT
"${compose[@]}" logs --follow --no-log-prefix node0 node1 &
status=0
for node in node0 node1; do
  code=$("$DOCKER" wait "$("${compose[@]}" ps --all --quiet "$node")")
  if ((code != 0)); then
    echo "error: $node exited with status $code" >&2
    ((status == 0)) && status=$code
  fi
done
wait
exit "$status"
