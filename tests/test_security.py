"""A checkpoint is data: fed to every entry point that reads one, no payload runs anything, and each is refused in one line.

Two kinds of payload: pickled objects whose ``__reduce__`` runs a command, and plain data (strings and lists,
which ``weights_only=True`` loads) naming a callable or a module whose import has side effects. Each payload
would create ``marker`` if it ran; the tests assert it never appears.
"""

from __future__ import annotations

import copy
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.conftest import CONFIGS, ROOT
from unlearning.checkpoints import build_net
from unlearning.cli import main
from unlearning.errors import UsageError
from unlearning.evaluation import evaluate_against
from unlearning.evaluation.calibrate import calibration_metrics
from unlearning.evaluation.suite import Budget
from unlearning.tasks import PretrainTask

UNLEARN = CONFIGS / "unlearn" / "selective_gradient.yaml"


class Touch:
    """A pickled object that runs ``touch marker`` when it is unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_payloads(source: dict, marker: Path, folder: Path) -> dict[str, Path]:
    """The pickle payloads: an extra key, inside ``hyper_parameters``, a bare object, a raw pickle and torch's legacy format."""
    files = {}
    for name, obj, how in (
        ("extra_key", {**source, "extra": Touch(marker)}, "zip"),
        ("in_hparams", {**source, "hyper_parameters": {**source["hyper_parameters"], "x": Touch(marker)}}, "zip"),
        ("bare_object", Touch(marker), "zip"),
        ("raw_pickle", {**source, "extra": Touch(marker)}, "pickle"),
        ("legacy_format", {**source, "extra": Touch(marker)}, "legacy"),
    ):
        path = folder / f"{name}.ckpt"
        if how == "pickle":
            path.write_bytes(pickle.dumps(obj))
        else:
            torch.save(obj, path, _use_new_zipfile_serialization=how == "zip")
        files[name] = path
    return files


