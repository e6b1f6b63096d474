"""What the CDSSL representation holds: linear probes and density maps, pretrained vs random initialisation.

On the bundled sample (1,000 Materials Project crystals from the hold-out pool that pretraining never saw), embeds
every crystal with ``CDSSL-MEGNet-MP`` and with the same architecture at random initialisation (seed 0), then writes
to ``--out`` (default ``docs/results/representation``):

- ``probe.csv`` and ``probe.md``: 5-fold cross-validated ridge probes for density, volume per atom, formation energy
  and band gap;
- ``map_density.png`` and ``map_density_random.png``: UMAP maps coloured by density, and ``map.md`` with the kNN
  density correlation of both (and its chance level).

One random initialisation is one draw: the probes and kNN correlations are repeated for ``--extra-seeds`` (default
1 2 3 4), reported as the range over the random initialisations.

    OMP_NUM_THREADS=1 python studies/representation/representation_results.py [--n 1000] [--method umap] [--out DIR]
"""

from __future__ import annotations

import matgl_cdssl  # first: on matgl 2.2.x it selects the DGL backend before matgl is imported

# isort: split
import argparse
import platform
import sys
import tempfile
import time
from importlib.metadata import version
from pathlib import Path

import numpy as np
import torch

from matgl_cdssl.analysis import embed, format_probe_table, plot_map, probe_models, structure_properties
from matgl_cdssl.hub import new_like

