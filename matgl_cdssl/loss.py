"""The CDSSL objective: mean squared error between predicted and clean edge embeddings."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["EdgeEmbeddingDenoisingLoss"]


class EdgeEmbeddingDenoisingLoss(nn.Module):
    r"""MSE between the edge embeddings predicted from the noisy crystal and those of the clean crystal.

    .. math::
        \mathcal{L} = \frac{1}{|E|\,D} \sum_{(v,v',k) \in E}
        \lVert h(\tilde G)_{vv'k} - E_{\mathrm{clean},vv'k} \rVert^2

    where :math:`E_{\mathrm{clean}}` is MEGNet's Gaussian bond expansion of the clean bond lengths and ``D`` its
    number of Gaussians. Plain tensors in, scalar out; the graph never enters.

    Example:
        >>> loss = EdgeEmbeddingDenoisingLoss()
        >>> float(loss(torch.zeros(4, 3), torch.ones(4, 3)))
        1.0
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Compute the loss.

        Args:
            pred: Predicted edge embeddings, shape ``(n_edges, D)``.
            target: Clean edge embeddings, shape ``(n_edges, D)``.

        Returns:
            Scalar tensor.

        Raises:
            ValueError: if the shapes differ or there are no edges.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}")
        if pred.numel() == 0:
            raise ValueError("no edges: the denoising loss needs at least one edge")
        return nn.functional.mse_loss(pred, target)
