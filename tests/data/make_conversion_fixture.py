"""Write the cross-backend conversion fixture for the installed matgl backend.

Usage (once per backend environment): python tests/data/make_conversion_fixture.py

Saves a MEGNet with matgl's default architecture, CDSSL-pretrained for 3 epochs on 64 crystals of the bundled
sample (seed 0), as a CDSSL model folder in
``tests/data/conversion/<backend>/``, plus ``reference.pt``: the final node features and predictions that this
backend computes with those weights for 8 crystals of the bundled sample. ``tests/test_conversion.py`` loads the
*other* backend's folder through ``matgl_cdssl.load_model`` and checks that it reproduces that backend's reference.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

import matgl_cdssl
from matgl_cdssl._backend import get_backend

HERE = Path(__file__).resolve().parent / "conversion"
N_CRYSTALS = 8


def reference_outputs(model: torch.nn.Module, structures: list) -> dict[str, list[torch.Tensor]]:
    """Final node features (via a forward hook on the last block) and predictions of matgl's own forward."""
    from tests.helpers import matgl_forward

    out: dict[str, list[torch.Tensor]] = {"node_feat": [], "prediction": []}
    for s in structures:
        node_feat, prediction = matgl_forward(model, s)
        out["node_feat"].append(node_feat)
        out["prediction"].append(prediction)
    return out


def main() -> None:
    backend = get_backend()
    folder = HERE / backend.name
    shutil.rmtree(folder, ignore_errors=True)
    model = matgl_cdssl.pretrain(
        matgl_cdssl.load_sample(64).structures,
        max_epochs=3,
        batch_size=16,
        lr=3e-3,
        seed=0,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    matgl_cdssl.save_pretrained(model, folder, config={"note": "conversion test fixture: 3 epochs on 64 crystals"})
    sample = matgl_cdssl.load_sample(N_CRYSTALS)
    torch.save(reference_outputs(model, sample.structures), folder / "reference.pt")
    print(f"wrote {folder}")


if __name__ == "__main__":
    main()
