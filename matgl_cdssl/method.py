r"""CDSSL in one file: crystal denoising self-supervised learning for a matgl MEGNet, in the order it happens.

For a batch of clean crystals G (matgl graphs plus their lattices):

1. corrupt: :class:`GaussianPositionNoise` displaces every atom, :math:`\tilde x = x + \sigma\epsilon`, keeping the
   clean edges and image offsets, so each edge's noisy vector is its clean vector plus the difference of its two
   atoms' displacements (:func:`displace_bonds`: the one implementation, for training and for the transform alike);
2. target: :math:`E_{\mathrm{clean}}` = ``model.bond_expansion(d_clean)``, MEGNet's own Gaussian expansion of the
   clean length of every edge (v, v', k) (:func:`bond_distances`);
3. predict: MEGNet's embedding, encoders and blocks run on G~, whose edges carry the noisy lengths (:func:`encode`),
   and a small MLP head (:func:`make_head`) maps each final edge feature to :math:`h(\tilde G)`;
4. loss: :class:`EdgeEmbeddingDenoisingLoss`, the MSE between :math:`h(\tilde G)` and :math:`E_{\mathrm{clean}}`.
   :func:`pretext` is steps 1-4 on one batch;
5. optionally (``target_weight`` > 0), plus ``target_weight`` times :func:`property_loss`, the MSE of MEGNet's own
   prediction on the *clean* crystals against the standardised labels of those that carry one.

:class:`CDSSLModule` does this on every batch, with fresh noise for every training micro-batch from a seed of its own,
and logs ``Total_Loss``, ``MAE`` and, on validation, ``Baseline_MAE`` (that of copying the noisy input, to beat).

The engineering is elsewhere: :func:`matgl_cdssl.pretrain` runs the Trainer with the callbacks of
:mod:`matgl_cdssl.apps._callbacks` (DDP freeze, divergence guard with ``train_Grad_Norm``, wall clock).
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from matgl.layers import MLP, ActivationFunction
from matgl.utils.training import MatglLightningModuleMixin
from torch import nn

from matgl_cdssl._backend import OncePerEpochSchedule, Topology, get_backend

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "CLEAN_FRAC_KEY",
    "DISPLACEMENT_KEY",
    "CDSSLModule",
    "EdgeEmbeddingDenoisingLoss",
    "GaussianPositionNoise",
    "TrainingDiverged",
    "bond_distances",
    "bond_vectors",
    "check_sigma",
    "displace_bonds",
    "encode",
    "global_norm",
    "make_head",
    "pretext",
    "property_loss",
]

#: Node fields of :class:`GaussianPositionNoise`: each atom's Cartesian displacement (Å), its clean ``frac_coords``.
DISPLACEMENT_KEY, CLEAN_FRAC_KEY = "displacement", "clean_frac_coords"


def check_sigma(sigma: Any, *, allow_zero: bool = False) -> float:
    """The noise level as a float, or a ``ValueError`` that says what a valid one is (the package's one check)."""
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "finite, non-negative" if allow_zero else "positive"
        raise ValueError(f"sigma must be a {kind} length in Å (e.g. 0.1); got {sigma!r}")
    return value


# ---- 1. corrupt -----------------------------------------------------------------------------------------------------
class GaussianPositionNoise:
    r"""Displace every atom by Gaussian noise in Cartesian space: :math:`\tilde x = x + \sigma \epsilon`.

    :math:`\epsilon \sim N(0, I_3)` per atom, so the mean squared displacement is :math:`3\sigma^2`. It acts on a
    matgl (batched) graph and its lattice (unchanged) and returns a shallow copy (torch_geometric's contract):

    - ``frac_coords`` are those of the displaced atoms; the clean ones are kept in ``"clean_frac_coords"``;
    - the clean edge list and image offsets (``pbc_offset``) are kept, so every edge (v, v', k) gets the noisy length
      :math:`|\tilde x_{v'} + k L - \tilde x_v|`, even where the displaced atoms would have other neighbours;
    - the displacement :math:`\sigma \epsilon` (Å) is the node field ``"displacement"``.

    :func:`bond_vectors` of the copy is :func:`displace_bonds` of the clean vectors, as in training (:func:`pretext`),
    to the last bit; matgl, reading the displaced ``frac_coords``, gets them up to float rounding.

    Args:
        sigma: Standard deviation of the noise per Cartesian component, in Å (``0``: the identity).
        generator: ``torch.Generator`` of the noise (torch's global RNG when None).

    Example:
        >>> noise = GaussianPositionNoise(sigma=0.05)
        >>> noise
        GaussianPositionNoise(sigma=0.05)
    """

    def __init__(self, sigma: float, *, generator: torch.Generator | None = None) -> None:
        self.sigma = check_sigma(sigma, allow_zero=True)
        self.generator = generator

    def displacements(self, g: Any) -> torch.Tensor:
        r"""The corruption's only draw: :math:`\sigma \epsilon` (Å) per atom of ``g``, shape ``(n_atoms, 3)``."""
        frac = get_backend().frac_coords(g)
        device = self.generator.device if self.generator is not None else frac.device
        eps = torch.randn(frac.shape, generator=self.generator, device=device, dtype=frac.dtype).to(frac.device)
        return self.sigma * eps

    def __call__(self, g: Any, lattice: torch.Tensor) -> Any:
        """A displaced shallow copy of the matgl graph or batch ``g``; ``lattice`` is ``(n_graphs, 3, 3)`` in Å."""
        backend = get_backend()
        frac = backend.frac_coords(g)
        displacement = self.displacements(g)
        # Cartesian x = f @ L, so a displacement dx moves fractional coordinates by dx @ L^-1.
        inverse = torch.linalg.inv(lattice.reshape(-1, 3, 3).to(frac.dtype))
        frac_shift = torch.einsum("ni,nij->nj", displacement, inverse[backend.topology(g).node_graph])
        fields = {"frac_coords": frac + frac_shift, DISPLACEMENT_KEY: displacement, CLEAN_FRAC_KEY: frac}
        return backend.with_node_fields(g, **fields)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


def displace_bonds(clean: torch.Tensor, displacement: torch.Tensor, topo: Topology) -> torch.Tensor:
    """Noisy bond vectors ``(x_v' + d_v') + k L - (x_v + d_v)`` from the clean ``(n_edges, 3)`` and ``d`` (Å)."""
    return clean + displacement[topo.dst] - displacement[topo.src]


# ---- 2. target: bond vectors and MEGNet's own expansion -------------------------------------------------------------
def bond_vectors(g: Any, lattice: torch.Tensor, topo: Topology | None = None) -> torch.Tensor:
    """Vector of every edge (v, v', k): ``x_v' + k L - x_v`` in Å, shape ``(n_edges, 3)``.

    Positions are rebuilt from the graph's fractional coordinates and the lattice, as matgl does; for a graph
    displaced by :class:`GaussianPositionNoise`, the clean vectors are displaced by :func:`displace_bonds`.
    """
    backend = get_backend()
    topo = topo or backend.topology(g)
    try:  # a graph displaced by GaussianPositionNoise? (without the fields PyG raises AttributeError, DGL KeyError)
        frac, displacement = backend.node_field(g, CLEAN_FRAC_KEY), backend.node_field(g, DISPLACEMENT_KEY)
    except (AttributeError, KeyError):
        frac, displacement = backend.frac_coords(g), None
    lat = lattice.reshape(-1, 3, 3).to(frac.dtype)
    pos = torch.einsum("ni,nij->nj", frac, lat[topo.node_graph])
    shift = torch.einsum("ei,eij->ej", backend.pbc_offset(g).to(frac.dtype), lat[topo.edge_graph])
    vectors = pos[topo.dst] + shift - pos[topo.src]
    return vectors if displacement is None else displace_bonds(vectors, displacement, topo)


def bond_distances(g: Any, lattice: torch.Tensor, topo: Topology | None = None) -> torch.Tensor:
    """Length of every edge (v, v', k): ``|x_v' + k L - x_v|`` in Å, shape ``(n_edges,)``."""
    return torch.linalg.vector_norm(bond_vectors(g, lattice, topo), dim=1)


# ---- 3. predict: MEGNet's encoder and the pretext head --------------------------------------------------------------
def encode(
    model: nn.Module, g: Any, edge_attr: torch.Tensor, state_attr: torch.Tensor | None, topo: Topology | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MEGNet's embedding, encoders and blocks (the first half of its ``forward``) on ``g``: ``(edge, node, state)``.

    ``edge_attr`` (expanded bond lengths, ``(n_edges, dim_edge_embedding)``) is the edge input instead of that of
    ``g``'s positions; ``state_attr`` is ``(n_graphs, dim_state)``.
    """
    backend = get_backend()
    topo = topo or backend.topology(g)
    node_feat, edge_feat, state_feat = model.embedding(backend.node_types(g), edge_attr, state_attr)
    edge_feat = model.edge_encoder(edge_feat)
    node_feat = model.node_encoder(node_feat)
    state_feat = model.state_encoder(state_feat)
    return backend.run_blocks(model, g, topo, edge_feat, node_feat, state_feat)


def make_head(model: nn.Module, hidden: tuple[int, ...] = (64,), activation_type: str = "softplus2") -> nn.Module:
    """The pretext head: matgl's MLP from the final edge features to ``dim_edge_embedding`` values."""
    linears = [m for m in model.blocks[-1].conv.edge_func.modules() if isinstance(m, nn.Linear)]
    dim_out = model.bond_expansion(torch.ones(1)).shape[-1]
    activation = ActivationFunction[activation_type].value()
    return MLP([linears[-1].out_features, *hidden, dim_out], activation, activate_last=False)


# ---- 4. loss --------------------------------------------------------------------------------------------------------
class EdgeEmbeddingDenoisingLoss(nn.Module):
    r"""MSE between the edge embeddings predicted from the noisy crystal and those of the clean crystal.

    :math:`\mathcal{L} = \frac{1}{|E|\,D} \sum_{(v,v',k) \in E} \lVert h(\tilde G)_{vv'k} - E_{\mathrm{clean},vv'k}
    \rVert^2`, with ``D`` Gaussians in MEGNet's bond expansion. Plain tensors in, scalar out; the graph never enters.

    Example:
        >>> loss = EdgeEmbeddingDenoisingLoss()
        >>> float(loss(torch.zeros(4, 3), torch.ones(4, 3)))
        1.0
    """

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The loss (a scalar) of predicted and clean edge embeddings, both ``(n_edges, D)``.

        Raises:
            ValueError: if the shapes differ or there are no edges.
        """
        if pred.shape != target.shape:
            raise ValueError(f"pred has shape {tuple(pred.shape)} but target has shape {tuple(target.shape)}")
        if pred.numel() == 0:
            raise ValueError("no edges: the denoising loss needs at least one edge")
        return nn.functional.mse_loss(pred, target)


# ---- one step: corrupt, target, predict, loss ----------------------------------------------------------------------
def pretext(
    model: nn.Module, head: nn.Module, noise: GaussianPositionNoise, batch: tuple
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pretext task on a matgl batch ``(g, lattice, state_attr, ...)``: ``(loss, pred, target, noisy_edge_attr)``.

    The noisy vectors are exactly those of ``bond_vectors(noise(g, lattice), lattice)`` with the same generator state,
    without the graph copy: MEGNet's blocks read only the edge list and atom types, which G~ shares with G.
    """
    g, lattice, state_attr = batch[0], batch[1], batch[2]
    topo = get_backend().topology(g)
    clean = bond_vectors(g, lattice, topo)
    noisy = displace_bonds(clean, noise.displacements(g), topo)
    with torch.no_grad():
        target = model.bond_expansion(torch.linalg.vector_norm(clean, dim=1))
    noisy_attr = model.bond_expansion(torch.linalg.vector_norm(noisy, dim=1))
    edge_feat, _, _ = encode(model, g, noisy_attr, state_attr, topo)
    pred = head(edge_feat)
    return EdgeEmbeddingDenoisingLoss()(pred, target), pred, target, noisy_attr


# ---- 5. optional: a property next to the pretext --------------------------------------------------------------------
def property_loss(
    model: nn.Module, batch: tuple, mean: float = 0.0, std: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """MEGNet's own prediction on the clean crystals against their labels: ``(mse, mae, n_labelled)``.

    ``batch`` is a matgl batch ``(g, lattice, state_attr, labels, ...)``, one label per crystal (NaN: none, left out).
    The model predicts ``(y - mean) / std`` (as matgl's ``ModelLightningModule`` trains it); the MSE is in those units
    and the MAE in the label's. A batch without labels gives a zero loss that still reaches the whole readout.
    """
    g, lattice, state_attr, labels = batch[0], batch[1], batch[2], batch[3]
    pred = get_backend().forward(model, g, lattice, state_attr).reshape(-1)
    y = labels.reshape(-1).to(pred.dtype)
    labelled = torch.isfinite(y)
    if not bool(labelled.any()):
        zero = pred.sum() * 0.0
        return zero, zero.detach(), 0
    err = pred[labelled] - (y[labelled] - mean) / std
    return (err**2).mean(), err.detach().abs().mean() * std, int(labelled.sum())


# ---- the Lightning module -------------------------------------------------------------------------------------------
# Strides of the noise seeds (CDSSLModule.noise_seed) and the offset of the validation stream.
_RANK_STRIDE, _STEP_STRIDE, _MICRO_STRIDE, _VAL_OFFSET = 1_000_003, 7_368_787, 15_485_863, 7_919


class CDSSLModule(OncePerEpochSchedule, MatglLightningModuleMixin, L.LightningModule):
    """Crystal denoising self-supervised learning for a matgl MEGNet.

    Steps, logging and the optimiser (Adam, cosine decay stepped once per epoch) come from matgl's
    ``MatglLightningModuleMixin`` (and :class:`~matgl_cdssl._backend.OncePerEpochSchedule`); this class supplies
    ``step``. Batches are matgl's ``(g, lattice, state_attr, labels)``; labels count only when ``target_weight`` > 0.

    Args:
        model: The matgl MEGNet to pretrain (its weights are updated in place).
        sigma: Noise level in Å (standard deviation per Cartesian component); must be positive.
        head: Pretext head; by default :func:`make_head` with ``head_hidden``.
        head_hidden: Hidden layer sizes of the default head.
        lr: Learning rate.
        decay_steps: Epochs of the cosine decay of the learning rate.
        decay_alpha: Final learning rate as a fraction of ``lr``.
        optimizer: Optional optimiser, replacing Adam.
        scheduler: Optional scheduler, replacing the cosine decay.
        seed: Seed of the noise: each training micro-batch draws its own (:meth:`noise_seed`), as does a resumed run;
            validation replays the same noise every epoch.
        sync_dist: Sync logged metrics across processes (DDP).
        val_grad_norm: Also log ``val_Grad_Norm`` (twice the cost; needs the Trainer's ``inference_mode=False``).
        target_weight: Weight of :func:`property_loss` next to the pretext loss (0: the pretext alone).
        target_mean: Mean of the labels (what the readout's output 0 stands for).
        target_std: Standard deviation of the labels.

    Example:
        >>> from matgl.models import MEGNet
        >>> module = CDSSLModule(MEGNet(), sigma=0.1)
        >>> module.noise
        GaussianPositionNoise(sigma=0.1)
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        sigma: float = 0.3,
        head: nn.Module | None = None,
        head_hidden: tuple[int, ...] = (64,),
        lr: float = 1e-3,
        decay_steps: int = 1000,
        decay_alpha: float = 0.01,
        optimizer: Optimizer | None = None,
        scheduler: LRScheduler | None = None,
        seed: int = 0,
        sync_dist: bool = False,
        val_grad_norm: bool = False,
        target_weight: float = 0.0,
        target_mean: float = 0.0,
        target_std: float = 1.0,
    ) -> None:
        super().__init__()
        sigma = check_sigma(sigma)
        if not (math.isfinite(target_weight) and target_weight >= 0):
            raise ValueError(f"target_weight must be a finite, non-negative number; got {target_weight!r}")
        if not (math.isfinite(target_std) and target_std > 0 and math.isfinite(target_mean)):
            raise ValueError(f"target_std must be positive and target_mean finite; got {target_mean!r}, {target_std!r}")
        self.model = model
        self.head = head if head is not None else make_head(model, tuple(head_hidden))
        self.target_weight = float(target_weight)
        self.target_mean, self.target_std = float(target_mean), float(target_std)
        self.seed = int(seed)
        self._train_gen = torch.Generator().manual_seed(self.seed)
        self._val_gen = torch.Generator().manual_seed(self.seed + _VAL_OFFSET)
        self.noise = GaussianPositionNoise(sigma, generator=self._train_gen)
        self.lr, self.decay_steps, self.decay_alpha = lr, decay_steps, decay_alpha
        self.optimizer, self.scheduler = optimizer, scheduler
        self.sync_dist = sync_dist
        self.val_grad_norm = val_grad_norm
        self.save_hyperparameters(ignore=["model", "head", "optimizer", "scheduler"])

    def forward(self, g: Any, lattice: torch.Tensor, state_attr: torch.Tensor | None = None) -> torch.Tensor:
        """Predict the clean edge embeddings of a (possibly noisy) crystal graph, shape ``(n_edges, D)``."""
        topo = get_backend().topology(g)
        edge_attr = self.model.bond_expansion(bond_distances(g, lattice, topo))
        edge_feat, _, _ = encode(self.model, g, edge_attr, state_attr, topo)
        return self.head(edge_feat)

    def target(self, g: Any, lattice: torch.Tensor, topo: Topology | None = None) -> torch.Tensor:
        """The clean edge embeddings E_clean = ``model.bond_expansion(d_clean)``, shape ``(n_edges, D)``."""
        with torch.no_grad():
            return self.model.bond_expansion(bond_distances(g, lattice, topo))

    def _loss(self, batch: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple]:
        """The loss of one batch: the pretext's, plus ``target_weight`` times the property's; its parts; the pretext."""
        out = pretext(self.model, self.head, self.noise, batch)
        if not self.target_weight:
            return out[0], {}, out
        mse, mae, n = property_loss(self.model, batch, self.target_mean, self.target_std)
        parts = {"Pretext_Loss": out[0].detach()}
        if n:
            parts |= {"Property_Loss": mse.detach(), "Property_MAE": mae}
        return out[0] + self.target_weight * mse, parts, out

    def step(self, batch: tuple) -> tuple[dict[str, torch.Tensor], int]:
        """One CDSSL step on a batch: corrupt, predict, compare. Returns ``(metrics, n_edges)``."""
        self.noise.generator = self._train_gen if self.training else self._val_gen
        want_grad_norm = not self.training and self.val_grad_norm and not torch.is_inference_mode_enabled()
        with torch.enable_grad() if want_grad_norm else contextlib.nullcontext():
            loss, parts, (_, pred, target, noisy_attr) = self._loss(batch)
        with torch.no_grad():
            results = {"Total_Loss": loss, "MAE": nn.functional.l1_loss(pred, target), **parts}
            if not self.training:  # the baseline is fixed by the data and the noise: needed for validation only
                results["Baseline_MAE"] = nn.functional.l1_loss(noisy_attr, target)
        if want_grad_norm:
            params = [p for p in self.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            results["Grad_Norm"] = global_norm(grads)
            results["Total_Loss"] = loss.detach()
        return results, int(target.shape[0])

    def noise_seed(self, rank: int, step: int, micro_batch: int = 0) -> int:
        """The training noise's seed at a rank, global step and micro-batch of the step (0 without accumulation)."""
        return self.seed + _RANK_STRIDE * int(rank) + _STEP_STRIDE * int(step) + _MICRO_STRIDE * int(micro_batch)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Seed this training batch's noise (:meth:`noise_seed`) from the rank, the step and the micro-batch."""
        micro_batch = batch_idx % self.trainer.accumulate_grad_batches
        self._train_gen.manual_seed(self.noise_seed(self.global_rank, self.global_step, micro_batch))

    def on_validation_epoch_start(self) -> None:
        """Replay the same validation noise every epoch, so validation curves are comparable."""
        self._val_gen.manual_seed(self.seed + _VAL_OFFSET + _RANK_STRIDE * self.global_rank)


# ---- for the engineering around the method (pretraining's callbacks) ------------------------------------------------
class TrainingDiverged(FloatingPointError):
    """The loss or the gradients became NaN or infinite during pretraining; the message says where and what to do."""


def global_norm(grads: Any) -> torch.Tensor:
    """The global L2 norm of some gradients (None entries skipped; 0 when there are none)."""
    norms = [g.detach().norm(2) for g in grads if g is not None]
    return torch.linalg.vector_norm(torch.stack(norms), 2) if norms else torch.zeros(())
