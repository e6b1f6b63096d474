"""Named pretrained weights: listing, loading offline on both backends, checksums, and plain-matgl registration."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

import matgl_cdssl
from matgl_cdssl import BACKEND, convert_weights
from matgl_cdssl.cli import main
from matgl_cdssl.data import in_holdout_pool
from matgl_cdssl.hub import (
    PretrainedCard,
    get_card,
    list_models,
    load_model,
    pretrained_folder,
    read_config,
    read_skipped,
    register_pretrained,
)
from tests.helpers import finetune_with_matgl

NAME = "CDSSL-MEGNet-MP"


def test_list_models_and_card():
    models = list_models()
    assert NAME in models
    assert "Materials Project" in models[NAME]
    assert list_models("CDSSL-*") == models
    assert list_models("nothing*") == {}
    card = get_card(NAME)
    assert PretrainedCard.from_dict(json.loads(json.dumps(card.to_dict()))) == card
    assert card.cutoff == 4.0
    assert card.sigma > 0
    assert set(card.files) >= {"model.pt", "state.pt", "model.json"}
    readme = (pretrained_folder(NAME) / "README.md").read_text()
    assert "freshly initialised" in readme
    assert card.files["state.pt"] in readme


def test_the_card_says_which_labels_the_weights_saw(tmp_path, capsys, monkeypatch):
    """Leakage is a property of the weights: the card, matgl's shipped copy and a model folder each answer it."""
    from matgl_cdssl.hub import labels_seen, matgl_copy

    card = get_card(NAME)
    assert card.labels_seen == ()  # label-free pretraining
    old = {k: v for k, v in card.to_dict().items() if k != "labels_seen"}  # a card.json written before the field
    assert PretrainedCard.from_dict(old) == card
    joint = PretrainedCard.from_dict({**card.to_dict(), "labels_seen": ["mp_formation_energy"]})
    assert PretrainedCard.from_dict(json.loads(json.dumps(joint.to_dict()))).labels_seen == ("mp_formation_energy",)
    assert labels_seen(NAME) == ()
    eform = "MEGNet-MP-2018.6.1-Eform"
    assert labels_seen(eform) == labels_seen(matgl_copy(eform)) == ("mp_formation_energy",)
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "cdssl.json").write_text(json.dumps({"sigma": 0.3}))
    assert labels_seen(folder) == ()  # pretrained without labels
    (folder / "cdssl.json").write_text(json.dumps({"target": {"weight": 1.0, "mean": 0.0, "std": 1.0}}))
    assert labels_seen(folder) is None  # a joint pretraining that does not say on which labels: not recorded
    (folder / "cdssl.json").write_text(json.dumps({"target": {"weight": 1.0}, "labels_seen": ["mp_band_gap"]}))
    assert labels_seen(folder) == ("mp_band_gap",)
    assert labels_seen(tmp_path / "elsewhere") is None
    assert main(["list", "CDSSL-MEGNet-MP-*"]) == 0
    assert capsys.readouterr().out.strip().endswith("[no labels seen]")
    from matgl_cdssl.hub import _cards

    monkeypatch.setitem(_cards._REGISTRY, "CDSSL-joint-test", replace(joint, name="CDSSL-joint-test"))
    assert main(["list", "CDSSL-joint*"]) == 0
    assert "CDSSL-joint-test: " in (out := capsys.readouterr().out)
    assert out.strip().endswith("[labels seen: mp_formation_energy]")
    assert labels_seen("CDSSL-joint-test") == ("mp_formation_energy",)


def test_shipped_model_json_is_small_and_the_skipped_crystals_have_their_own_file():
    folder = pretrained_folder(NAME)
    metadata = json.loads((folder / "model.json").read_text())["metadata"]["cdssl"]
    assert "skipped" not in metadata
    assert (folder / "model.json").stat().st_size < 10_000
    config = read_config(folder)
    skipped = read_skipped(folder)
    assert len(skipped) == config["n_skipped"] == metadata["n_skipped"] == 239
    assert config["skipped_file"] in get_card(NAME).files  # checksummed like the weights
    assert all(r["id"].startswith("mp-") and "no neighbour within the cutoff" in r["reason"] for r in skipped)
    assert len({r["id"] for r in skipped}) == 239
    assert not any(in_holdout_pool(r["id"]) for r in skipped)  # all from the pretraining split


