#!/usr/bin/env bash
# Install matgl-cdssl and run the main job (examples/demo.py, about 10 minutes on 2 CPU cores): a short CDSSL pretraining
# on the bundled sample, then the shipped CDSSL-MEGNet-MP, matgl's supervised MEGNet and scratch finetuned on the same
# 100 band-gap labels (a table of test MAE), then an ensemble's predictions with uncertainty (predictions.csv).
#   bash scripts/demo.sh                      # DGL backend (matgl 2.2.1), the default
#   CDSSL_BACKEND=pyg bash scripts/demo.sh    # PyG backend (matgl 4.1.x)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
backend=${CDSSL_BACKEND:-dgl}
bash "$root/scripts/setup-env.sh" "$backend" examples
cd "$root" && exec "$root/.venvs/$backend/bin/python" examples/demo.py --out "${DEMO_OUT:-demo_output/$backend}" "$@"
