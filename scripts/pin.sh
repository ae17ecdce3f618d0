#!/usr/bin/env bash
# Re-resolve the tags of NGC_IMAGE and CUDA_IMAGE in a versions file to their current registry digests.
set -euo pipefail
versions=$1
DOCKER=${DOCKER:-docker}
for key in NGC_IMAGE CUDA_IMAGE; do
  reference=$(grep -E "^$key=" "$versions" | cut -d= -f2-)
  tag=${reference%@sha256:*}
  digest=$("$DOCKER" buildx imagetools inspect "$tag" --format '{{.Manifest.Digest}}' 2>/dev/null) \
    || { "$DOCKER" pull --quiet "$tag" >/dev/null 2>&1 \
      && digest=$("$DOCKER" image inspect --format '{{index .RepoDigests 0}}' "$tag" | cut -d@ -f2); } \
    || { echo "error: cannot resolve $tag: the registry is not reachable" >&2; exit 2; }
  sed -i "s|^$key=.*|$key=$tag@$digest|" "$versions"
  echo "$key=$tag@$digest"
done
