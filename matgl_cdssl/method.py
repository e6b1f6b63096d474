r"""CDSSL in one file: crystal denoising self-supervised learning for a matgl MEGNet.

For a batch of clean crystals G (matgl graphs plus their lattices):

1. corrupt: :class:`GaussianPositionNoise` draws a displacement for every atom, :math:`\tilde x = x + \sigma\epsilon`,
   keeping the clean edge list and image offsets, so each edge's noisy vector is its clean vector plus the difference
   of its two atoms' displacements;
2. target: :math:`E_{\mathrm{clean}}` = ``model.bond_expansion(d_clean)``, MEGNet's own Gaussian expansion of the
   clean bond length of every edge (v, v', k);
3. predict: MEGNet's embedding, encoders and message-passing blocks run on G~ (whose edges carry the noisy
   lengths), and a small MLP head (:func:`make_head`) maps each final edge feature to ``dim_edge_embedding`` values,
   :math:`h(\tilde G)`;
4. loss: :class:`EdgeEmbeddingDenoisingLoss`, the MSE between :math:`h(\tilde G)` and :math:`E_{\mathrm{clean}}`.
5. optionally, a property next to the pretext (``target_weight`` > 0): the loss becomes the pretext loss plus
   ``target_weight`` times :func:`property_loss`, the MSE of MEGNet's own prediction on the *clean* crystals against
   the standardised labels of the crystals that carry one (as self-conditioned denoising keeps a denoising loss
   beside the supervised one).

:class:`CDSSLModule` is the Lightning module that does this on every batch. The Set2Set readout and output MLP of
MEGNet are not used by the pretext task and are left untouched; after pretraining ``module.model`` is a plain matgl
MEGNet ready for finetuning.

Logged metrics (``train_``/``val_`` prefixes, per epoch): ``Total_Loss`` (the MSE), ``MAE`` (mean
:math:`|h(\tilde G) - E_{\mathrm{clean}}|`), ``train_Grad_Norm`` (global L2 norm of the gradient before clipping)
and, on validation only, ``Baseline_MAE``: the MAE of the copy-the-noisy-input baseline (the expansion of the noisy
lengths), which the model must beat. ``val_Grad_Norm`` is opt-in (``val_grad_norm=True``): it doubles the cost of
validation and needs the Trainer's ``inference_mode=False``.

Everything else (reading crystals, the Trainer, saving) is engineering around this file: :mod:`matgl_cdssl.data`,
:func:`matgl_cdssl.pretrain`, :mod:`matgl_cdssl.hub`.
"""

from __future__ import annotations

import contextlib
import math
import time
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
    "DISPLACEMENT_KEY",
    "CDSSLModule",
    "EdgeEmbeddingDenoisingLoss",
    "GaussianPositionNoise",
    "TrainingDiverged",
    "bond_distances",
    "bond_vectors",
    "check_sigma",
    "encode",
    "make_head",
    "pretext",
    "property_loss",
]

#: Node field under which :class:`GaussianPositionNoise` stores each atom's Cartesian displacement (Å).
DISPLACEMENT_KEY = "displacement"


def check_sigma(sigma: Any, *, allow_zero: bool = False) -> float:
    """The noise level as a float, or a ``ValueError`` that says what a valid one is.

    The one check of sigma in the package: :class:`GaussianPositionNoise` (``allow_zero=True``: the identity),
    :class:`CDSSLModule` and :func:`matgl_cdssl.pretrain` (positive) all call it.
    """
    try:
        value = float(sigma)
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        kind = "finite, non-negative" if allow_zero else "positive"
        raise ValueError(f"sigma must be a {kind} length in Å (e.g. 0.1); got {sigma!r}")
    return value


# ---- 1. corrupt -----------------------------------------------------------------------------------------------------
def _node_lattices(lattice: torch.Tensor, node_graph: torch.Tensor) -> torch.Tensor:
    """Each atom's lattice matrix (rows are lattice vectors, Å), shape ``(n_atoms, 3, 3)``."""
    return lattice.reshape(-1, 3, 3)[node_graph]


