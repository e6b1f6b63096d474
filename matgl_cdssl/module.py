r"""CDSSL in one file: the pretext task as a Lightning module.

For a batch of clean crystals G (matgl graphs plus their lattices):

1. corrupt: :class:`~matgl_cdssl.transform.GaussianPositionNoise` draws a displacement for every atom,
   :math:`\tilde x = x + \sigma\epsilon`, keeping the clean edge list and image offsets, so each edge's noisy
   vector is its clean vector plus the difference of its two atoms' displacements;
2. target: :math:`E_{\mathrm{clean}}` = ``model.bond_expansion(d_clean)``, MEGNet's own Gaussian expansion of the
   clean bond length of every edge (v, v', k);
3. predict: MEGNet's embedding, encoders and message-passing blocks run on G~ (whose edges carry the noisy
   lengths), and a small MLP head maps each final edge feature to ``dim_edge_embedding`` values, :math:`h(\tilde G)`;
4. loss: :class:`~matgl_cdssl.loss.EdgeEmbeddingDenoisingLoss`, the MSE between :math:`h(\tilde G)` and
   :math:`E_{\mathrm{clean}}`.

The Set2Set readout and output MLP of MEGNet are not used by the pretext task and are left untouched; after
pretraining ``module.model`` is a plain matgl MEGNet ready for finetuning.

Logged metrics (``train_``/``val_`` prefixes, per epoch): ``Total_Loss`` (the MSE), ``MAE`` (mean
:math:`|h(\tilde G) - E_{\mathrm{clean}}|`), ``Grad_Norm`` (global L2 norm of the gradient before clipping; on
validation batches it is computed without an optimiser step) and, on validation only, ``Baseline_MAE``: the MAE of
the copy-the-noisy-input baseline (the expansion of the noisy lengths), which the model must beat.
"""

from __future__ import annotations

import contextlib
import time
from typing import TYPE_CHECKING, Any

import lightning as L
import torch
from matgl.layers import MLP, ActivationFunction
from matgl.utils.training import MatglLightningModuleMixin
from torch import nn

from matgl_cdssl.backend import Topology, get_backend
from matgl_cdssl.loss import EdgeEmbeddingDenoisingLoss
from matgl_cdssl.transform import GaussianPositionNoise, node_lattices

if TYPE_CHECKING:
    from torch.optim import Optimizer
    from torch.optim.lr_scheduler import LRScheduler

__all__ = [
    "CDSSLModule",
    "TrainingDiverged",
    "bond_distances",
    "bond_vectors",
    "edge_feature_dim",
    "encode",
    "make_head",
]

# Seeds of the noise streams: training noise differs per rank; validation noise is the same every epoch.
_RANK_STRIDE = 1_000_003
_VAL_OFFSET = 7_919


def bond_vectors(g: Any, lattice: torch.Tensor, topo: Topology | None = None) -> torch.Tensor:
    """Vector of every edge (v, v', k): ``x_v' + k L - x_v`` in Å, shape ``(n_edges, 3)``.

    Positions are rebuilt from the graph's fractional coordinates and the lattice, as matgl does.
    """
    backend = get_backend()
    topo = topo or backend.topology(g)
    frac = backend.frac_coords(g)
    lat = lattice.reshape(-1, 3, 3).to(frac.dtype)
    pos = torch.einsum("ni,nij->nj", frac, node_lattices(lat, topo.node_graph))
    shift = torch.einsum("ei,eij->ej", backend.pbc_offset(g).to(frac.dtype), lat[topo.edge_graph])
    return pos[topo.dst] + shift - pos[topo.src]


def bond_distances(g: Any, lattice: torch.Tensor, topo: Topology | None = None) -> torch.Tensor:
    """Length of every edge (v, v', k): ``|x_v' + k L - x_v|`` in Å, shape ``(n_edges,)``."""
    return torch.linalg.vector_norm(bond_vectors(g, lattice, topo), dim=1)


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


def edge_feature_dim(model: nn.Module) -> int:
    """Width of MEGNet's final edge features (the last layer of the last block's edge update)."""
    linears = [m for m in model.blocks[-1].conv.edge_func.modules() if isinstance(m, nn.Linear)]
    return linears[-1].out_features


def make_head(model: nn.Module, hidden: tuple[int, ...] = (64,), activation_type: str = "softplus2") -> nn.Module:
    """The pretext head: matgl's MLP from the final edge features to ``dim_edge_embedding`` values."""
    dim_out = model.bond_expansion(torch.ones(1)).shape[-1]
    activation = ActivationFunction[activation_type].value()
    return MLP([edge_feature_dim(model), *hidden, dim_out], activation, activate_last=False)


class TrainingDiverged(FloatingPointError):
    """The loss or the gradients became NaN or infinite during pretraining; the message says where and what to do."""


