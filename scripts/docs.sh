#!/usr/bin/env bash
# Build the documentation site (mkdocs.yml) into site/ with `mkdocs build --strict`: any warning is an error.
#   bash scripts/docs.sh [mkdocs build options]
# Runs with $PYTHON, else .venvs/pyg/bin/python (bash scripts/setup-env.sh pyg test,docs), else python3. That Python
# needs the docs extra (pip install -e ".[pyg,docs]"): the CLI and API pages are generated from matgl_cdssl itself.
# The build needs no network (MathJax is loaded from a CDN only when a page is viewed).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
python=${PYTHON:-}
if [ -z "$python" ]; then
  if [ -x "$root/.venvs/pyg/bin/python" ]; then python=$root/.venvs/pyg/bin/python; else python=python3; fi
fi
if ! "$python" -c "import mkdocs, material, mkdocstrings_handlers.python" 2>/dev/null; then
  echo "scripts/docs.sh: $python lacks mkdocs, mkdocs-material or mkdocstrings[python]: pip install -e \".[docs]\"" >&2
  exit 2
fi
cd "$root"
NO_MKDOCS_2_WARNING=1 "$python" -m mkdocs build --strict --config-file "$root/mkdocs.yml" --site-dir "$root/site" "$@"
echo "built $root/site (open site/index.html)"