class GaussianPositionNoise:
    r"""Displace every atom by Gaussian noise in Cartesian space: :math:`\tilde x = x + \sigma \epsilon`.

    :math:`\epsilon \sim N(0, I_3)` is drawn independently for each atom, so the mean squared displacement is
    :math:`3\sigma^2`. The transform acts on a matgl (batched) graph and its lattice, so it can run on the fly on
    every batch and each step sees fresh noise:

    - the fractional coordinates are replaced by those of the displaced atoms (the lattice is unchanged);
    - the edge list and the periodic image offsets (``pbc_offset``) of the *clean* crystal are kept, so every
      edge (v, v', k) of the clean periodic multigraph gets the noisy length
      :math:`|\tilde x_{v'} + k L - \tilde x_v|`, even where the displaced atoms would now have a different
      neighbour list;
    - the Cartesian displacement :math:`\sigma \epsilon` (Å) is stored in the node field ``"displacement"``.

    Following torch_geometric's transform contract, the input graph is not modified: a shallow copy is returned.

    Args:
        sigma: Standard deviation of the noise per Cartesian component, in Å. ``0`` gives the identity.
        generator: Optional ``torch.Generator`` for reproducible noise. Without one, torch's global RNG is used.

    Example:
        >>> noise = GaussianPositionNoise(sigma=0.05)
        >>> noise
        GaussianPositionNoise(sigma=0.05)
    """

    def __init__(self, sigma: float, *, generator: torch.Generator | None = None) -> None:
        self.sigma = check_sigma(sigma, allow_zero=True)
        self.generator = generator

    def displacements(self, g: Any) -> torch.Tensor:
        r"""Draw one Cartesian displacement :math:`\sigma \epsilon` (Å) per atom of ``g``, shape ``(n_atoms, 3)``.

        This is the random part of :meth:`__call__` (the same draws from the same generator), for callers that
        need the displacements rather than a displaced graph.
        """
        frac = get_backend().frac_coords(g)
        device = self.generator.device if self.generator is not None else frac.device
        eps = torch.randn(frac.shape, generator=self.generator, device=device, dtype=frac.dtype).to(frac.device)
        return self.sigma * eps

    def __call__(self, g: Any, lattice: torch.Tensor) -> Any:
        """Return a displaced copy of ``g``.

        Args:
            g: A matgl graph or batch (DGL or PyG, as the installed matgl makes them).
            lattice: ``(n_graphs, 3, 3)`` or ``(3, 3)`` lattice matrices in Å, rows are lattice vectors.

        Returns:
            A shallow copy of ``g`` with perturbed ``frac_coords`` and a ``displacement`` node field.
        """
        backend = get_backend()
        frac = backend.frac_coords(g)
        displacement = self.displacements(g)
        # Cartesian x = f @ L, so a displacement dx moves fractional coordinates by dx @ L^-1.
        inverse = torch.linalg.inv(lattice.reshape(-1, 3, 3).to(frac.dtype))
        frac_shift = torch.einsum("ni,nij->nj", displacement, _node_lattices(inverse, backend.topology(g).node_graph))
        return backend.with_node_fields(g, frac_coords=frac + frac_shift, **{DISPLACEMENT_KEY: displacement})

    def __repr__(self) -> str:
        return f"{type(self).__name__}(sigma={self.sigma})"


# ---- 2. target: bond vectors and MEGNet's own expansion -------------------------------------------------------------
def bond_vectors(g: Any, lattice: torch.Tensor, topo: Topology | None = None) -> torch.Tensor:
    """Vector of every edge (v, v', k): ``x_v' + k L - x_v`` in Å, shape ``(n_edges, 3)``.

    Positions are rebuilt from the graph's fractional coordinates and the lattice, as matgl does.
    """
    backend = get_backend()
    topo = topo or backend.topology(g)
    frac = backend.frac_coords(g)
    lat = lattice.reshape(-1, 3, 3).to(frac.dtype)
    pos = torch.einsum("ni,nij->nj", frac, _node_lattices(lat, topo.node_graph))
    shift = torch.einsum("ei,eij->ej", backend.pbc_offset(g).to(frac.dtype), lat[topo.edge_graph])
    return pos[topo.dst] + shift - pos[topo.src]


