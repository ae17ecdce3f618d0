#!/bin/sh
# Install one layer's hashed lock into the base it was solved against, and prove that nothing of the base changed.
# Usage: install-layer LOCK NAME NGC_BASE   (NAME: the lock's path in the repository; NGC_BASE: for the fix it names)
# 1. the base's fingerprint must be the one the lock records (else one line naming the fix, before pip runs);
# 2. pip installs exactly the lock (--require-hashes --no-deps), with the base's PIP_CONSTRAINT in force;
# 3. pip check finds no problem the base did not already have (NVIDIA's own builds may declare requirements
#    that pip check flags: those are the base's, reported, not this layer's), and every package the base had
#    still has the base's version.
set -eu
lock=$1
name=$2
ngc_base=$3
base-fingerprint check "$lock" "$name" "$ngc_base"
before=$(mktemp)
base_problems=$(mktemp)
problems=$(mktemp)
base-fingerprint freeze >"$before"
python3 -m pip check >"$base_problems" 2>&1 || true
python3 -m pip install --quiet --require-hashes --no-deps -r "$lock"
if ! python3 -m pip check >"$problems" 2>&1; then
  added=$(grep -vxFf "$base_problems" "$problems" || true)
  if [ -n "$added" ]; then
    echo "error: $name breaks pip check: $(echo "$added" | tr '\n' ' ')" >&2
    exit 1
  fi
  echo "pip check: only the base's own problems, unchanged: $(tr '\n' ' ' <"$problems")"
fi
base-fingerprint unchanged "$before"
rm "$before" "$base_problems" "$problems"
