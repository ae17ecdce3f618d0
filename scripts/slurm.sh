#!/usr/bin/env bash
# make slurm-up / slurm-down / slurm-shell: a Slurm cluster made of containers (compose/slurm.yaml), a
# controller and two compute nodes on PROJECT's training image. Called by make with the settings of compose_env.
#   slurm.sh build         build the nodes' image (make slurm-up does it first)
#   slurm.sh up            start the cluster, wait until sinfo shows both nodes idle
#   slurm.sh down          stop and remove it
#   slurm.sh exec CMD...   run CMD on the controller as the host user, in the repository (sbatch, squeue ...)
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-docker}
read -r -a compose <<<"${COMPOSE:-docker compose}"
base=${TRAIN_IMAGE:?run through make}
base_name=${base##*/}
export SLURM_IMAGE=${SLURM_IMAGE:-${base%/*}/slurm:${base_name%%:*}}
export MUNGE_KEY=$PWD/build/slurm/munge.key
cluster=("${compose[@]}" --project-directory . -f compose/slurm.yaml)
READY_TIMEOUT=${READY_TIMEOUT:-180}

build() {
  DOCKER_BUILDKIT=1 "$DOCKER" build --quiet --build-arg BASE_IMAGE="$base" --tag "$SLURM_IMAGE" cluster/slurm >/dev/null
}

up() {
  if [[ ! -s $MUNGE_KEY ]]; then # one key per checkout, never in an image
    mkdir -p "$(dirname "$MUNGE_KEY")"
    (umask 077 && head -c 1024 /dev/urandom >"$MUNGE_KEY")
  fi
  "${cluster[@]}" up --detach --force-recreate --remove-orphans
  local start=$SECONDS states=""
  while ((SECONDS - start < READY_TIMEOUT)); do
    states=$("${cluster[@]}" exec -T slurmctld sinfo --noheader --Node --format '%N %t' 2>/dev/null | sort -u | xargs || true)
    if [[ $states == "node1 idle node2 idle" ]]; then
      echo "Slurm cluster ready in $((SECONDS - start)) s ($SLURM_IMAGE): node1 and node2 idle; submit with" \
        "make slurm-shell CMD=\"sbatch build/cluster/<project>-2x1/slurm.sbatch\""
      return 0
    fi
    sleep 2
  done
  "${cluster[@]}" logs --tail 20 >&2
  echo "error: the Slurm cluster did not become ready in $READY_TIMEOUT s (sinfo: ${states:-no answer}); its logs are above" >&2
  exit 1
}

case ${1:-} in
  build) build ;;
  up) up ;;
  down) "${cluster[@]}" down --remove-orphans --timeout 5 ;;
  exec)
    shift
    tty=(-T)
    [[ -t 0 && -t 1 ]] && tty=()
    exec "${cluster[@]}" exec "${tty[@]}" --user "$HOST_UID:$HOST_GID" slurmctld "$@"
    ;;
  *)
    echo "usage: scripts/slurm.sh build|up|down|exec CMD..." >&2
    exit 2
    ;;
esac