def bond_distances(g: Any, lattice: torch.Tensor, topo: Topology | None = None) -> torch.Tensor:
    """Length of every edge (v, v', k): ``|x_v' + k L - x_v|`` in Å, shape ``(n_edges,)``."""
    return torch.linalg.vector_norm(bond_vectors(g, lattice, topo), dim=1)


# ---- 3. predict: MEGNet's encoder and the pretext head --------------------------------------------------------------
def encode(
    model: nn.Module, g: Any, edge_attr: torch.Tensor, state_attr: torch.Tensor | None, topo: Topology | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Run MEGNet's embedding, encoders and blocks (not its readout) on ``g``.

    This is the first half of ``MEGNet.forward`` built from the model's own submodules, with the edge input
    ``edge_attr`` given explicitly instead of recomputed from positions.

    Args:
        model: A matgl MEGNet.
        g: A matgl graph or batch.
        edge_attr: Expanded bond lengths, shape ``(n_edges, dim_edge_embedding)``.
        state_attr: State attributes, shape ``(n_graphs, dim_state)``.
        topo: The graph's topology, if already known.

    Returns:
        ``(edge_feat, node_feat, state_feat)`` after the last block.
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


# ---- one step: corrupt, target, predict, loss ----------------------------------------------------------------------
def pretext(
    model: nn.Module, head: nn.Module, noise: GaussianPositionNoise, batch: tuple
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The pretext task on one batch: ``(loss, prediction, target, noisy_edge_attr)``.

    The noisy bond vectors are computed directly as ``(x_v' + d_v') + k L - (x_v + d_v)``: the clean vectors plus the
    difference of the two atoms' displacements ``d`` drawn by ``noise``. This is what
    ``bond_distances(noise(g, lattice), lattice)`` gives (up to float rounding), without rebuilding positions,
    inverting lattices or copying the graph; MEGNet's blocks read only the edge list and atom types, which the noisy
    crystal shares with the clean one.

    Args:
        model: The MEGNet.
        head: The pretext head (:func:`make_head`).
        noise: The corruption.
        batch: A matgl batch ``(g, lattice, state_attr, ...)``.
    """
    g, lattice, state_attr = batch[0], batch[1], batch[2]
    topo = get_backend().topology(g)
    clean = bond_vectors(g, lattice, topo)
    displacement = noise.displacements(g)
    noisy = clean + displacement[topo.dst] - displacement[topo.src]
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

    The model predicts the standardised label ``(y - mean) / std`` (as matgl's ``ModelLightningModule`` trains it);
    the MSE is in those units and the MAE in the label's. Crystals whose label is NaN carry none and are left out; a
    batch without any label gives a zero loss that still reaches every parameter of the readout.

    Args:
        model: The MEGNet.
        batch: A matgl batch ``(g, lattice, state_attr, labels, ...)``; ``labels`` one value per crystal.
        mean: Mean of the labels.
        std: Standard deviation of the labels.
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
# Seeds of the noise streams: each (rank, global step) of training has its own seed, so a resumed run (under DDP too)
# draws exactly the noise an uninterrupted one would; validation noise is the same every epoch.
_RANK_STRIDE = 1_000_003
_STEP_STRIDE = 7_368_787
_VAL_OFFSET = 7_919


class TrainingDiverged(FloatingPointError):
    """The loss or the gradients became NaN or infinite during pretraining; the message says where and what to do."""


class CDSSLModule(OncePerEpochSchedule, MatglLightningModuleMixin, L.LightningModule):
    """Crystal denoising self-supervised learning for a matgl MEGNet.

    Training, validation and test steps, logging and the optimiser (Adam with cosine decay) come from matgl's
    ``MatglLightningModuleMixin``; this class supplies ``step``. The learning rate steps once per epoch on both of
    matgl's lines (:class:`~matgl_cdssl._backend.OncePerEpochSchedule`). Batches are matgl's graph batches
    ``(g, lattice, state_attr, labels)``; labels are ignored.

    Args:
        model: The matgl MEGNet to pretrain (its weights are updated in place).
        sigma: Noise level in Å (standard deviation per Cartesian component); must be positive.
        head: Pretext head mapping final edge features to ``dim_edge_embedding`` values. Defaults to
            :func:`make_head` with ``head_hidden``.
        head_hidden: Hidden layer sizes of the default head.
        lr: Learning rate.
        decay_steps: Epochs of the cosine decay of the learning rate.
        decay_alpha: Final learning rate as a fraction of ``lr``.
        optimizer: Optional optimiser, replacing Adam.
        scheduler: Optional scheduler, replacing the cosine decay.
        seed: Seed of the noise. The training noise of each step is drawn from a generator seeded with ``seed``, the
            rank and the global step, so every rank draws its own stream and a resumed run continues it exactly;
            validation noise is the same at every epoch.
        sync_dist: Sync logged metrics across processes (DDP).
        val_grad_norm: Also log the gradient norm on validation batches (off by default: it doubles the cost of
            validation and needs the Trainer's ``inference_mode=False``).
        target_weight: Weight of :func:`property_loss` next to the pretext loss (0: the pretext alone). Batches then
            carry the label first (NaN where a crystal has none).
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
        self._elapsed_before = 0.0
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

    def _pretext(self, batch: tuple) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """:func:`pretext` with this module's model, head and noise."""
        return pretext(self.model, self.head, self.noise, batch)

    def _loss(self, batch: tuple) -> tuple[torch.Tensor, dict[str, torch.Tensor], tuple]:
        """The loss of one batch: the pretext's, plus ``target_weight`` times the property's; its parts; the pretext."""
        out = self._pretext(batch)
        if not self.target_weight:
            return out[0], {}, out
        mse, mae, n = property_loss(self.model, batch, self.target_mean, self.target_std)
        parts = {"Pretext_Loss": out[0].detach()}
        if n:
            parts |= {"Property_Loss": mse.detach(), "Property_MAE": mae}
        return out[0] + self.target_weight * mse, parts, out

    def step(self, batch: tuple) -> tuple[dict[str, torch.Tensor], int]:
        """One CDSSL step on a batch: corrupt, predict, compare. Returns ``(metrics, n_edges)``."""
        if self.training:
            self._train_gen.manual_seed(self.noise_seed(self.global_rank, self.global_step))
        self.noise.generator = self._train_gen if self.training else self._val_gen
        want_grad_norm = not self.training and self.val_grad_norm and not torch.is_inference_mode_enabled()
        with torch.enable_grad() if want_grad_norm else contextlib.nullcontext():
            loss, parts, (_, pred, target, noisy_attr) = self._loss(batch)
        if self.training:
            self._last_train_loss = loss.detach()
        with torch.no_grad():
            results = {"Total_Loss": loss, "MAE": nn.functional.l1_loss(pred, target), **parts}
            if not self.training:  # the baseline is fixed by the data and the noise: needed for validation only
                results["Baseline_MAE"] = nn.functional.l1_loss(noisy_attr, target)
        if want_grad_norm:
            params = [p for p in self.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            results["Grad_Norm"] = _global_norm(grads)
            results["Total_Loss"] = loss.detach()
        return results, int(target.shape[0])

    def noise_seed(self, rank: int, step: int) -> int:
        """Seed of the training noise of one rank at one global step (a resumed run reuses the same seeds)."""
        return self.seed + _RANK_STRIDE * int(rank) + _STEP_STRIDE * int(step)

    # ---- engineering: DDP, divergence, wall time ------------------------------------------------------------------
    def unreached_parameters(self) -> list[nn.Parameter]:
        """Parameters the loss never reaches: for the pretext alone, the readout and the last block's node/state update.

        With a property (``target_weight`` > 0) the readout is reached too. Found by differentiating the loss of a
        two-atom probe crystal, so it holds for any MEGNet configuration.
        """
        from pymatgen.core import Lattice, Structure

        cutoff = float(self.model.cutoff)
        elements = self.model.element_types
        probe = Structure(Lattice.cubic(0.8 * cutoff), [elements[0], elements[-1]], [[0, 0, 0], [0.5, 0.5, 0.5]])
        backend = get_backend()
        g, lattice, state = backend.converter(elements, cutoff).get_graph(probe)
        batch = (
            g.to(self.device),
            torch.as_tensor(lattice, dtype=torch.float32, device=self.device).reshape(1, 3, 3),
            torch.as_tensor(state, dtype=torch.float32, device=self.device).reshape(1, -1),
            torch.zeros(1, device=self.device),  # a label, for the property's loss
        )
        generator, self.noise.generator = self.noise.generator, torch.Generator().manual_seed(0)
        try:
            with torch.enable_grad():
                loss = self._loss(batch)[0]
        finally:
            self.noise.generator = generator
        params = [p for p in self.parameters() if p.requires_grad]
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [p for p, grad in zip(params, grads, strict=True) if grad is None]

    def setup(self, stage: str) -> None:
        """For ``fit``: freeze the parameters the loss never reaches (:meth:`unreached_parameters`).

        They would get no gradient anyway; frozen, they are left out of DDP's gradient reduction, which otherwise
        stops with an error about unused parameters. :meth:`teardown` unfreezes them.
        """
        if stage == "fit":
            self._frozen = self.unreached_parameters()
            for parameter in self._frozen:
                parameter.requires_grad_(False)

    def teardown(self, stage: str) -> None:
        """Unfreeze what :meth:`setup` froze, so the model finetunes normally afterwards."""
        if stage == "fit":
            for parameter in getattr(self, "_frozen", []):
                parameter.requires_grad_(True)
            self._frozen = []

    def on_before_optimizer_step(self, optimizer: Optimizer) -> None:
        """Log the global gradient norm (before any clipping); stop the run if it is NaN or infinite.

        Raises:
            TrainingDiverged: a non-finite loss or gradient, before it reaches the weights. The gradients are
                already synchronised here, so every DDP rank stops at the same step.
        """
        norm = _global_norm([p.grad for p in self.parameters()])
        if not torch.isfinite(norm):
            checkpoint = getattr(self.trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
            loss = getattr(self, "_last_train_loss", None)
            raise TrainingDiverged(
                f"non-finite gradient norm ({float(norm)}; training loss {float(loss) if loss is not None else '?'}) "
                f"at epoch {self.current_epoch}, global step {self.global_step}. The run stopped before this update, "
                f"so no weight is NaN; the last good checkpoint is {checkpoint} (resume from it). Try a lower lr, "
                "gradient_clip_val, or a smaller sigma, and check the crystals of this batch."
            )
        self.log(
            "train_Grad_Norm",
            norm,
            on_step=False,
            on_epoch=True,
            prog_bar=False,
            batch_size=1,
            sync_dist=self.sync_dist,
        )

    def on_fit_start(self) -> None:
        """Start the wall clock."""
        self._fit_started = time.perf_counter()

    @property
    def elapsed_s(self) -> float:
        """Wall time spent in ``fit`` so far, including the runs before a resume."""
        started = getattr(self, "_fit_started", None)
        return self._elapsed_before + (time.perf_counter() - started if started is not None else 0.0)

    def on_validation_epoch_start(self) -> None:
        """Replay the same validation noise every epoch, so validation curves are comparable."""
        self._val_gen.manual_seed(self.seed + _VAL_OFFSET + _RANK_STRIDE * self.global_rank)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Store the wall time so far (the noise needs no state: it is seeded from the rank and the step)."""
        checkpoint["cdssl_elapsed_s"] = self.elapsed_s

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the wall time of the runs before the resume."""
        self._elapsed_before = float(checkpoint.get("cdssl_elapsed_s", 0.0))


def _global_norm(grads: Any) -> torch.Tensor:
    norms = [g.detach().norm(2) for g in grads if g is not None]
    return torch.linalg.vector_norm(torch.stack(norms), 2) if norms else torch.zeros(())
