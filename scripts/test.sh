#!/usr/bin/env bash
# Install both backends' tested environments and run the whole test suite on each, then build the documentation.
#   bash scripts/test.sh [pytest args]
# The suite includes the example notebooks (tests/test_notebooks.py). The docs site is built with the PyG
# environment (scripts/docs.sh: mkdocs build --strict). Exits non-zero if either backend or the docs build fails.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
status=0
summary=""
for backend in dgl pyg; do
  extras=test
  [ "$backend" = pyg ] && extras=test,docs
  echo "=== $backend: installing ==="
  log=$(mktemp)
  if ! bash "$root/scripts/setup-env.sh" "$backend" "$extras" 2>&1 | tee "$log"; then
    # Repeat the cause in the summary, which is what a truncated CI log still shows.
    summary="$summary\n$backend: install FAILED:\n$(grep -v 'is ignored: it is neither' "$log" | tail -n 15)"
    status=1; rm -f "$log"; continue
  fi
  rm -f "$log"
  echo "=== $backend: pytest ==="
  (cd "$root" && "$root/.venvs/$backend/bin/python" -m pytest "$@")
  rc=$?
  [ $rc -eq 0 ] && summary="$summary\n$backend: passed" || { summary="$summary\n$backend: FAILED (pytest exit $rc)"; status=1; }
  if [ "$backend" = pyg ]; then
    echo "=== docs: mkdocs build --strict ==="
    PYTHON="$root/.venvs/pyg/bin/python" bash "$root/scripts/docs.sh"
    rc=$?
    [ $rc -eq 0 ] && summary="$summary\ndocs: built" || { summary="$summary\ndocs: FAILED (scripts/docs.sh exit $rc)"; status=1; }
  fi
done
printf "=== summary ===%b\n" "$summary"
exit $status