def _plain_payloads(source: dict, marker: Path, folder: Path) -> dict[str, Path]:
    """Plain-data payloads: class paths naming a command, at the top, nested, and a module that runs code on import."""
    (folder / "side_effect_nets.py").write_text(f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Net:\n    pass\n")
    run = {"class_path": "subprocess.run", "init_args": {"args": ["touch", str(marker)]}}
    hparams = source["hyper_parameters"]
    variants = {
        "net_class_path": {**hparams, "net": run},
        "task_class_path": {**hparams, "_class_path": "subprocess.run"},
        "nested_init_args": {**hparams, "net": {"class_path": "unlearning.models.SeedMLP", "init_args": {"num_classes": run}}},
        "import_side_effect": {**hparams, "net": {"class_path": "side_effect_nets.Net"}},
        "instantiator": {**hparams, "_instantiator": "side_effect_nets.Net"},
    }
    files = {}
    for name, hp in variants.items():
        checkpoint = copy.copy(source)
        checkpoint["hyper_parameters"] = hp
        files[name] = folder / f"{name}.ckpt"
        torch.save(checkpoint, files[name])
    return files


@pytest.fixture(scope="module")
def payloads(pretrained_ckpt, tmp_path_factory):
    """``{name: file}`` for every payload, the marker each would create, and the folder that holds the side-effect module."""
    folder = tmp_path_factory.mktemp("payloads")
    marker = folder / "marker"
    source = torch.load(pretrained_ckpt, map_location="cpu", weights_only=True)
    return {**_pickle_payloads(source, marker, folder), **_plain_payloads(source, marker, folder)}, marker, folder


@pytest.fixture
def importable(payloads, monkeypatch):
    """The side-effect module importable, as a module on the user's path would be."""
    files, marker, folder = payloads
    monkeypatch.syspath_prepend(str(folder))
    yield files, marker
    sys.modules.pop("side_effect_nets", None)
    assert not marker.exists(), "a payload ran"


def _refused(call) -> str:
    with pytest.raises(UsageError) as error:
        call()
    assert "\n" not in str(error.value), str(error.value)
    return str(error.value)


def test_evaluate_refuses_every_payload_in_every_role(importable, pretrained_ckpt, oracle_ckpt, tmp_path):
    files, _ = importable
    for name, payload in files.items():
        for role in ("--ckpt", "--oracle", "--pretrained"):
            paths = {"--ckpt": pretrained_ckpt, "--oracle": oracle_ckpt, "--pretrained": pretrained_ckpt, role: payload}
            message = _refused(
                lambda paths=paths: main(["evaluate", "--out", str(tmp_path), *[str(a) for item in paths.items() for a in item]])
            )
            assert str(payload) in message, (name, message)


def test_a_plain_data_class_path_is_refused_naming_the_file_and_the_key(importable):
    files, _ = importable
    assert "hyper_parameters.net.class_path names subprocess.run" in _refused(lambda: build_net(files["net_class_path"]))
    assert "--allow-module side_effect_nets" in _refused(lambda: build_net(files["import_side_effect"]))
    assert "hyper_parameters.net.init_args.num_classes.class_path" in _refused(lambda: build_net(files["nested_init_args"]))
    for name in ("extra_key", "in_hparams", "legacy_format"):
        assert "holds a pickled Python object (posix.system) and loading it could run code" in _refused(
            lambda name=name: build_net(files[name])
        )


def test_a_module_the_user_allows_is_imported(importable, tmp_path):
    """``--allow-module`` is the user's say-so: then, and only then, the module is imported (and here runs its code)."""
    files, marker = importable
    with pytest.raises(UsageError, match="not a Module class"):
        build_net(files["import_side_effect"], allow_modules=["side_effect_nets"])
    assert marker.exists()
    marker.unlink()


@pytest.mark.parametrize("command", ["fit", "validate", "test"])
def test_ckpt_path_refuses_every_payload(importable, tmp_path, command):
    files, _ = importable
    for payload in files.values():
        _refused(
            lambda payload=payload: main(
                [command, "-c", str(CONFIGS / "pretrain.yaml"), f"--trainer.default_root_dir={tmp_path}", f"--ckpt_path={payload}"]
            )
        )
    assert not list(tmp_path.rglob("*"))


def test_weights_refuse_every_pickle_payload(importable, tmp_path):
    files, _ = importable
    for name, payload in files.items():
        if name in ("extra_key", "in_hparams", "bare_object", "raw_pickle", "legacy_format"):
            _refused(lambda payload=payload: main(["fit", "-c", str(UNLEARN), f"--model.init_args.weights={payload}",
                                                   f"--trainer.default_root_dir={tmp_path}"]))  # fmt: skip
    assert not list(tmp_path.rglob("*"))


def test_load_from_checkpoint_refuses_every_payload(importable):
    files, _ = importable
    for payload in files.values():
        _refused(lambda payload=payload: PretrainTask.load_from_checkpoint(payload))


def test_the_bench_and_calibration_refuse_a_planted_checkpoint(importable, pretrained_ckpt, oracle_ckpt, tmp_path):
    """The bench's evidence and the calibration rebuild networks from the run folders they find: a file planted there."""
    files, _ = importable
    for payload in files.values():
        checkpoints = {"pretrained": pretrained_ckpt, "oracle": oracle_ckpt, "method": payload}
        _refused(lambda checkpoints=checkpoints: evaluate_against(checkpoints, "oracle", "pretrained", seed=0))
        results = tmp_path / str(payload.stem)
        (results / "cells").mkdir(parents=True)
        rows = [{"method": stage, "checkpoint": str(payload)} for stage in ("pretrained", "oracle", "selective_gradient", "head_mask")]
        (results / "cells" / "forget9-seed0-0123456789ab.json").write_text(json.dumps({"rows": rows}))
        _refused(lambda results=results: calibration_metrics(results, [0], Budget()))


def test_the_console_says_why_a_pickle_was_refused_in_one_line_with_exit_2(payloads, pretrained_ckpt, oracle_ckpt):
    files, marker, _ = payloads
    result = subprocess.run(
        [sys.executable, "-m", "unlearning", "evaluate", "--ckpt", str(files["extra_key"]), "--oracle", str(oracle_ckpt),
         "--pretrained", str(pretrained_ckpt)],
        capture_output=True, text=True, cwd=ROOT, timeout=120, check=False,
    )  # fmt: skip
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "holds a pickled Python object (posix.system) and loading it could run code" in result.stderr
    assert "weights_only" not in result.stderr  # our words, not torch's paragraph
    assert not marker.exists()
