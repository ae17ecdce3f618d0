#!/usr/bin/env bash
# Re-resolve the tag in each Dockerfile's `FROM <tag>@<digest> AS root-base` line to its current registry digest.
set -euo pipefail
DOCKER=${DOCKER:-docker}
for dockerfile in "$@"; do
  reference=$(sed -n 's/^FROM \([^ ]*\) AS root-base$/\1/p' "$dockerfile")
  [[ -n $reference ]] || continue # built on another image of this repository
  tag=${reference%@sha256:*}
  digest=$("$DOCKER" buildx imagetools inspect "$tag" --format '{{.Manifest.Digest}}' 2>/dev/null) \
    || { "$DOCKER" pull --quiet "$tag" >/dev/null 2>&1 \
      && digest=$("$DOCKER" image inspect --format '{{index .RepoDigests 0}}' "$tag" | cut -d@ -f2); } \
    || { echo "error: cannot resolve $tag: the registry is not reachable" >&2; exit 2; }
  sed -i "s|^FROM $reference AS root-base$|FROM $tag@$digest AS root-base|" "$dockerfile"
  echo "$dockerfile: $tag@$digest"
done
