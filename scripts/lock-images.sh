#!/usr/bin/env bash
# Regenerate images/<layer>/requirements.lock: hashed, universal (Python >= 3.11: NGC's 3.12 and Debian's 3.11).
#   cuda-base   torch and torchvision.
#   torch-ngc   locked against the pinned NGC base: every package in the base's /etc/pip/constraint.txt is
#               left out (overridden to never install), so the layer cannot replace NVIDIA's torch.
#   lightning, jupyter   the same exclusions, with the layers below them as constraints.
# Usage: NGC_BASE=<image> scripts/lock-images.sh   (the image must be present: make pin, or the stand-in)
set -euo pipefail
cd "$(dirname "$0")/.."
DOCKER=${DOCKER:-docker}
UV=${UV:-.venv/bin/uv}
NGC_BASE=${NGC_BASE:?set NGC_BASE to the NGC image (or its stand-in) to lock against}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$DOCKER" run --rm --entrypoint cat "$NGC_BASE" /etc/pip/constraint.txt >"$tmp/base.txt"
# "name==version" -> "name ; python_version < '3'": the base provides it, the lock must not.
grep -E '^[A-Za-z0-9]' "$tmp/base.txt" | sed -E "s/[ =<>!~;@].*//; s/$/ ; python_version < '3'/" >"$tmp/provided.txt"

pins() { grep -E '^[A-Za-z0-9].*==' "$1" | sed -E 's/ *\\$//'; }
compile() {
  local layer=$1
  shift
  "$UV" pip compile "images/$layer/requirements.in" --universal --python-version 3.11 --generate-hashes --quiet \
    --custom-compile-command "make lock-images" -o "images/$layer/requirements.lock" "$@"
  .venv/bin/python scripts/lock.py seal "images/$layer/requirements.lock"
  echo "locked images/$layer/requirements.lock"
}

compile cuda-base
compile torch-ngc --override "$tmp/provided.txt"
pins images/torch-ngc/requirements.lock >"$tmp/torch-ngc.txt"
compile lightning --override "$tmp/provided.txt" --constraint "$tmp/torch-ngc.txt"
cat "$tmp/torch-ngc.txt" <(pins images/lightning/requirements.lock) >"$tmp/lightning.txt"
compile jupyter --override "$tmp/provided.txt" --constraint "$tmp/lightning.txt"
