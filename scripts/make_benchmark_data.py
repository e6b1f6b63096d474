"""Rebuild the benchmark's shipped data, ``matgl_cdssl/benchmark_data/``, from the shared data sets.

Usage: python scripts/make_benchmark_data.py [SHARED_DATA_DIR]

- ``mp_trainval.json.gz``: training and validation crystals for the Materials Project tasks: the first 3,100
  crystals, in SHA-256 order of the mp-id, of the *pretraining* split (outside the hold-out pool) with at most 40
  atoms, every atom within 4 Å of a neighbour, and all three labels. Their labels were never used in pretraining.
  (Test crystals come from the bundled sample, ``matgl_cdssl/sample/mp_sample.json.gz``: the hold-out pool.)
- ``perov5.json.gz``: the first 4,000 perovskites of ``perov5.csv.gz`` in SHA-256 order of their id.
- ``matbench_jdft2d.json.gz``, ``matbench_phonons.json.gz``: every row of the two Matbench v0.1 tasks, in matbench's
  own order, with matbench's ids (``mb-jdft2d-001``, ...) and targets; nothing is filtered (matbench scores every
  test crystal).

Structures are stored as lattice, species and fractional coordinates of pymatgen's CIF parse.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import json
import sys
from pathlib import Path

from pymatgen.core import Structure

from matgl_cdssl.data import in_holdout_pool

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
OUT = Path(__file__).resolve().parents[1] / "matgl_cdssl" / "benchmark_data"
MAX_ATOMS = 40
CUTOFF = 4.0
MP_LABELS = ("formation_energy_per_atom_eV", "band_gap_eV", "total_magnetization_muB")
PEROV_LABELS = ("heat_ref", "ind_gap")


def _rows(path: Path, key: str) -> list[dict]:
    csv.field_size_limit(10**8)
    with gzip.open(path, "rt") as f:
        rows = list(csv.DictReader(f))
    return sorted(rows, key=lambda r: hashlib.sha256(r[key].encode()).hexdigest())


def _record(row: dict, key: str, labels: tuple[str, ...]) -> dict | None:
    if any(row[k] == "" for k in labels):
        return None
    s = Structure.from_str(row["cif"], fmt="cif")
    if len(s) > MAX_ATOMS or any(len(n) == 0 for n in s.get_all_neighbors(CUTOFF)):
        return None
    rec = {"id": str(row[key]), **{k: float(row[k]) for k in labels}}
    rec["lattice"] = [[round(x, 8) for x in v] for v in s.lattice.matrix.tolist()]
    rec["species"] = [site.specie.symbol for site in s]
    rec["frac_coords"] = [[round(x, 8) for x in c] for c in s.frac_coords.tolist()]
    return rec


def _write(rows: list[dict], key: str, labels: tuple[str, ...], n: int, name: str) -> None:
    out = []
    for row in rows:
        rec = _record(row, key, labels)
        if rec is not None:
            out.append(rec)
        if len(out) == n:
            break
    with gzip.open(OUT / name, "wt") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {len(out)} crystals to {OUT / name}")


def _write_matbench(shared: Path, name: str) -> None:
    csv.field_size_limit(10**8)
    with gzip.open(shared / "matbench" / f"{name}.csv.gz", "rt") as f:
        rows = list(csv.DictReader(f))
    out = []
    for row in rows:
        s = Structure.from_str(row["cif"], fmt="cif")
        out.append(
            {
                "id": row["mbid"],
                "target": float(row["target"]),
                "lattice": [[round(x, 8) for x in v] for v in s.lattice.matrix.tolist()],
                "species": [site.specie.symbol for site in s],
                "frac_coords": [[round(x, 8) for x in c] for c in s.frac_coords.tolist()],
            }
        )
    with gzip.open(OUT / f"{name}.json.gz", "wt") as f:
        json.dump(out, f, separators=(",", ":"))
    print(f"wrote {len(out)} crystals to {OUT / name}.json.gz")


def main(shared: Path = SHARED) -> None:
    mp = [
        r
        for r in _rows(shared / "mp_multi" / "mp_multi.csv.gz", "material_id")
        if not in_holdout_pool(r["material_id"])
    ]
    _write(mp, "material_id", MP_LABELS, 3100, "mp_trainval.json.gz")
    perov = _rows(shared / "perov5" / "perov5.csv.gz", "material_id")
    _write(perov, "material_id", PEROV_LABELS, 4000, "perov5.json.gz")
    for name in ("matbench_jdft2d", "matbench_phonons"):
        _write_matbench(shared, name)


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED)
