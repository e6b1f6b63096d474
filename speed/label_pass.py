"""Cost of joint pretraining's start-up label pass with a graph cache, beside one pretraining epoch, in one run.

``pretrain(targets=..., graph_cache=...)`` reads the label of every crystal it kept from the cache once before
training (``apps._pretrain_data.kept_targets``, giving ``Data.targets``), so that the property's scale and
``n_labelled`` leave out the crystals ``skip_invalid`` dropped. The script builds a cache of the bundled sample,
times that pass on a freshly opened cache (twice), then one epoch of joint pretraining from the same cache (the pass
included; it checks that ``pretrain`` reused the cache), and prints the ratio.

    OMP_NUM_THREADS=1 python speed/label_pass.py [--n 1000] [--shard-size 100]
"""

from __future__ import annotations

import matgl_cdssl  # on matgl 2.2.x this selects the DGL backend (before or after `import matgl`)

# isort: split
import argparse
import tempfile
import time
from pathlib import Path

from matgl_cdssl import BACKEND
from matgl_cdssl.apps._pretrain_data import kept_targets
from matgl_cdssl.data import cached_dataset, check_targets


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1000, help="crystals of the bundled sample")
    parser.add_argument("--shard-size", type=int, default=100, help="crystals per cache shard")
    args = parser.parse_args()

    sample = matgl_cdssl.load_sample(args.n)
    name = next(iter(sample.labels))
    values = [float(v) for v in sample.labels[name]]
    labels = check_targets({name: values}, 1.0)  # what pretrain stores with the graphs, hence the same cache
    model = matgl_cdssl.load_model("CDSSL-MEGNet-MP")
    with tempfile.TemporaryDirectory() as tmp:
        options = dict(element_types=model.element_types, cutoff=model.cutoff, cache_dir=tmp, skip_invalid=True)
        cached_dataset(sample.structures, labels=labels, shard_size=args.shard_size, **options)
        passes = []
        for _ in range(2):
            cached = cached_dataset(sample.structures, labels=labels, shard_size=args.shard_size, **options)
            start = time.perf_counter()
            kept = kept_targets(cached.dataset)
            passes.append(time.perf_counter() - start)
        start = time.perf_counter()
        matgl_cdssl.pretrain(
            sample.structures,
            model="CDSSL-MEGNet-MP",
            targets={name: values},
            graph_cache=tmp,
            max_epochs=1,
            skip_invalid=True,
            output_dir=f"{tmp}/run",
            enable_progress_bar=False,
        )
        epoch = time.perf_counter() - start
        caches = [p for p in Path(tmp).iterdir() if p.is_dir() and p.name != "run"]
        if caches != [cached.folder]:  # pretrain built a cache of its own: its epoch would include the conversion
            raise RuntimeError(f"pretrain did not reuse the cache {cached.folder}: {caches}")
    print(
        f"{BACKEND}: {len(kept)} of {len(values)} crystals kept, shards of {args.shard_size}: label pass "
        f"{passes[0]:.2f} s (again {passes[1]:.2f} s); one joint-pretraining epoch from the cache, the pass included, "
        f"{epoch:.1f} s; pass / epoch = {passes[0] / epoch:.3f}"
    )


if __name__ == "__main__":
    main()
