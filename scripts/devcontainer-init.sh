#!/usr/bin/env bash
# The dev container's initializeCommand, run on the host before it is built: create the folders it mounts (a
# missing bind-mount source stops `docker run`), and build its parent image when this engine lacks it.
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p data/eurosat .cache/eurosat .cache/models runs
parent=$(sed -n 's/.*"BASE_IMAGE": *"\([^"]*\)".*/\1/p' .devcontainer/devcontainer.json)
if ! "${DOCKER:-docker}" image inspect "$parent" >/dev/null 2>&1; then
  echo "dev container: $parent is not built yet; building it with make (once)"
  name=${parent%:*} # <prefix>/<image>
  make "IMAGE_PREFIX=${name%/*}/" "image-${name##*/}"
fi
