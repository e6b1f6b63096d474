"""Rebuild the bundled sample ``matgl_cdssl/sample/mp_sample.json.gz`` from the shared Materials Project data.

Usage: python scripts/make_sample.py [path/to/mp_multi.csv.gz]

Takes the crystals of the hold-out pool (``matgl_cdssl.data.in_holdout_pool``) with at most 40 atoms per cell and
every atom within 4 Å of a neighbour (matgl's default MEGNet cutoff), orders them by the SHA-256 of their mp-id,
and keeps the first 1,000. Structures are stored as lattice, species and fractional coordinates (pymatgen's CIF
parse of the source rows), with the five labels of the source.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import sys
from pathlib import Path

from pymatgen.core import Structure

from matgl_cdssl.data import SAMPLE_LABELS, in_holdout_pool

N_SAMPLE = 1000
MAX_ATOMS = 40
CUTOFF = 4.0  # matgl's MEGNet default: every atom must have a neighbour within it
SOURCE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mp_multi" / "mp_multi.csv.gz"
OUT = Path(__file__).resolve().parents[1] / "matgl_cdssl" / "sample" / "mp_sample.json.gz"


def main(source: Path = SOURCE) -> None:
    csv.field_size_limit(10**8)
    with gzip.open(source, "rt") as f:
        rows = [r for r in csv.DictReader(f) if in_holdout_pool(r["material_id"])]
    rows.sort(key=lambda r: hashlib.sha256(r["material_id"].encode()).hexdigest())
    out = []
    n_isolated = 0
    for r in rows:
        s = Structure.from_str(r["cif"], fmt="cif")
        if len(s) > MAX_ATOMS:
            continue
        if any(len(nbrs) == 0 for nbrs in s.get_all_neighbors(CUTOFF)):
            n_isolated += 1
            continue
        rec = {"material_id": r["material_id"]}
        rec.update({k: (float(r[k]) if r[k] != "" else None) for k in SAMPLE_LABELS})
        rec["lattice"] = [[round(x, 8) for x in v] for v in s.lattice.matrix.tolist()]
        rec["species"] = [site.specie.symbol for site in s]
        rec["frac_coords"] = [[round(x, 8) for x in c] for c in s.frac_coords.tolist()]
        out.append(rec)
        if len(out) == N_SAMPLE:
            break
    with gzip.open(OUT, "wt") as f:
        json.dump(out, f, separators=(",", ":"))
    print(
        f"wrote {len(out)} crystals from {len(rows)} hold-out rows to {OUT}; left out {n_isolated} with an atom "
        f"that has no neighbour within {CUTOFF} Å"
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SOURCE)