class CDSSLModule(MatglLightningModuleMixin, L.LightningModule):
    """Crystal denoising self-supervised learning for a matgl MEGNet.

    Training, validation and test steps, logging and the optimiser (Adam with cosine decay) come from matgl's
    ``MatglLightningModuleMixin``; this class supplies ``step``. Batches are matgl's graph batches
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
        seed: Seed of the noise. Each rank draws its own stream (``seed + rank * 1000003``); validation noise
            is the same at every epoch.
        sync_dist: Sync logged metrics across processes (DDP).
        val_grad_norm: Also log the gradient norm on validation batches (needs the Trainer's
            ``inference_mode=False``, which :func:`~matgl_cdssl.pretrain` sets).

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
        val_grad_norm: bool = True,
    ) -> None:
        super().__init__()
        if not float(sigma) > 0:
            raise ValueError(f"sigma must be a positive length in Å (e.g. 0.1); got {sigma!r}")
        self.model = model
        self.head = head if head is not None else make_head(model, tuple(head_hidden))
        self.loss = EdgeEmbeddingDenoisingLoss()
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
        """Corrupt, predict, compare: ``(loss, prediction, target, noisy_edge_attr)`` for one batch.

        The noisy bond vectors are computed directly as ``(x_v' + d_v') + k L - (x_v + d_v)``: the clean vectors plus
        the difference of the two atoms' displacements ``d`` drawn by :attr:`noise`. This is what
        ``bond_distances(self.noise(g, lattice), lattice)`` gives (up to float rounding), without rebuilding
        positions, inverting lattices or copying the graph; MEGNet's blocks read only the edge list and atom types,
        which the noisy crystal shares with the clean one.
        """
        g, lattice, state_attr = batch[0], batch[1], batch[2]
        topo = get_backend().topology(g)
        clean = bond_vectors(g, lattice, topo)
        displacement = self.noise.displacements(g)
        noisy = clean + displacement[topo.dst] - displacement[topo.src]
        with torch.no_grad():
            target = self.model.bond_expansion(torch.linalg.vector_norm(clean, dim=1))
        noisy_attr = self.model.bond_expansion(torch.linalg.vector_norm(noisy, dim=1))
        edge_feat, _, _ = encode(self.model, g, noisy_attr, state_attr, topo)
        pred = self.head(edge_feat)
        return self.loss(pred, target), pred, target, noisy_attr

    def step(self, batch: tuple) -> tuple[dict[str, torch.Tensor], int]:
        """One CDSSL step on a batch: corrupt, predict, compare. Returns ``(metrics, n_edges)``."""
        self.noise.generator = self._train_gen if self.training else self._val_gen
        want_grad_norm = not self.training and self.val_grad_norm and not torch.is_inference_mode_enabled()
        with torch.enable_grad() if want_grad_norm else contextlib.nullcontext():
            loss, pred, target, noisy_attr = self._pretext(batch)
        if self.training:
            self._last_train_loss = loss.detach()
        with torch.no_grad():
            results = {"Total_Loss": loss, "MAE": nn.functional.l1_loss(pred, target)}
            if not self.training:  # the baseline is fixed by the data and the noise: needed for validation only
                results["Baseline_MAE"] = nn.functional.l1_loss(noisy_attr, target)
        if want_grad_norm:
            params = [p for p in self.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            results["Grad_Norm"] = _global_norm(grads)
            results["Total_Loss"] = loss.detach()
        return results, int(target.shape[0])

    def unreached_parameters(self) -> list[nn.Parameter]:
        """Parameters the pretext loss never reaches: MEGNet's readout, and the last block's node and state updates.

        Found by differentiating the loss of a two-atom probe crystal, so it holds for any MEGNet configuration.
        """
        from pymatgen.core import Lattice, Structure

        from matgl_cdssl.data import build_dataset

        cutoff = float(self.model.cutoff)
        elements = self.model.element_types
        probe = Structure(Lattice.cubic(0.8 * cutoff), [elements[0], elements[-1]], [[0, 0, 0], [0.5, 0.5, 0.5]])
        dataset, _, _ = build_dataset([probe], element_types=self.model.element_types, cutoff=cutoff)
        _, loader = get_backend().loaders(dataset, dataset, batch_size=1)
        batch = [x.to(self.device) if isinstance(x, torch.Tensor) else x for x in next(iter(loader))]
        generator, self.noise.generator = self.noise.generator, torch.Generator().manual_seed(0)
        try:
            with torch.enable_grad():
                loss = self._pretext(batch)[0]
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
        """Give each rank its own training noise stream; start the wall clock."""
        self._train_gen.manual_seed(self.seed + _RANK_STRIDE * self.global_rank)
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
        """Store the noise RNG state, so a resumed run continues the same noise stream."""
        checkpoint["cdssl_noise_rng"] = self._train_gen.get_state()
        checkpoint["cdssl_elapsed_s"] = self.elapsed_s

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Restore the noise RNG state."""
        if "cdssl_noise_rng" in checkpoint:
            self._restored_rng = checkpoint["cdssl_noise_rng"]
        self._elapsed_before = float(checkpoint.get("cdssl_elapsed_s", 0.0))

    def on_train_start(self) -> None:
        """Apply a restored noise RNG state (after ``on_fit_start`` reseeded it)."""
        state = getattr(self, "_restored_rng", None)
        if state is not None:
            self._train_gen.set_state(state)
            self._restored_rng = None


def _global_norm(grads: Any) -> torch.Tensor:
    norms = [g.detach().norm(2) for g in grads if g is not None]
    return torch.linalg.vector_norm(torch.stack(norms), 2) if norms else torch.zeros(())
