"""matgl-cdssl: crystal denoising self-supervised learning (CDSSL) for matgl's MEGNet.

Pretrain a MEGNet on unlabelled crystals by predicting the edge embeddings of the clean crystal from a
Gaussian-perturbed one (New, Le, Pekala, Stiles, arXiv:2408.17255), then finetune it with matgl's standard API.

The package, by role (each layer imports only the layers above it in this list):

- :mod:`matgl_cdssl._backend`: the only place where matgl's DGL (2.2.x) and PyG (>= 3) lines differ;
- :mod:`matgl_cdssl.data`: crystals in, batches out (read -> check -> convert -> cache -> split -> loaders);
- :mod:`matgl_cdssl.method`: the whole CDSSL method in one file (noise, target, head, loss, ``CDSSLModule``);
- :mod:`matgl_cdssl.hub`: saving, loading, weight conversion, copying models, named weights;
- :mod:`matgl_cdssl.apps`: ``pretrain``, ``finetune``, ``predict``;
- :mod:`matgl_cdssl.analysis`: ``embed``, probes, maps, pretraining plots;
- :mod:`matgl_cdssl.bench`: ``benchmark`` (SSL vs scratch), ``run_matbench``;
- :mod:`matgl_cdssl.cli`: the ``cdssl`` command.

Importing this package selects the matgl backend that has MEGNet (DGL on matgl 2.2.x), before or after
``import matgl``.
"""

from __future__ import annotations

from matgl_cdssl._backend import BACKEND, get_backend, package_version

get_backend()  # selects matgl 2.2.x's DGL backend before anything below imports matgl's models

from matgl_cdssl.analysis import embed  # noqa: E402
from matgl_cdssl.apps import finetune, predict, pretrain  # noqa: E402
from matgl_cdssl.bench import benchmark  # noqa: E402
from matgl_cdssl.data import load_sample  # noqa: E402
from matgl_cdssl.hub import convert_weights, get_card, list_models, load_model, register, save_pretrained  # noqa: E402
from matgl_cdssl.method import CDSSLModule, EdgeEmbeddingDenoisingLoss, GaussianPositionNoise  # noqa: E402

__version__ = package_version()

__all__ = [
    "BACKEND",
    "CDSSLModule",
    "EdgeEmbeddingDenoisingLoss",
    "GaussianPositionNoise",
    "benchmark",
    "convert_weights",
    "embed",
    "finetune",
    "get_card",
    "list_models",
    "load_model",
    "load_sample",
    "predict",
    "pretrain",
    "register",
    "save_pretrained",
]
