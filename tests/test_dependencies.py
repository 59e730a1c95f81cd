"""Every private part of a dependency the code relies on, checked directly: an upgrade that changes one fails here, by name.

pyproject.toml bounds Lightning below 2.7 and jsonargparse below 5 for these. Each check names where the code uses the
part; the behaviour built on it has its own test (named in the comment).
"""

import contextvars
import inspect

import torch
from lightning.pytorch.callbacks import ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.cli import LightningCLI
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.tensorboard import SummaryWriter

from tests.conftest import CONFIGS
from unlearning.cli import main
from unlearning.figures import png_summary
from unlearning.tasks import PretrainTask


def test_lightning_cli_marks_its_instantiation_in_a_context_variable():
    """tasks/base.py ``_from_cli``: hyperparameters hold the net's config only when the CLI builds the task."""
    from lightning.pytorch.core.mixins.hparams_mixin import _given_hyperparameters

    assert isinstance(_given_hyperparameters, contextvars.ContextVar)
    built_by_cli = main(["-c", str(CONFIGS / "pretrain.yaml")], run=False).model
    assert built_by_cli.hparams["net"]["class_path"] == "unlearning.models.SeedMLP"
    assert "net" not in PretrainTask(built_by_cli.net).hparams


def test_summary_writer_hands_out_its_file_writer(tmp_path):
    """tasks/base.py ``log_image``: PNG summaries encoded by the project go straight to the event file."""
    writer = SummaryWriter(str(tmp_path))
    file_writer = writer._get_file_writer()
    file_writer.add_summary(png_summary("t", torch.zeros(1, 2, 2, dtype=torch.uint8)), global_step=0)
    writer.close()
    assert list(tmp_path.glob("events.out.tfevents.*"))


def test_tensorboard_logger_keeps_its_version_where_run_logger_claims_it():
    """run_dirs.py ``RunLogger.version``: the version lives in ``_version``, the next free one comes from ``_get_next_version``."""
    logger = TensorBoardLogger("unused", version=7)
    assert logger._version == 7 and inspect.signature(TensorBoardLogger._get_next_version).parameters.keys() == {"self"}
    # behaviour: tests/test_reliability.py::test_run_logger_claims_a_fresh_folder_and_keeps_a_given_version


def test_tqdm_bar_decides_redraws_in_should_update():
    """training.py ``ThrottledProgressBar``: redraws are throttled by overriding ``_should_update(current, total)``."""
    assert list(inspect.signature(TQDMProgressBar._should_update).parameters) == ["self", "current", "total"]
    # behaviour: tests/test_cli.py::test_throttled_bar_redraws_at_most_every_min_interval_and_always_at_the_last_batch


def test_model_checkpoint_exposes_the_pieces_latest_checkpoint_saves_with():
    """checkpoints.py ``LatestCheckpoint.on_train_end``: the final state is saved through ModelCheckpoint's own steps."""
    for name, params in (
        ("_should_skip_saving_checkpoint", ["self", "trainer"]),
        ("_save_topk_checkpoint", ["self", "trainer", "monitor_candidates"]),
        ("_monitor_candidates", ["self", "trainer"]),
    ):
        assert list(inspect.signature(getattr(ModelCheckpoint, name)).parameters) == params, name
    # behaviour: tests/test_cli.py::test_last_checkpoint_holds_the_final_step_when_the_best_is_older


def test_lightning_cli_returns_each_subcommand_parser():
    """training.py ``_resolve_checkpoint``: the fit's config is dumped by its own parser to compare it with a run's config.yaml."""
    assert list(inspect.signature(LightningCLI._parser).parameters) == ["self", "subcommand"]
    # behaviour: tests/test_reliability.py::test_last_resumes_the_newest_run_of_the_same_configuration_and_the_config_records_the_file


def test_jsonargparse_lists_a_class_arguments_as_actions():
    """training.py ``_nearest_option``: the options nearest a misspelled one are read from a parser's ``_actions``."""
    from jsonargparse import ArgumentParser

    parser = ArgumentParser(exit_on_error=False)
    parser.add_class_arguments(PretrainTask, "x")
    assert "--x.log_figures" in {option for action in parser._actions for option in action.option_strings}
    # behaviour: tests/test_cli.py::test_a_mistyped_option_is_one_line_with_the_nearest_option


def test_lightning_cli_merges_checkpoint_hyperparameters_in_parse_ckpt_path():
    """training.py ``UnlearningCLI._parse_ckpt_path``: overridden so that a checkpoint chooses no class; were the merge moved
    elsewhere, a file could pick the task and network again."""
    assert "self._parse_ckpt_path()" in inspect.getsource(LightningCLI.__init__)
    assert "parse_object" in inspect.getsource(LightningCLI._parse_ckpt_path)
    # behaviour: tests/test_security.py::test_ckpt_path_refuses_every_payload, tests/test_reliability.py explicit resume tests
