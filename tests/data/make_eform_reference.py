"""Write the predictions of matgl's own MEGNet-MP-2018.6.1-Eform on matgl 2.2.x, the line it was saved from.

Usage (in the DGL environment): python tests/data/make_eform_reference.py

Loads the shipped copy (``matgl_cdssl/benchmark_data/MEGNet-MP-2018.6.1-Eform``) with ``matgl_cdssl.load_model``, which
on matgl 2.2.x is ``matgl.load_model`` itself, and writes its predictions for 16 crystals of the bundled sample to
``tests/data/eform_reference.json``. ``tests/test_io.py`` checks that the other line (matgl >= 3, where the model is
rebuilt and its weights converted) reproduces them.
"""

from __future__ import annotations

import json
from importlib.resources import files
from pathlib import Path

import matgl_cdssl
from matgl_cdssl._backend import matgl_version

if __name__ == "__main__":
    assert matgl_cdssl.BACKEND == "dgl", "run this in the DGL environment (matgl 2.2.x), where the model was saved"
    folder = Path(str(files("matgl_cdssl").joinpath("benchmark_data/MEGNet-MP-2018.6.1-Eform")))
    model = matgl_cdssl.load_model(folder)
    sample = matgl_cdssl.load_sample(16)
    reference = {
        "matgl": matgl_version(),
        "material_ids": sample.material_ids,
        "prediction": [float(model.predict_structure(s)) for s in sample.structures],
    }
    out = Path(__file__).resolve().parent / "eform_reference.json"
    out.write_text(json.dumps(reference, indent=1) + "\n")
    print(f"wrote {out}")
