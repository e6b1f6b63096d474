"""``predict``: a finetuned model (or an ensemble of them) on many crystals, batched, in input order."""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from matgl_cdssl._backend import get_backend
from matgl_cdssl.data import build_dataset, read_structures
from matgl_cdssl.hub import CONFIG_FILE, Ensemble, list_models, load_model, read_config

if TYPE_CHECKING:
    from collections.abc import Sequence

    from torch import nn

__all__ = ["EnsembleResult", "Predictions", "calibration", "dataset_outputs", "predict", "predict_all"]


@dataclass
class Predictions:
    """What :func:`predict_all` returns.

    Attributes:
        mean: One prediction per input crystal, in input order (NaN for a crystal left out).
        std: The ensemble members' standard deviation per crystal (NaN for a single model or a left-out crystal).
        names: The crystals' names (``structures[i]``, a file path, ``path[id]``), in input order.
        reasons: Name -> why that crystal got no prediction (``skip_invalid=True``).
    """

    mean: np.ndarray
    std: np.ndarray
    names: list[str]
    reasons: dict[str, str]


_FINETUNE_FIRST = (
    "finetune it first (finetune() or `cdssl finetune`), then predict with the result or the folder it writes"
)


def _loaded(model: Any) -> Any:
    """``model``, or the model or ensemble in the folder ``model`` names (pretrained weights are refused).

    A registered pretrained name is refused, and so is a folder written by ``pretrain()`` (it holds ``cdssl.json``),
    given as its ``model/`` folder or as the run's folder: its readout was never trained, or, for a joint run
    (``pretrain(targets=...)``, a ``"target"`` entry), trained next to the pretext in normalised units.
    """
    if not isinstance(model, (str, Path)):
        return model
    if str(model) in list_models():
        raise ValueError(f"{model!r} is pretrained weights, whose readout was never trained: {_FINETUNE_FIRST}")
    for folder in (Path(model), Path(model) / "model"):
        if (folder / CONFIG_FILE).is_file():
            joint = bool(read_config(folder).get("target"))
            readout = "was trained next to the pretext, in normalised units" if joint else "was never trained"
            raise ValueError(
                f"{folder} was written by pretrain(), not finetune(): its readout {readout}; {_FINETUNE_FIRST}"
            )
    return load_model(model)  # an Ensemble for an ensemble folder, with its metadata (std_scale)


def _members(model: Any) -> list[tuple[nn.Module, float, float]]:
    """``(network, scale, shift)`` per member: the property is ``network output * scale + shift``.

    Accepts a MEGNet whose output is the property (a folder written by ``cdssl finetune``, a ``property_model()``),
    a :class:`~matgl_cdssl.apps.FinetuneResult` (its normalised model with ``data_std`` and ``data_mean``), an
    :class:`~matgl_cdssl.apps.EnsembleResult`, an :class:`~matgl_cdssl.hub.Ensemble`, or a folder of either.
    """
    model = _loaded(model)
    if hasattr(model, "results") and hasattr(model, "ensemble"):  # EnsembleResult
        return [m for result in model.results for m in _members(result)]
    if hasattr(model, "data_mean") and hasattr(model, "model"):  # FinetuneResult
        return [(model.model, float(model.data_std), float(model.data_mean))]
    if isinstance(model, Ensemble):
        return [(member, 1.0, 0.0) for member in model.members]
    if not all(hasattr(model, a) for a in ("element_types", "cutoff", "forward")):
        raise ValueError(
            f"expected a finetuned matgl model, a FinetuneResult, an ensemble or a model folder; got "
            f"{type(model).__name__}"
        )
    return [(model, 1.0, 0.0)]


