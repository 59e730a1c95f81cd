"""The evidence suite: each check on hand-made or trivially known inputs, then ``evaluate`` end to end on real checkpoints."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.conftest import train_checkpoint
from unlearning.checkpoints import build_net
from unlearning.errors import UsageError
from unlearning.evaluation import (
    Thresholds,
    accuracy_check,
    evaluate_against,
    linear_probe,
    mia_check,
    mia_features,
    notebook_metrics,
    oracle_gap,
    reach_class,
    relearn_steps,
    verdict,
)
from unlearning.evaluation.cli import evaluate_main
from unlearning.evaluation.data import load_eval_data
from unlearning.evaluation.inputs import torch_threads
from unlearning.evaluation.outputs import label_log_probabilities
from unlearning.evaluation.suite import Budget, evaluate_net
from unlearning.metrics import unit_to_label
from unlearning.models import LogisticRegression

#: a smaller budget than the command's default, enough for every verdict below
FAST = ["--train-samples", "3000", "--mia-per-side", "2000", "--reach-starts", "16", "--relearn-steps", "60"]


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Like the command: these checks are many small steps, which a second thread slows down on a busy 2-core machine."""
    with torch_threads(1):
        yield


# -- checkpoints through the real CLI -----------------------------------------------------------
@pytest.fixture(scope="session")
def evaluation_pretrained(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A full epoch: shorter runs leave features that barely know any digit, so nothing could be hidden."""
    return train_checkpoint(tmp_path_factory, "evaluation_pretrained", batches="1.0")


@pytest.fixture(scope="session")
def evaluation_oracle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_checkpoint(tmp_path_factory, "evaluation_oracle", "--model.init_args.stage=oracle", batches="1.0")


def _edited(source: Path, target: Path, bias_9: float | None = None, **hparams) -> Path:
    """A copy of a checkpoint with the class-9 head bias and some hyperparameters replaced."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    if bias_9 is not None:
        checkpoint["state_dict"]["net.head.bias"][9] = bias_9
    checkpoint["hyper_parameters"].update(hparams)
    torch.save(checkpoint, target)
    return target


@pytest.fixture(scope="session")
def evaluation_head_mask(evaluation_pretrained: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The notebook's hiding trick: the pretrained net with digit 9's logit pushed to -1e4 through the head's bias."""
    return _edited(evaluation_pretrained, tmp_path_factory.mktemp("head_mask") / "head_mask.ckpt", bias_9=-1e4, stage="head_mask")


@pytest.fixture(scope="session")
def mnist():
    return load_eval_data("data", [9], [], None, 5000, 0)


# -- check 1 and 7: accuracy -------------------------------------------------------------------
def test_accuracy_check_on_hand_made_predictions():
    forget_y, forget_p = torch.tensor([9, 9, 9, 9]), torch.tensor([9, 1, 2, 3])
    retain_y, retain_p = torch.tensor([0, 1, 2, 3]), torch.tensor([0, 1, 2, 0])
    test_y = torch.tensor([0, 0, 1, 3, 9, 9])
    test_p = torch.tensor([0, 1, 1, 3, 9, 0])
    result = accuracy_check(forget_y, forget_p, retain_y, retain_p, test_y, test_p, [9], [3])
    assert result["ua"] == 75.0 and result["ra"] == 75.0
    assert result["ta"] == pytest.approx(200 / 3)  # classes 0 and 1 only: 3 is new, 9 forgotten
    assert result["forget_test_acc"] == 50.0 and result["new_acc"] == 100.0 and result["old_acc"] == 50.0
    assert result["class_acc"][0] == 50.0 and math.isnan(result["class_acc"][5])
    assert result["confusion"][9][0] == 1
    random_mode = accuracy_check(forget_y, forget_p, retain_y, retain_p, test_y, test_p, [], [])
    assert "forget_test_acc" not in random_mode and random_mode["ta"] == pytest.approx(400 / 6)


def test_notebook_metrics_are_the_retrain_notebooks_ratios():
    assert notebook_metrics(89.9, 90.02, 96.02) == {
        "forgetting_effectiveness": pytest.approx(0.899),
        "utility_preservation": pytest.approx(0.9375, abs=1e-4),
    }


def test_label_probabilities_follow_reused_units():
    logits = torch.log(torch.tensor([[0.1, 0.0, 0.0, 0.2, 0.0, 0.0, 0.3, 0.0, 0.0, 0.4]]).clamp_min(1e-30))
    probs = label_log_probabilities(logits, unit_to_label(10, [6], [3])).exp()
    assert probs[0, 3] == pytest.approx(0.5) and probs[0, 6] == 0 and probs.sum() == pytest.approx(1.0)


# -- check 2: MIA --------------------------------------------------------------------------------
def _confident(conf: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Probabilities over 10 classes with ``conf`` on the true label 0 and the rest spread evenly."""
    probs = ((1 - conf) / 9)[:, None].repeat(1, 10)
    probs[:, 0] = conf
    labels = torch.zeros(len(conf), dtype=torch.long)
    return probs, labels, probs.argmax(1)


@pytest.mark.parametrize("attack", ["logistic", "svc"])
def test_mia_calls_unseen_samples_non_members_and_seen_ones_members(attack):
    generator = torch.Generator().manual_seed(0)
    members = mia_features(*_confident(0.95 + 0.05 * torch.rand(1000, generator=generator, dtype=torch.float64)))
    non_members = mia_features(*_confident(0.3 + 0.5 * torch.rand(1000, generator=generator, dtype=torch.float64)))
    unseen = mia_features(*_confident(0.3 + 0.5 * torch.rand(500, generator=generator, dtype=torch.float64)))
    seen = mia_features(*_confident(0.95 + 0.05 * torch.rand(500, generator=generator, dtype=torch.float64)))
    forgotten = mia_check(members, non_members, unseen, attack=attack)
    remembered = mia_check(members, non_members, seen, attack=attack)
    for feature in ("confidence", "entropy", "m_entropy"):
        assert forgotten[f"mia_{feature}"] > 95 and remembered[f"mia_{feature}"] < 5, feature
    assert forgotten["mia"] == forgotten["mia_m_entropy"]
    assert mia_check(members, non_members, unseen, attack=attack) == forgotten  # seeded: the same numbers again


def test_mia_features_by_hand():
    probs = torch.tensor([[0.1] * 10, [1.0] + [0.0] * 9], dtype=torch.float64)
    features = mia_features(probs, torch.tensor([0, 0]), torch.tensor([3, 0]))
    assert features["correctness"].ravel().tolist() == [0.0, 1.0]
    assert features["confidence"].ravel().tolist() == pytest.approx([0.1, 1.0])
    assert features["entropy"].ravel() == pytest.approx([math.log(10), 0.0])
    assert features["m_entropy"][1, 0] == pytest.approx(0.0)  # confidently right: no uncertainty left
    assert features["m_entropy"][0, 0] == pytest.approx(-0.9 * math.log(0.1) - 9 * 0.1 * math.log(0.9))


# -- check 3 and 8: gap and verdict ------------------------------------------------------------
ORACLE = {
    "ua": 100.0, "ra": 97.0, "ta": 96.0, "mia": 100.0, "forget_test_acc": 0.0, "probe_auc": 0.96, "relearn_steps": 20,
    "reach_noise_linf": 0.0, "reach_real_linf": 8.0,
}  # fmt: skip


def test_oracle_gap_is_salun_avg_gap():
    gap = oracle_gap({**ORACLE, "ua": 90.0, "ra": 99.0, "ta": 95.0, "mia": 80.0}, ORACLE)
    assert gap == {"ua": 10.0, "ra": 2.0, "ta": 1.0, "mia": 20.0, "avg": 8.25}


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({}, "forgets"),
        ({"forget_test_acc": 40.0}, "incomplete"),
        ({"ua": 50.0}, "incomplete"),
        ({"reach_real_linf": 60.0}, "incomplete"),
        ({"reach_real_linf": 30.0}, "forgets"),  # within the reach margin of the oracle's 8%
        ({"probe_auc": 0.995}, "hides"),
        ({"probe_auc": 0.97}, "forgets"),  # better than the oracle, but not far
        ({"relearn_steps": 3}, "hides"),
        ({"relearn_steps": 90}, "forgets"),
        ({"relearn_steps": None}, "forgets"),
        ({"probe_auc": 0.999, "forget_test_acc": 80.0}, "incomplete"),  # output evidence outranks hiding
    ],
)
def test_verdict_on_hand_made_numbers(changes, expected):
    result = verdict({**ORACLE, **changes}, ORACLE)
    assert result["verdict"] == expected
    assert bool(result["output_evidence"] or result["representation_evidence"]) == (expected != "forgets")


def test_verdict_when_the_oracle_never_relearns_and_in_random_mode():
    assert verdict({**ORACLE, "relearn_steps": 40}, {**ORACLE, "relearn_steps": None})["verdict"] == "hides"
    random_oracle = {"ua": 3.0, "ra": 97.0, "ta": 96.0, "mia": 60.0}
    assert verdict(random_oracle, random_oracle)["verdict"] == "forgets"
    assert verdict({**random_oracle, "mia": 20.0}, random_oracle)["verdict"] == "incomplete"
    assert verdict({**random_oracle, "ua": 0.0}, random_oracle, Thresholds(acc_margin=1.0))["verdict"] == "incomplete"


# -- check 5: linear probe ---------------------------------------------------------------------
def test_probe_scores_high_on_features_that_encode_the_class_and_chance_on_noise():
    rng = np.random.default_rng(0)
    is_forget = rng.random(6000) < 0.1
    noise = rng.normal(size=(6000, 20))
    encoding = noise.copy()
    encoding[:, 3] += 4.0 * is_forget
    train, test = slice(0, 4000), slice(4000, None)
    knows = linear_probe(encoding[train], is_forget[train], encoding[test], is_forget[test])
    blind = linear_probe(noise[train], is_forget[train], noise[test], is_forget[test])
    assert knows["probe_acc"] > 95 and knows["probe_auc"] > 0.99
    assert abs(blind["probe_acc"] - 50) < 8 and abs(blind["probe_auc"] - 0.5) < 0.08


# -- check 6: reachability ---------------------------------------------------------------------
BALLS = (("linf", 0.3, 0.02), ("l2", 3.0, 0.2))


@pytest.fixture(scope="session")
def other_digits(mnist) -> torch.Tensor:
    """32 test images that are not nines, in pixel space."""
    return mnist.test_x[mnist.test_y != 9][:32] * 0.3081 + 0.1307


@pytest.mark.parametrize(("norm", "eps", "step"), BALLS)
def test_reachability_finds_the_class_in_a_model_that_knows_it_without_leaving_the_ball(
    norm, eps, step, evaluation_pretrained, other_digits
):
    pretrained = build_net(evaluation_pretrained)
    found = reach_class(pretrained, other_digits, [9], norm, eps, step, 50)
    assert found.summary()["reach"] > 60
    assert (pretrained((found.images[found.reached] - 0.1307) / 0.3081).argmax(1) == 9).all()
    distance = (found.images - other_digits).flatten(1)
    assert (distance.abs().amax(1) if norm == "linf" else distance.norm(dim=1)).max() <= eps + 1e-5
    assert found.images.min() >= 0 and found.images.max() <= 1


def test_reachability_fails_within_the_budget_in_the_oracle_and_where_the_class_cannot_be_output(
    evaluation_oracle, evaluation_head_mask, other_digits
):
    assert reach_class(build_net(evaluation_oracle), other_digits, [9], "l2", 3.0, 0.2, 50).summary() == {"reach": 0.0, "reach_steps": None}
    masked = build_net(evaluation_head_mask)
    noise = torch.rand(32, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    for starts in (other_digits, noise):
        for norm, eps, step in BALLS:
            assert reach_class(masked, starts, [9], norm, eps, step, 50).summary()["reach"] == 0.0


# -- check 4: relearn --------------------------------------------------------------------------
def test_relearn_is_immediate_for_a_model_that_knows_the_class_and_takes_steps_for_the_oracle(
    evaluation_pretrained, evaluation_oracle, mnist
):
    nines, held_out = mnist.splits["forget"][:100], mnist.test_y == 9
    rows = torch.cat([nines, mnist.splits["retain"][:100]])
    args = (mnist.train_x[rows], mnist.train_y[rows], mnist.test_x[held_out], mnist.test_y[held_out], torch.arange(10))
    oracle = build_net(evaluation_oracle)
    known = relearn_steps(build_net(evaluation_pretrained), *args)
    steps = relearn_steps(oracle, *args)
    assert known is not None and known <= 2
    assert steps is not None and 5 <= steps <= 100
    assert relearn_steps(oracle, *args, max_steps=1) is None
    assert relearn_steps(oracle, *args) == steps  # deterministic
    assert torch.equal(oracle.head.weight, build_net(evaluation_oracle).head.weight)  # a copy was trained, not the net


# -- class replacement with reused units ---------------------------------------------------------
def test_a_reused_unit_makes_relearn_and_reach_not_applicable_but_reports_new_acc(evaluation_pretrained):
    data = load_eval_data("data", [6], [3], None, 5000, 0)
    budget = Budget(train_samples=2000, mia_per_side=1000, probe_per_side=500)
    result = evaluate_net(build_net(evaluation_pretrained), unit_to_label(10, [6], [3]), data, budget)
    assert result.metrics["forget_test_acc"] == 0.0  # no unit means 6 any more
    assert result.metrics["new_acc"] > 50  # threes still win on unit 3, which keeps meaning 3
    assert "probe_auc" in result.metrics and set(result.not_applicable) == {"relearn", "reach"}


# -- the command ---------------------------------------------------------------------------------
def _evaluate(ckpt: Path, oracle: Path, pretrained: Path, out: Path, *extra: str) -> dict:
    return evaluate_main(["--ckpt", str(ckpt), "--oracle", str(oracle), "--pretrained", str(pretrained), "--out", str(out), *FAST, *extra])


def test_evaluate_calls_the_head_mask_hidden_and_writes_every_output(
    evaluation_head_mask, evaluation_oracle, evaluation_pretrained, tmp_path, capsys
):
    report = _evaluate(evaluation_head_mask, evaluation_oracle, evaluation_pretrained, tmp_path / "out", "--forget-classes", "9")
    assert {role: report["verdict"][role]["verdict"] for role in report["verdict"]} == {
        "checkpoint": "hides", "oracle": "forgets", "pretrained": "incomplete",
    }  # fmt: skip
    masked = report["metrics"]["checkpoint"]
    assert masked["forget_test_acc"] == 0.0 and masked["probe_auc"] == report["metrics"]["pretrained"]["probe_auc"]
    assert report["seconds"] < 30
    printed = capsys.readouterr().out
    assert "checkpoint" in printed and "oracle" in printed and "verdict: hides" in printed
    assert json.loads((tmp_path / "out" / "report.json").read_text())["metrics"] == json.loads(json.dumps(report["metrics"]))
    assert "**Verdict on checkpoint: hides**" in (tmp_path / "out" / "summary.md").read_text()
    assert len(list((tmp_path / "out").glob("events.out.tfevents.*"))) == 1


def test_evaluate_calls_the_oracle_forgotten_with_identical_numbers(evaluation_oracle, evaluation_pretrained, tmp_path):
    report = _evaluate(evaluation_oracle, evaluation_oracle, evaluation_pretrained, tmp_path)
    assert report["verdict"]["checkpoint"]["verdict"] == "forgets"
    assert report["metrics"]["checkpoint"] == report["metrics"]["oracle"]  # every RNG is seeded
    assert report["gap"]["checkpoint"]["avg"] == 0.0


def test_random_sample_mode_marks_class_checks_not_applicable(evaluation_oracle, evaluation_pretrained, tmp_path):
    random_mode = {"forget_classes": [], "forget_fraction": 0.1}
    oracle = _edited(evaluation_oracle, tmp_path / "oracle.ckpt", **random_mode)
    pretrained = _edited(evaluation_pretrained, tmp_path / "pretrained.ckpt", **random_mode)
    report = _evaluate(pretrained, oracle, pretrained, tmp_path / "out")
    assert set(report["not_applicable"]["checkpoint"]) == {"probe", "relearn", "reach"}
    assert "forget_test_acc" not in report["metrics"]["checkpoint"] and report["verdict"]["checkpoint"]["verdict"] in {
        "forgets",
        "incomplete",
    }


def test_evaluate_against_judges_a_grid_once_and_reads_it_back(
    evaluation_head_mask, evaluation_oracle, evaluation_pretrained, tmp_path, monkeypatch
):
    checkpoints = {"pretrained": evaluation_pretrained, "oracle": evaluation_oracle, "head_mask": evaluation_head_mask}
    budget = Budget(train_samples=3000, mia_per_side=2000, reach_starts=16, relearn_steps=60)
    summary = evaluate_against(checkpoints, oracle="oracle", pretrained="pretrained", cache=tmp_path / "evidence.json", budget=budget)
    assert {name: s["verdict"] for name, s in summary.items()} == {"pretrained": "incomplete", "oracle": "forgets", "head_mask": "hides"}
    assert summary["pretrained"]["reach"] == 1.0 and summary["oracle"]["avg_gap"] == 0.0 and 0 <= summary["head_mask"]["mia"] <= 1
    monkeypatch.setattr("unlearning.evaluation.run.judge", lambda *a, **k: pytest.fail("evaluated again despite the cache"))
    assert evaluate_against(checkpoints, oracle="oracle", pretrained="pretrained", cache=tmp_path / "evidence.json") == summary


# -- bad input -----------------------------------------------------------------------------------
def _other_architecture(tmp_path: Path, like: Path) -> Path:
    checkpoint = torch.load(like, map_location="cpu", weights_only=True)
    checkpoint["state_dict"] = {f"net.{k}": v for k, v in LogisticRegression().state_dict().items()}
    checkpoint["hyper_parameters"]["net"] = {"class_path": "unlearning.models.LogisticRegression", "init_args": {}}
    torch.save(checkpoint, tmp_path / "logreg.ckpt")
    return tmp_path / "logreg.ckpt"


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("missing", "--oracle .*no such checkpoint"),
        ("architecture", "LogisticRegression.*SeedMLP.*one architecture"),
        ("forget_mismatch", "--forget-classes \\[3\\] does not match the checkpoint's forget_classes \\[9\\]"),
        ("forget_out_of_range", "forget_classes must hold class indices in 0..9, got 11"),
        ("oracle_is_pretrained", "is a pretrain checkpoint, not an oracle"),
        ("never_learned", "never learned class \\[9\\]"),
        ("seed_mismatch", "--seed 3 does not match"),
    ],
)
def test_bad_input_is_a_usage_error_and_writes_nothing(case, message, evaluation_oracle, evaluation_pretrained, tmp_path):
    ckpt, oracle, pretrained, extra = evaluation_oracle, evaluation_oracle, evaluation_pretrained, []
    if case == "missing":
        oracle = tmp_path / "nope.ckpt"
    elif case == "architecture":
        oracle = _other_architecture(tmp_path, evaluation_oracle)
    elif case == "forget_mismatch":
        extra = ["--forget-classes", "3"]
    elif case == "forget_out_of_range":
        extra = ["--forget-classes", "11"]
    elif case == "oracle_is_pretrained":
        oracle = evaluation_pretrained
    elif case == "never_learned":
        pretrained = _edited(evaluation_pretrained, tmp_path / "p.ckpt", new_classes=[9], forget_classes=[])
    elif case == "seed_mismatch":
        extra = ["--seed", "3"]
    with pytest.raises(UsageError, match=message):
        _evaluate(ckpt, oracle, pretrained, tmp_path / "out", *extra)
    assert not (tmp_path / "out").exists()