MODEL = "CDSSL-MEGNet-MP"
LABELS = ("formation_energy_per_atom_eV", "band_gap_eV")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="crystals of the bundled sample (default: all 1,000)")
    parser.add_argument("--method", choices=("umap", "pca"), default="umap")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random initialisation, folds and UMAP")
    parser.add_argument("--extra-seeds", type=int, nargs="*", default=[1, 2, 3, 4], help="more random inits")
    parser.add_argument("--out", type=Path, default=Path("docs/results/representation"))
    args = parser.parse_args()

    torch.set_num_threads(1)
    start = time.perf_counter()
    sample = matgl_cdssl.load_sample(args.n)
    pretrained = matgl_cdssl.load_model(MODEL)
    random_init = new_like(pretrained, weights="none", seed=args.seed)
    baseline = f"random init (seed {args.seed})"
    embeddings = {
        MODEL: embed(pretrained, sample.structures, skip_invalid=True),
        baseline: embed(random_init, sample.structures, skip_invalid=True),
    }
    extra = {
        f"random init (seed {k})": embed(
            new_like(pretrained, weights="none", seed=k), sample.structures, skip_invalid=True
        )
        for k in args.extra_seeds
        if k != args.seed
    }
    seeds_text = ", ".join(str(k) for k in [args.seed, *(k for k in args.extra_seeds if k != args.seed)])
    invalid = int((~np.isfinite(embeddings[MODEL]).all(axis=1)).sum())
    labels = {k: sample.labels[k] for k in LABELS}
    all_frame = probe_models({**embeddings, **extra}, sample.structures, labels, seed=args.seed)
    frame = all_frame[all_frame["model"].isin(list(embeddings))]
    randoms = all_frame[all_frame["model"] != MODEL]
    spread = [
        f"| {prop} | {frame[(frame.model == MODEL) & (frame.property == prop)].r2.iloc[0]:.3f} | "
        f"{group.r2.min():.3f} – {group.r2.max():.3f} | {group.mae.min():.3g} – {group.mae.max():.3g} |"
        for prop, group in randoms.groupby("property", sort=False)
    ]

    args.out.mkdir(parents=True, exist_ok=True)
    all_frame.to_csv(args.out / "probe.csv", index=False)
    driver = "studies/representation/representation_results.py"
    command = f"OMP_NUM_THREADS=1 python {driver}" + "".join(f" {a}" for a in sys.argv[1:])
    setup = (
        f"matgl {version('matgl')} ({matgl_cdssl.BACKEND}), torch {torch.__version__}, "
        f"Python {platform.python_version()}"
    )
    notes = []
    for _, r in frame.drop_duplicates("property").iterrows():
        if r["n_dropped_label"]:
            notes.append(f"- {r['property']}: {int(r['n_dropped_label'])} crystal(s) without a value left out.")
    if invalid:
        notes.append(f"- {invalid} crystal(s) that the model cannot embed (see `embed`) left out of every probe.")
    (args.out / "probe.md").write_text(
        f"# Linear probe: {MODEL} vs the same MEGNet at random initialisation\n\n"
        f"{len(sample)} crystals of the bundled hold-out sample; embedding = mean-pooled output of MEGNet's "
        "message-passing blocks (96 values); probe = StandardScaler + RidgeCV (alphas 1e-3 ... 1e3), 5-fold "
        f"cross-validated predictions (KFold, shuffled, seed {args.seed}). R² and MAE over the out-of-fold "
        "predictions; 'MAE of the mean' predicts each test fold by its training folds' mean. Units: density "
        "g/cm³, volume per atom Å³, formation energy eV/atom, band gap eV.\n\n"
        + format_probe_table(frame)
        + "\n\n"
        + ("\n".join(notes) + "\n\n" if notes else "")
        + f"## Spread over {randoms.model.nunique()} random initialisations (seeds "
        + seeds_text
        + ")\n\n| property | CDSSL-MEGNet-MP R² | random init R² (range) | random init MAE (range) |\n"
        "|---|---:|---:|---:|\n" + "\n".join(spread) + "\n\n" + f"Command: `{command}` ({setup}).\n"
    )

    density = structure_properties(sample.structures)["density"]
    maps = {}
    for name, png in ((MODEL, "map_density.png"), (baseline, "map_density_random.png")):
        maps[name] = plot_map(
            embeddings[name],
            density,
            args.out / png,
            method=args.method,
            seed=args.seed,
            title=f"{name}: {args.method.upper()} coloured by density",
        )
    with tempfile.TemporaryDirectory() as tmp:
        extra_maps = {
            name: plot_map(X, density, Path(tmp) / "map.png", method=args.method, seed=args.seed)
            for name, X in extra.items()
        }
    spread_map = [r["knn_correlation"] for r in [maps[baseline], *extra_maps.values()]]
    spread_emb = [r["knn_correlation_embedding"] for r in [maps[baseline], *extra_maps.values()]]
    rows = [
        f"| {name} | [{r['path'].name}]({r['path'].name}) | {r['method'].upper()} | {r['knn_correlation']:.3f} | "
        f"{r['knn_correlation_shuffled']:.3f} | {r['knn_correlation_embedding']:.3f} | {r['n']} |"
        for name, r in maps.items()
    ]
    k = maps[MODEL]["k"]
    (args.out / "map.md").write_text(
        f"# Is density organised in the map?\n\n"
        f"Embeddings of {len(sample)} hold-out crystals, standardised and projected to 2-D, coloured by density "
        f"(g/cm³). kNN correlation: Pearson correlation between each crystal's density and the mean density of its "
        f"k = {k} nearest neighbours, on the 2-D map, with the densities randomly permuted over the crystals (mean of "
        f"20 permutations: the chance level), and in the full 96-dimensional standardised embedding.\n\n"
        "| model | map | method | kNN corr. (map) | shuffled | kNN corr. (embedding) | n |\n"
        "|---|---|---|---:|---:|---:|---:|\n" + "\n".join(rows) + "\n\n"
        f"Over {len(spread_map)} random initialisations (seeds {seeds_text}) "
        f"the kNN correlation ranges from {min(spread_map):.3f} to {max(spread_map):.3f} on the map and from "
        f"{min(spread_emb):.3f} to {max(spread_emb):.3f} in the embedding.\n\n"
        f"Command: `{command}` ({setup}; {time.perf_counter() - start:.0f} s in all).\n"
    )
    print(format_probe_table(frame))
    print("\n".join(rows))
    print(f"wrote {args.out}/probe.csv, probe.md, map_density.png, map_density_random.png, map.md")


if __name__ == "__main__":
    main()
