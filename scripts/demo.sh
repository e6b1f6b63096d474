#!/usr/bin/env bash
# Install matgl-cdssl and run the main job (examples/demo.py): CDSSL pretraining on the bundled sample, then
# finetuning versus training from scratch on a small labelled subset.
#   bash scripts/demo.sh                      # DGL backend (matgl 2.2.1), the default
#   CDSSL_BACKEND=pyg bash scripts/demo.sh    # PyG backend (matgl 4.1.x)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
backend=${CDSSL_BACKEND:-dgl}
bash "$root/scripts/setup-env.sh" "$backend" examples
cd "$root" && exec "$root/.venvs/$backend/bin/python" examples/demo.py --out "${DEMO_OUT:-demo_output/$backend}" "$@"
