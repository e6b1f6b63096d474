#!/usr/bin/env bash
# Install both backends' tested environments and run the whole test suite on each.
#   bash scripts/test.sh [pytest args]
# Exits non-zero if either backend fails.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
status=0
summary=""
for backend in dgl pyg; do
  echo "=== $backend: installing ==="
  if ! bash "$root/scripts/setup-env.sh" "$backend" test; then
    summary="$summary\n$backend: install FAILED"; status=1; continue
  fi
  echo "=== $backend: pytest ==="
  (cd "$root" && "$root/.venvs/$backend/bin/python" -m pytest "$@")
  rc=$?
  [ $rc -eq 0 ] && summary="$summary\n$backend: passed" || { summary="$summary\n$backend: FAILED (pytest exit $rc)"; status=1; }
done
printf "=== summary ===%b\n" "$summary"
exit $status
