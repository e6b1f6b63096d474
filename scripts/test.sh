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
  if ! bash "$root/scripts/setup-env.sh" "$backend" "$extras"; then
    summary="$summary\n$backend: install FAILED"; status=1; continue
  fi
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