@pytest.mark.parametrize(
    ("name", "suggestion"), [("CDSSL-MEGNet-MQ", NAME), ("cdssl-megnet-mp", NAME), ("CDSSL-M3GNet", None)]
)
def test_unknown_names_list_known_ones(name, suggestion):
    with pytest.raises(ValueError, match="Unknown pretrained model") as info:
        load_model(name)
    message = str(info.value)
    assert NAME in message
    assert "list_models()" in message
    if suggestion:
        assert f"Did you mean '{suggestion}'" in message


def test_load_by_name_gives_plain_megnet_with_shipped_backbone():
    torch.manual_seed(0)
    model = load_model(NAME)
    assert type(model).__name__ == "MEGNet"
    assert type(model).__module__.startswith("matgl.models")
    folder = pretrained_folder(NAME)
    shipped = torch.load(folder / "state.pt", weights_only=True)
    if get_card(NAME).weights_backend != BACKEND:
        shipped = convert_weights(shipped, to=BACKEND)
    state = model.state_dict()
    backbone = [k for k in state if k.startswith(("embedding", "edge_encoder", "node_encoder", "blocks"))]
    readout = [k for k in state if k.startswith(("node_s2s", "edge_s2s", "output_proj")) and "weight" in k]
    assert backbone
    assert readout
    assert all(torch.equal(state[k], shipped[k]) for k in backbone)
    assert not any(torch.equal(state[k], shipped[k]) for k in readout), "the readout is freshly initialised"
    torch.manual_seed(0)
    again = load_model(NAME).state_dict()
    assert all(torch.equal(again[k], state[k]) for k in readout), "seeding controls the fresh readout"
    kept = load_model(NAME, fresh_readout=False).state_dict()
    assert all(torch.equal(kept[k], shipped[k]) for k in readout)


def test_checksum_is_verified(tmp_path):
    card = get_card(NAME)
    folder = tmp_path / "copy"
    shutil.copytree(pretrained_folder(NAME), folder)
    state = folder / "state.pt"
    state.write_bytes(state.read_bytes()[:-10] + b"corrupted!")
    register_pretrained(PretrainedCard.from_dict({**card.to_dict(), "name": "CDSSL-corrupted"}), folder)
    with pytest.raises(RuntimeError, match=r"checksum mismatch for .*state\.pt"):
        load_model("CDSSL-corrupted")
    with pytest.warns(UserWarning, match="overwriting"):
        register_pretrained(PretrainedCard.from_dict({**card.to_dict(), "name": "CDSSL-corrupted"}), folder)


@pytest.mark.slow
def test_paths_and_other_names_fall_through_to_matgl(tmp_path, megnet):
    megnet.save(tmp_path / "plain")
    assert type(load_model(tmp_path / "plain")).__name__ == "MEGNet"
    with pytest.raises((ValueError, RuntimeError)) as info:
        load_model(tmp_path / "does-not-exist")
    assert "Unknown pretrained model" not in str(info.value)  # matgl's own error, not ours


def test_finetune_pretrained_with_matgl_model_lightning_module(tmp_path, sample):
    """ModelLightningModule(model=load_model("CDSSL-MEGNet-MP"), data_mean=..., data_std=...) finetunes."""
    finetune_with_matgl(matgl_cdssl.load_model(NAME), sample, tmp_path, n=48)


