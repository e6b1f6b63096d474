"""matgl-cdssl: crystal denoising self-supervised learning (CDSSL) for matgl's MEGNet.

Pretrain a MEGNet on unlabelled crystals by predicting the edge embeddings of the clean crystal from a
Gaussian-perturbed one (New, Le, Pekala, Stiles, arXiv:2408.17255), then finetune it with matgl's standard API.

Importing this package before matgl selects the matgl backend that has MEGNet (DGL on matgl 2.2.x).
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from matgl_cdssl.backend import BACKEND, get_backend

get_backend()  # sets MATGL_BACKEND=DGL on matgl 2.2.x before anything imports matgl

from matgl_cdssl.benchmark import benchmark  # noqa: E402
from matgl_cdssl.data import load_sample  # noqa: E402
from matgl_cdssl.finetune import finetune  # noqa: E402
from matgl_cdssl.io import convert_weights, save_pretrained  # noqa: E402
from matgl_cdssl.loss import EdgeEmbeddingDenoisingLoss  # noqa: E402
from matgl_cdssl.module import CDSSLModule  # noqa: E402
from matgl_cdssl.pretrain import pretrain  # noqa: E402
from matgl_cdssl.registry import get_card, list_models, load_model, register  # noqa: E402
from matgl_cdssl.represent import embed  # noqa: E402
from matgl_cdssl.transform import GaussianPositionNoise  # noqa: E402

try:
    __version__ = version("matgl-cdssl")
except PackageNotFoundError:  # pragma: no cover - running from a source tree
    __version__ = "unknown"

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
    "pretrain",
    "register",
    "save_pretrained",
]
