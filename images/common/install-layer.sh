#!/bin/sh
# Install one layer's hashed lock into its base, and prove that nothing of the base changed.
# Usage: install-layer LOCK NAME   (NAME: the lock's path in the repository, for the messages)
# 1. say whether the lock was solved against this base (its fingerprint) or another one, where it is installed only
#    if the steps below hold (scripts/lock_images.py proves that in a scratch container before a build);
# 2. pip installs exactly the lock (--require-hashes --no-deps), with the base's PIP_CONSTRAINT in force;
# 3. pip check finds no problem the base did not already have (NVIDIA's own builds may declare requirements
#    that pip check flags: those are the base's, reported, not this layer's), and every package the base had
#    still has the base's version.
set -eu
lock=$1
name=$2
base-fingerprint check "$lock" "$name"
before=$(mktemp)
base_problems=$(mktemp)
problems=$(mktemp)
base-fingerprint freeze >"$before"
python3 -m pip check >"$base_problems" 2>&1 || true
if ! python3 -m pip install --require-hashes --no-deps -r "$lock" >"$problems" 2>&1; then
  cat "$problems" >&2
  # pip's reason in one line: the conflicting requests (a pin against the base's constraint), else its errors
  why=$(grep 'requested' "$problems" || grep '^ERROR' "$problems" || tail -n 1 "$problems")
  echo "error: $name does not install here: $(echo "$why" | sed 's/^ *//' | paste -sd ';' | sed 's/;/; /g')" >&2
  exit 1
fi
tail -n 1 "$problems" # pip's "Successfully installed ..."
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