def _python(code: str, home) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MATGL_BACKEND", "DGLBACKEND")}
    env["HOME"] = str(home)
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_register_makes_plain_matgl_load_model_work_offline(tmp_path):
    """After registration (twice: harmless), plain matgl.load_model finds the name, also in a new process."""
    check = (
        "import torch; import matgl_cdssl, matgl; from matgl_cdssl.hub import pretrained_folder;"
        "from matgl_cdssl import convert_weights, BACKEND;"
        "m = matgl.load_model('CDSSL-MEGNet-MP');"
        "ref = torch.load(pretrained_folder('CDSSL-MEGNet-MP') / 'state.pt', weights_only=True);"
        "ref = ref if BACKEND == 'pyg' else convert_weights(ref, to=BACKEND);"
        "print(type(m).__name__, all(torch.equal(v, ref[k]) for k, v in m.state_dict().items()))"
    )
    first = _python(
        "import matgl_cdssl; print(matgl_cdssl.register()); print(matgl_cdssl.register());" + check, tmp_path
    )
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip().endswith("MEGNet True")
    later = _python(check, tmp_path)  # a new process that does not call register()
    assert later.returncode == 0, later.stderr
    assert later.stdout.strip().endswith("MEGNet True")


def test_register_cli(tmp_path):
    result = _python("from matgl_cdssl.cli import main; raise SystemExit(main(['register']))", tmp_path)
    assert result.returncode == 0, result.stderr
    assert NAME in result.stdout


def test_list_cli(capsys):
    assert main(["list"]) == 0
    assert NAME in capsys.readouterr().out


def test_continue_pretraining_from_the_registered_weights(sample):
    model = matgl_cdssl.pretrain(
        sample.structures[:20],
        model=NAME,
        max_epochs=1,
        batch_size=10,
        enable_progress_bar=False,
        enable_model_summary=False,
        logger=False,
    )
    assert type(model).__name__ == "MEGNet"


@pytest.mark.skipif(BACKEND != "dgl", reason="matgl 2.2.x reads the Hub cache before its own cache of named models")
def test_dgl_registration_removes_a_hub_entry_even_when_already_registered(tmp_path):
    code = (
        "import warnings; import matgl_cdssl; from matgl.config import MATGL_CACHE;"
        "matgl_cdssl.register(); hub = MATGL_CACHE / 'models--materialyze--CDSSL-MEGNet-MP';"
        "(hub / 'refs').mkdir(parents=True); warnings.simplefilter('ignore'); matgl_cdssl.register();"
        "print('hub entry left:', hub.exists())"
    )
    result = _python(code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().endswith("hub entry left: False")


def test_releases_have_versioned_names_and_the_family_name_is_the_newest():
    from matgl_cdssl.hub import resolve

    releases = sorted(n for n in list_models() if n.startswith(f"{NAME}-"))
    assert "CDSSL-MEGNet-MP-2026.11" in releases
    newest = max(releases, key=lambda n: tuple(int(p) for p in n.rsplit("-", 1)[1].split(".")))
    assert resolve(NAME) == newest
    assert get_card(NAME) == get_card(newest)
    assert newest in list_models()[NAME]  # the listing says what the family name stands for
    assert get_card("CDSSL-MEGNet-MP-2026.11").version == "2026.11"
    assert get_card("CDSSL-MEGNet-MP-2026.11").family == NAME
    assert get_card("CDSSL-MEGNet-MP-2026.11").changes
    by_family = load_model(NAME, fresh_readout=False).state_dict()
    by_release = load_model(newest, fresh_readout=False).state_dict()
    assert all(torch.equal(by_family[k], by_release[k]) for k in by_family)


def test_the_first_release_keeps_its_weights():
    """Results published with CDSSL-MEGNet-MP-2026.11 stay reproducible: the same files as when it shipped."""
    files = get_card("CDSSL-MEGNet-MP-2026.11").files
    assert files["state.pt"] == "1ef05ead8998570ec8776cda2ec1b308626f5dcc5fbc41ca6a7d740d2ef877b1"
    assert files["cdssl_head.pt"] == "9b58765b2cde33fe123adc373b08f394d59c633a186ecf38ced0d526c6501056"
    assert pretrained_folder("CDSSL-MEGNet-MP-2026.11").name == "CDSSL-MEGNet-MP-2026.11"