def predict_all(
    model: Any,
    structures: Sequence[Any],
    *,
    batch_size: int = 64,
    state_attr: Any = None,
    skip_invalid: bool = False,
    names: Sequence[str] | None = None,
    progress: bool = False,
) -> Predictions:
    """:func:`predict` with everything it knows: mean, standard deviation, names and why crystals were left out.

    Arguments are those of :func:`predict`; ``names`` names the crystals in messages (default ``structures[i]`` or
    the file path), and ``progress`` shows a progress bar over the batches.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer; got {batch_size!r}")
    model = _loaded(model)  # once: its members below, and the spread's scale
    members = _members(model)
    first = members[0][0]
    read_names, structs = read_structures(structures)
    names = [str(n) for n in (read_names if names is None else names)]
    if len(names) != len(structs):
        raise ValueError(f"names has {len(names)} entries for {len(structs)} crystals")
    unique = names if len(set(names)) == len(names) else [f"{n} (#{i})" for i, n in enumerate(names)]
    dataset, _, skipped = build_dataset(
        structs,
        element_types=first.element_types,
        cutoff=first.cutoff,
        labels={"row": list(range(len(structs)))},  # the first label is the one matgl's collate batches
        state_attr=state_attr,
        skip_invalid=True,
        names=unique,
        log_skips=False,
        allow_isolated=True,  # as matgl's predict_structure: an atom without neighbours receives no messages
    )
    if skipped and not skip_invalid:
        name, reason = skipped[0]
        more = f" ({len(skipped) - 1} more invalid crystal(s); skip_invalid=True predicts the rest)"
        raise ValueError(f"{name} {reason}" + (more if len(skipped) > 1 else ""))
    if skipped:
        warnings.warn(f"predict: {len(skipped)} invalid crystal(s) got no prediction (NaN)", stacklevel=3)

    outputs, rows = dataset_outputs(members, dataset, batch_size=int(batch_size), progress=progress)
    out = np.full((len(members), len(structs)), np.nan)
    out[:, rows.astype(int)] = outputs
    std = out.std(axis=0, ddof=1) * _std_scale(model) if len(members) > 1 else np.full(len(structs), np.nan)
    return Predictions(out.mean(axis=0), std, names, {name: reason for name, reason in skipped})


def _std_scale(model: Any) -> float:
    """The factor an ensemble's spread is scaled by (chosen on validation data by :func:`finetune`), else 1."""
    if hasattr(model, "std_scale"):  # EnsembleResult
        return float(model.std_scale)
    return float((getattr(model, "metadata", None) or {}).get("std_scale", 1.0))


