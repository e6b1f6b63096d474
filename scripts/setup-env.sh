#!/usr/bin/env bash
# Create (or update) a virtual environment for one matgl backend with a tested version set.
#   bash scripts/setup-env.sh dgl|pyg [EXTRAS] [VENV_DIR]
# dgl: matgl 2.2.1 + DGL 2.1.0 + torch 2.2.1 (constraints/dgl.txt); pyg: matgl 4.1.x + torch 2.13.0 (constraints/pyg.txt).
set -euo pipefail
backend=${1:?usage: setup-env.sh dgl|pyg [EXTRAS] [VENV_DIR]}
extras=${2:-test}
root=$(cd "$(dirname "$0")/.." && pwd)
venv=${3:-$root/.venvs/$backend}
python=${PYTHON:-python3.11}
case $backend in
  dgl) extras="dgl,$extras" ;;
  pyg) extras="pyg,$extras" ;;
  *) echo "backend must be dgl or pyg, not '$backend'" >&2; exit 2 ;;
esac
constraints=$root/constraints/$backend.txt
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip install --disable-pip-version-check -q)
# torch first, from the tested pin, so that nothing drags in another build.
"${pip[@]}" -c "$constraints" "torch==$(sed -n 's/^torch==//p' "$constraints")"
"${pip[@]}" -c "$constraints" -e "$root[$extras]"
# matbench (docs/matbench.md): matbench 0.6 pins versions that no longer install (matminer 0.7.4, scipy 1.7.3,
# scikit-learn 1.0.1), so it goes in without its dependencies, next to a current matminer; both are pinned in the
# constraints file. pip check then reports only matbench's own pins.
"${pip[@]}" -c "$constraints" matminer
"${pip[@]}" -c "$constraints" --no-deps matbench
echo "$venv ($backend): $("$venv/bin/python" -c 'import importlib.metadata as m; print(*(f"{p} {m.version(p)}" for p in ("matgl", "torch", "matbench", "matminer")))')"
