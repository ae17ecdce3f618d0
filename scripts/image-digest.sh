#!/usr/bin/env bash
# The digest of an image reference: the pinned @sha256 part, else the local image's id.
set -euo pipefail
if [[ $1 == *@sha256:* ]]; then
  echo "sha256:${1##*@sha256:}"
else
  "${DOCKER:-docker}" image inspect --format '{{.Id}}' "$1" 2>/dev/null || echo unknown
fi