def dataset_outputs(
    members: Any, dataset: Any, *, batch_size: int = 64, progress: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """Every member's prediction for every item of a matgl dataset, and the items' first labels, in dataset order.

    Args:
        members: What :func:`predict` takes, or ``(network, scale, shift)`` triples.
        dataset: A matgl dataset (or ``Subset``) whose items carry one label first (a row index, or the target).
        batch_size: Items per batch.
        progress: Show a progress bar over the batches.

    Returns:
        ``(outputs, labels)``: shape ``(K, n)`` and ``(n,)``.
    """
    from matgl.utils.training import ModelLightningModule
    from tqdm.auto import tqdm

    if not isinstance(members, list):
        members = _members(members)
    _, loader = get_backend().loaders(dataset, dataset, batch_size=batch_size)
    # matgl's module turns lattices into positions and image shifts on either backend, exactly as in training.
    modules = [(ModelLightningModule(model=net), scale, shift) for net, scale, shift in members]
    outputs: list[np.ndarray] = []
    labels: list[np.ndarray] = []
    modes = [net.training for net, _, _ in members]
    try:
        for net, _, _ in members:
            net.eval()
        with torch.inference_mode():
            for g, lattice, state, label in tqdm(loader, disable=not progress, desc="predict", unit="batch"):
                labels.append(label.reshape(-1).double().cpu().numpy())
                batch = []
                for module, scale, shift in modules:
                    device = next(module.model.parameters()).device
                    raw = module(g=g.to(device), lat=lattice.to(device), state_attr=state.to(device))
                    batch.append(raw.reshape(len(labels[-1]), -1)[:, 0].double().cpu().numpy() * scale + shift)
                outputs.append(np.stack(batch))
    finally:
        for (net, _, _), mode in zip(members, modes, strict=True):
            net.train(mode)
    return np.concatenate(outputs, axis=1), np.concatenate(labels)


def predict(
    model: Any,
    structures: Sequence[Any],
    *,
    batch_size: int = 64,
    state_attr: Any = None,
    return_std: bool = False,
    skip_invalid: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Predict a property for many crystals with a finetuned MEGNet or an ensemble, batched, in input order.

    Crystals are read, checked and converted as everywhere in the package (:func:`~matgl_cdssl.data.build_dataset`:
    the model's element types and cutoff) and batched by matgl's dataset and loader; the model runs in eval mode
    under ``torch.inference_mode`` on its own device, and its mode is restored afterwards. As in matgl's
    ``predict_structure``, a crystal in which some atom has no neighbour within the cutoff is predicted (that atom
    receives no messages), with one warning that counts such crystals; a crystal with no edge at all cannot be.

    Args:
        model: A matgl MEGNet whose output is the property (a folder written by ``cdssl finetune``, or
            ``FinetuneResult.property_model()``), a :class:`~matgl_cdssl.apps.FinetuneResult`, an ensemble
            (:class:`~matgl_cdssl.apps.EnsembleResult`, :class:`~matgl_cdssl.hub.Ensemble`, or its folder), or the
            folder of any of these.
        structures: pymatgen Structures, ASE Atoms or files (:func:`~matgl_cdssl.data.read_structures`).
        batch_size: Crystals per batch; the result does not depend on it (up to float rounding).
        state_attr: MEGNet state attributes per crystal, shape ``(n, k)``, for a model finetuned with them.
        return_std: Also return the uncertainty: the ensemble members' standard deviation per crystal (``ddof=1``),
            times the ensemble's ``std_scale`` (chosen on validation data by ``finetune(..., ensemble=K)``, 1 when
            unknown); NaN for a single model.
        skip_invalid: Give an invalid crystal a NaN prediction, with one warning, instead of raising.

    Returns:
        The predictions, shape ``(n,)`` (the members' mean for an ensemble), or ``(mean, std)`` with
        ``return_std``.

    Raises:
        ValueError: An invalid crystal, named with the reason (unless ``skip_invalid``); a pretrained (never
            finetuned) model name or a folder written by ``pretrain()``; or a bad ``batch_size``.

    Example:
        >>> import matgl_cdssl
        >>> result = matgl_cdssl.finetune("CDSSL-MEGNet-MP", matgl_cdssl.load_sample(30).structures,
        ...                               matgl_cdssl.load_sample(30).labels["band_gap_eV"], max_epochs=1,
        ...                               enable_progress_bar=False, enable_model_summary=False)
        >>> predict(result, matgl_cdssl.load_sample(3).structures).shape
        (3,)
    """
    found = predict_all(model, structures, batch_size=batch_size, state_attr=state_attr, skip_invalid=skip_invalid)
    return (found.mean, found.std) if return_std else found.mean


@dataclass
class EnsembleResult:
    """What :func:`~matgl_cdssl.finetune` returns with ``ensemble=K``: the K members and the ensemble's own metrics.

    Attributes:
        results: Each member's :class:`~matgl_cdssl.apps.FinetuneResult` (member ``k`` from seed ``seed + k``).
        metrics: ``members``, ``std_scale``, the members' mean ``best_val_MAE``, the ensemble's ``val_MAE`` (of
            the members' mean on the validation crystals: what to choose between ensembles on) and, with test data, the
            ensemble's ``test_MAE`` (of the members' mean), ``member_test_MAE`` (the members' average),
            ``test_spearman_error_std`` (Spearman correlation between the absolute error and the uncertainty),
            ``test_within_1_std`` and ``test_within_2_std`` (fractions of test crystals whose error is within one and
            two uncertainties), all on the same test crystals; ``test_left_out`` counts the invalid test crystals
            left out (``skip_invalid=True``), when there are any.
        std_scale: The factor by which the members' standard deviation is scaled to give the uncertainty, chosen on
            the validation crystals (:meth:`evaluate`).
        starts: Each member's start (the model name or folder it was finetuned from), in member order.
        left_out: Name -> reason, for each test crystal left out of the test metrics.
    """

    results: list[Any]
    metrics: dict[str, float] = field(default_factory=dict)
    std_scale: float = 1.0
    starts: list[str] = field(default_factory=list)
    left_out: dict[str, str] = field(default_factory=dict)

    @property
    def ensemble(self) -> Ensemble:
        """The members as property models (raw output = the property), as one :class:`~matgl_cdssl.hub.Ensemble`."""
        return self.property_model()

    def property_model(self) -> Ensemble:
        """An :class:`~matgl_cdssl.hub.Ensemble` of the members' property models; ``.save(folder)`` writes it.

        Its metadata (``ensemble.json``) records ``std_scale``, the metrics, each member's start and the test
        crystals left out.
        """
        metadata: dict[str, Any] = {"std_scale": self.std_scale, "metrics": self.metrics, "starts": self.starts}
        if self.left_out:
            metadata["test_left_out"] = self.left_out
        return Ensemble([r.property_model() for r in self.results], metadata)

    @classmethod
    def evaluate(
        cls,
        results: list[Any],
        val: Any,
        test: Any = None,
        *,
        starts: Sequence[str] = (),
        left_out: dict[str, str] | None = None,
    ) -> EnsembleResult:
        """The ensemble of ``results``: its spread's scale from the validation set ``val``, its test metrics.

        The members share a pretrained backbone, so their spread understates the error; ``std_scale`` is the factor
        that makes it right on the validation crystals in the Gaussian maximum-likelihood sense
        (``sqrt(mean((error / std)^2))``, sigma scaling). The test set, when given, is touched once, after: the
        ensemble and its members are scored on the same crystals, those of ``test`` (the dataset the members were
        tested on); ``left_out`` names the invalid test crystals that it lacks, with a warning.

        Args:
            results: The members' :class:`~matgl_cdssl.apps.FinetuneResult`.
            val: The validation dataset (items carry the target first).
            test: The test dataset, or None.
            starts: Each member's start, recorded in the result.
            left_out: Name -> reason for the test crystals left out of ``test``.
        """
        ensemble = cls(results, starts=[str(s) for s in starts], left_out=dict(left_out or {}))
        outputs, y_val = dataset_outputs(ensemble, val)
        spread = outputs.std(axis=0, ddof=1)
        ok = spread > 0
        z = (outputs.mean(0) - y_val)[ok] / spread[ok]
        ensemble.std_scale = float(np.sqrt(np.mean(z**2))) if ok.any() else 1.0
        ensemble.metrics = {"members": float(len(results)), "std_scale": ensemble.std_scale}
        ensemble.metrics["best_val_MAE"] = float(np.mean([r.metrics["best_val_MAE"] for r in results]))
        ensemble.metrics["val_MAE"] = float(np.abs(outputs.mean(0) - y_val).mean())  # the ensemble's own
        if test is not None:
            outputs, y = dataset_outputs(ensemble, test)
            std = outputs.std(axis=0, ddof=1) * ensemble.std_scale
            ensemble.metrics.update(calibration(y, outputs.mean(0), std))
            ensemble.metrics["member_test_MAE"] = float(np.abs(outputs - y).mean(axis=1).mean())
            if ensemble.left_out:
                ensemble.metrics["test_left_out"] = float(len(ensemble.left_out))
                warnings.warn(
                    f"finetune: {len(ensemble.left_out)} invalid test crystal(s) left out of the ensemble's test "
                    f"metrics (test_MAE and member_test_MAE alike): {', '.join(ensemble.left_out)}",
                    stacklevel=3,
                )
        return ensemble


def calibration(y: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, float]:
    """How well an ensemble's spread tracks its error: MAE, Spearman(|error|, std), fractions within 1 and 2 std."""
    from scipy.stats import spearmanr

    error = np.abs(np.asarray(mean, dtype=float) - np.asarray(y, dtype=float))
    std = np.asarray(std, dtype=float)
    return {
        "test_MAE": float(error.mean()),
        "test_spearman_error_std": float(spearmanr(error, std).statistic),
        "test_within_1_std": float(np.mean(error <= std)),
        "test_within_2_std": float(np.mean(error <= 2 * std)),
    }
