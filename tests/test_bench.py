"""``unlearning bench`` end to end on a two-method grid: tables, JSON, plots, and reuse of finished runs."""

import json
from dataclasses import asdict

import pytest
import torch
import yaml

from tests.conftest import CONFIGS, ROOT
from unlearning import runs
from unlearning.bench import Cell, Experiment, bench_parser, provenance_key
from unlearning.bench_report import frontier_cost, per_seed_tables, place_labels, provenance_note, sweeps, verdict_grid
from unlearning.checkpoints import read_checkpoint
from unlearning.cli import main
from unlearning.errors import HeadlineChanged, UsageError
from unlearning.evaluation import Thresholds
from unlearning.provenance import source_fingerprint
from unlearning.runs import fit_and_test, quiet_collector
from unlearning.speed import compare, interleaved_fit


@pytest.mark.slow
def test_bench_writes_results_and_reuses_finished_runs(tmp_path, monkeypatch):
    out = tmp_path / "results"
    rows = main(["bench", "-c", str(ROOT / "tests" / "conf" / "bench_tiny.yaml"), "--out", str(out)])
    forget9 = {r["method"]: r for r in rows if r["experiment"] == "forget9"}
    assert set(forget9) == {"pretrained", "oracle", "selective_gradient", "head_mask"}
    # on these one-epoch models the head mask is never called forgotten; that it "hides" is checked on five-epoch ones (test_calibration)
    assert forget9["oracle"]["verdict"] == "forgets" and forget9["head_mask"]["verdict"] != "forgets"
    replaced = {r["method"]: r for r in rows if r["experiment"] == "replace6to3"}
    assert set(replaced) == {"pretrained", "oracle", "selective_gradient"}
    assert replaced["pretrained"]["new_acc"] == 0 and replaced["selective_gradient"]["new_acc"] > 0.5  # the 3 was learned
    assert replaced["oracle"]["cost"] == 1
    assert replaced["selective_gradient"]["cost"] == replaced["selective_gradient"]["fit_seconds"] / replaced["oracle"]["fit_seconds"]
    (seed0,) = out.glob("runs/forget9/seed0-*")  # the cell's folder: its key hashes the cell's settings and configs
    (timing_round,) = json.loads((seed0 / "timings.json").read_text())  # timing_repeats: 2, so one round besides the bench's fit
    assert set(timing_round) == {"oracle", "selective_gradient", "head_mask"}
    for method in timing_round:
        first = json.loads((seed0 / method / "result.json").read_text())["fit_seconds"]
        assert forget9[method]["fit_seconds"] == min(first, timing_round[method])  # the best of two
    stored = json.loads((out / "results.json").read_text())
    assert len(stored["rows"]) == 7 and "cores" in stored["machine"] and stored["speed"] is None
    table = (out / "results.md").read_text()
    assert "| head_mask |" in table and "verdict" in table and "### replace6to3, per seed" in table and "new %" in table
    assert {p.name for p in out.glob("forget9*.png")} == {
        "forget9_forget_vs_retain.png",
        "forget9_retain_vs_cost.png",
        "forget9_per_class.png",
    }

    checkpoints = sorted(out.glob("runs/**/*.ckpt"))
    died = seed0 / "selective_gradient" / "result.json"
    first_run = json.loads(died.read_text())
    died.unlink()  # as if the run had died after writing its checkpoint, and so its cell before finishing
    (out / "cells" / f"forget9-seed0-{seed0.name.split('-')[1]}.json").unlink()
    again = main(["bench", "-c", str(ROOT / "tests" / "conf" / "bench_tiny.yaml"), "--out", str(out)])
    assert sorted(out.glob("runs/**/*.ckpt")) == checkpoints  # nothing was trained again, nor a second folder made
    assert (
        f"(reusing 6 of 7 fits, and their timings, from an earlier bench into {out}, which a fresh clone"
        in (out / "results.md").read_text()
    )
    assert "reusing" not in table  # the first bench fitted everything
    resumed = json.loads(died.read_text())
    assert resumed["resumed"] and resumed["checkpoint"] == first_run["checkpoint"]  # it resumed from its own last.ckpt, in its folder
    written = (out / "results.json").read_text()
    with pytest.raises(UsageError, match="was scored on test, not val: bench --holdout val into another --out"):
        main(["bench", "-c", str(ROOT / "tests" / "conf" / "bench_tiny.yaml"), "--out", str(out), "--holdout", "val"])
    assert sorted(out.glob("runs/**/*.ckpt")) == checkpoints and (out / "results.json").read_text() == written
    again_sg = next(r for r in again if r["experiment"] == "forget9" and r["method"] == "selective_gradient")
    assert again_sg["fit_seconds"] == timing_round["selective_gradient"]  # a resumed fit timed part of a run: only the round counts
    assert [r["fit_seconds"] for r in again if r is not again_sg] == [
        r["fit_seconds"] for r in rows if r is not forget9["selective_gradient"]
    ]

    # a cell judged under other limits (an older calibration) is judged again from its evidence file, nothing refitted
    cell = next(out.glob("cells/forget9-seed0-*.json"))
    stale = json.loads(cell.read_text())
    stale["thresholds"]["proto_margin"] = 48.0
    stale["rows"] = [r | {"verdict": "hides"} if r["method"] == "oracle" else r for r in stale["rows"]]
    cell.write_text(json.dumps(stale))
    monkeypatch.setattr("unlearning.evaluation.run.judge", lambda *a, **k: pytest.fail("evaluated again, not judged again"))
    judged = main(["bench", "-c", str(ROOT / "tests" / "conf" / "bench_tiny.yaml"), "--out", str(out)])
    assert sorted(out.glob("runs/**/*.ckpt")) == checkpoints and json.loads(cell.read_text())["thresholds"] == asdict(Thresholds())
    assert [(r["method"], r["verdict"]) for r in judged if r["experiment"] == "forget9" and r["seed"] == 0] == [
        (r["method"], r["verdict"]) for r in rows if r["experiment"] == "forget9" and r["seed"] == 0
    ]


def test_bench_fails_when_a_verdict_the_headline_recorded_changes(tmp_path):
    """The headline page records each run's verdict; a bench whose verdict differs rewrites the page, then exits 1."""
    out, readme, page = tmp_path / "results", tmp_path / "README.md", tmp_path / "docs" / "results.md"
    args = ["bench", "-c", str(ROOT / "tests" / "conf" / "bench_tiny.yaml"), "--out", str(out), "--seeds", "[0]", "--timing_repeats", "1"]
    args += ["--docs", str(page), "--headline", str(readme), "--frontier", "true"]
    main(args)
    recorded = readme.read_text()
    assert '"forget9/oracle/seed0": "forgets"' in recorded and "| head_mask |" in recorded
    assert (page.parent / "bench_tiny_frontier.png").stat().st_size > 0 and "### The price of forgetting" in page.read_text()
    readme.write_text(recorded.replace('"forget9/oracle/seed0": "forgets"', '"forget9/oracle/seed0": "hides"'))
    with pytest.raises(HeadlineChanged, match=r"1 verdict\(s\) .* came out otherwise .*: forget9/oracle/seed0: hides -> forgets$"):
        main(args)
    assert '"forget9/oracle/seed0": "forgets"' in readme.read_text()  # the page shows what this bench found
    main(args)  # the same verdicts as recorded: no error

    # the validation-split bench writes its own section on the same page, and its own figures beside the test set's
    figures = {name: (page.parent / name).read_bytes() for name in ("bench_tiny_verdicts.png", "bench_tiny_frontier.png")}
    val = args[: args.index("--headline")] + ["--frontier", "true", "--holdout", "val", "--out", str(tmp_path / "val")]
    main(val)
    text = page.read_text()
    val_section = text[text.index(" --holdout val`") :]
    assert "(bench_tiny_val_verdicts.png)" in val_section and "(bench_tiny_val_frontier.png)" in val_section
    assert "(bench_tiny_verdicts.png)" in text[: text.index(" --holdout val`")]
    assert {name: (page.parent / name).read_bytes() for name in figures} == figures  # the test set's figures stay


@pytest.mark.parametrize("holdout", ["test", "val"])
def test_a_run_is_scored_on_the_holdout_it_names(holdout, tmp_path):
    run = fit_and_test(ROOT / "configs" / "pretrain.yaml", "-c", str(ROOT / "tests" / "conf" / "tiny.yaml"), root=tmp_path, score=holdout)
    assert {"acc", "forget_acc", "retain_acc"} <= {k.removeprefix(f"{holdout}/") for k in run.scores}
    assert all(k.startswith((f"{holdout}/", f"{holdout}_class_acc/")) for k in run.scores)
    assert run.checkpoint.exists() and run.fit_seconds > 0 and run.flops is None  # counted only when asked


def test_a_counted_fit_counts_each_training_samples_matrix_products(tmp_path):
    """SeedMLP (784-50-40-30-20-10) does 43 200 multiply-adds a sample forward, 86 400 FLOPs; backward twice that, less the
    first layer's gradient for the input, which nothing needs (2 · 784 · 50): 3 · 86 400 − 78 400 = 180 800 a sample."""
    tiny = ["-c", str(ROOT / "tests" / "conf" / "tiny.yaml"), "--trainer.limit_val_batches=0", "--model.init_args.log_figures=false"]
    four, eight = (
        fit_and_test(CONFIGS / "pretrain.yaml", *tiny, f"--trainer.limit_train_batches={n}", root=tmp_path / str(n), score=None, count_flops=True).flops
        for n in (4, 8)
    )  # fmt: skip
    assert four == 4 * 200 * 180_800 and eight == 2 * four  # no validation: the steps of 200 samples alone
    ddp = ["--trainer.accelerator=cpu", "--trainer.devices=2", "--trainer.strategy=ddp_spawn"]
    with pytest.raises(UsageError, match="FLOPs are counted in this process alone: a fit on 2 processes would count one rank's"):
        fit_and_test(CONFIGS / "pretrain.yaml", *tiny, *ddp, root=tmp_path / "ddp", score=None, count_flops=True)
    assert not (tmp_path / "ddp").exists()  # the run folder the CLI claimed is given back


def test_bench_counts_flops_beside_the_timed_cost_and_keeps_them(tmp_path, monkeypatch):
    out = tmp_path / "results"
    tiny = ["-c", str(ROOT / "tests" / "conf" / "bench_tiny.yaml"), "--only", "forget9", "--timing_repeats", "1"]
    collected = []
    monkeypatch.setattr(runs, "quiet_collector", lambda real=runs.quiet_collector: collected.append(1) or real())
    rows = {r["method"]: r for r in main(["bench", *tiny, "--out", str(out), "--count_flops", "true"])}
    assert len(collected) == 4  # the timed fits (pretrained, oracle, two methods); the counted ones are no timing
    assert rows["oracle"]["compute"] == 1 and "compute" not in rows["pretrained"]  # the pretrained model is no method
    sg = rows["selective_gradient"]
    assert sg["compute"] == sg["flops"] / rows["oracle"]["flops"] and 0 < sg["compute"] < 1
    (cell,) = out.glob("runs/forget9/seed0-*")
    counted = {m: rows[m]["flops"] for m in ("oracle", "selective_gradient", "head_mask")}
    assert json.loads((cell / "flops.json").read_text()) == counted  # kept: a rerun counts nothing again
    assert "FLOPs × oracle" in (out / "results.md").read_text()
    experiment = Experiment("forget9", ["configs/pretrain.yaml"], ["configs/oracle.yaml"])
    assert Cell(experiment, 0, count_flops=True).key != Cell(experiment, 0).key  # a counted cell never reuses an uncounted one


def test_the_frontier_joins_each_swept_setting_to_the_config_it_varies_and_nothing_else():
    methods = ["selective_gradient", "selective_gradient_m30", "masked_reset_u10", "masked_reset", "masked_reset_u50",
               "masked_reset_s88", "reset_retrain", "unit_reset_300", "layer_freeze_1", "layer_freeze_2"]  # fmt: skip
    assert sweeps(methods) == [
        ["selective_gradient_m30", "selective_gradient"],
        ["masked_reset_u10", "masked_reset_u50", "masked_reset"],
        ["masked_reset_s88", "masked_reset"],
        ["layer_freeze_1", "layer_freeze_2"],
    ]


def test_the_frontier_reads_compute_where_every_method_counted_it_and_time_otherwise():
    rows = [
        {"method": "pretrained", "cost": 1.1},  # never counted: no method
        {"method": "oracle", "cost": 1.0, "compute": 1.0},
        {"method": "unit_reset", "cost": 0.23, "compute": 0.24},
        {"method": "selective_gradient", "cost": 0.09, "compute": 0.08},
    ]
    assert frontier_cost(rows) == ("compute", "compute (FLOPs / oracle's)")
    del rows[3]["compute"]
    assert frontier_cost(rows) == ("cost", "cost (fit time / oracle's)")


def test_speed_comparison_times_both_loops_side_by_side():
    result = compare(epochs=1, repeats=2)
    assert len(result.plain_seconds) == len(result.lightning_seconds) == len(result.bare_seconds) == len(result.bare_plain_seconds) == 2
    assert result.run_ratios == [result.lightning_seconds[i] / result.plain_seconds[i] for i in range(2)]
    assert result.ratio == sum(result.run_ratios) / 2  # the median of two
    assert result.floor_ratios == [result.bare_seconds[i] / result.bare_plain_seconds[i] for i in range(2)]
    assert result.floor == sum(result.floor_ratios) / 2
    report = result.report()
    assert "median of the interleaved runs" in report and "target ≤ 1.30" in report and "lightning floor" in report


def test_plain_loop_interleaved_with_the_fit_does_the_same_work(tmp_path):
    """Every fit step is matched by a plain step, in chunks of 26 and at each epoch's end (an epoch is 275 steps)."""
    lightning_seconds, plain = interleaved_fit(2, tmp_path, chunk=26)
    assert plain.total_steps == 2 * 275 and plain.epoch == 2 and plain.steps_done == 0
    assert (tmp_path / "plain.pt").is_file() and 0 < plain.seconds and 0 < lightning_seconds


def test_bare_fit_matches_the_plain_loops_steps_alone(tmp_path):
    """The floor: Lightning with nothing but the step, against the plain loop with no validation or checkpoint."""
    lightning_seconds, plain = interleaved_fit(1, tmp_path, chunk=26, bare=True)
    assert plain.total_steps == 275 and plain.epoch == 1 and not (tmp_path / "plain.pt").exists()
    assert not list(tmp_path.rglob("*.ckpt")) and not (tmp_path / "lightning_logs").exists()  # no checkpoint, no logger
    assert 0 < plain.seconds and 0 < lightning_seconds


def test_speed_fit_args_reach_the_fit(tmp_path):
    """``python -m unlearning.speed -- ARGS`` measures the fit with a feature changed; a misspelled key fails as in ``fit``."""
    _, plain = interleaved_fit(1, tmp_path, chunk=25, fit_args=["--trainer.logger=false"])
    assert plain.total_steps == 275 and not (tmp_path / "lightning_logs").exists()
    with pytest.raises(UsageError, match="did you mean --trainer.logger"):
        interleaved_fit(1, tmp_path, chunk=25, fit_args=["--trainer.loger=false"])


_VALID_ENTRIES: set[tuple[str, ...]] = set()  # entries a bench config shares with one checked before (the draws and fresh
# seeds grids repeat the every-digit grid's 66) are built once a session: 155 of the 380 entries, about 45 s


@pytest.mark.parametrize("config", sorted((ROOT / "configs").glob("bench*.yaml")), ids=lambda p: p.name)
def test_every_bench_entry_is_a_valid_cli_run(config, tmp_path):
    """A typo in a bench config would otherwise surface minutes into the grid."""
    parser = bench_parser()
    experiments = parser.instantiate(parser.parse_args(["-c", str(config)])).experiments  # each entry with its experiment's args
    assert experiments
    for exp in experiments:
        for args in [exp.pretrain, exp.oracle, *exp.methods.values()]:
            if tuple(args) in _VALID_ENTRIES:
                continue
            cli = main(["-c", *args, f"--trainer.default_root_dir={tmp_path}"], run=False)  # as fit_and_test runs them
            assert cli.model.net(torch.zeros(1, 1, 28, 28)).shape == (1, 10)
            _VALID_ENTRIES.add(tuple(args))


def test_a_cells_key_follows_what_its_configs_set_not_how_they_are_written(tmp_path):
    method = tmp_path / "method.yml"
    text = (CONFIGS / "unlearn" / "unit_reset.yaml").read_text()

    def key(written: str) -> str:
        method.write_text(written)
        return Cell(Experiment("forget2", ["configs/pretrain.yaml"], ["configs/oracle.yaml"], {"a": [str(method)]}), 0).key

    written = key(text)
    assert key("# a note\n\n" + text.replace("seed_everything: 0", "seed_everything: 0   # the seed")) == written  # comments
    assert key(text.replace("max_steps: 200", "max_steps: 201")) != written  # a setting (and a .yml file counts too)
    assert key("trainer: {max_steps: 3, devices: 1}\n") == key("trainer:\n  devices: 1\n  max_steps: 3\n")  # key order, flow style
    assert key("a: [1\n") != key("a: [2\n")  # a file that does not parse counts by its text


def test_a_code_fingerprint_follows_what_the_code_does_not_its_prose_or_layout(tmp_path):
    (tmp_path / "pkg").mkdir()
    module = tmp_path / "pkg" / "a.py"

    def fingerprint(source: str) -> str:
        module.write_text(source)
        return source_fingerprint(tmp_path)

    plain = fingerprint("def f(x):\n    return x + 1\n")
    assert fingerprint('"""A module."""\n\n\ndef f(x):  # one more\n    """Why."""\n    return (x + 1)\n') == plain
    assert fingerprint('def f(x):\n    """Only prose."""\n') == fingerprint("def f(x):\n    pass\n")
    assert fingerprint("def f(x):\n    return x + 2\n") != plain  # a changed line
    module.rename(tmp_path / "pkg" / "b.py")
    assert source_fingerprint(tmp_path) != plain  # a moved module


def test_the_report_says_which_fits_other_code_or_another_machine_made():
    here = {"code": "c0", "machine": "cpu A, torch 2"}
    rows = [here] * 3
    assert provenance_note(rows, "c0", "cpu A, torch 2") == " All 3 fits were made by this code (`c0`) on this machine."
    rows += [{"code": "c1", "machine": "cpu A, torch 2"}, {"code": "c0", "machine": "cpu B, torch 2"}, {"code": None, "machine": None}]
    assert provenance_note(rows, "c0", "cpu A, torch 2") == (
        " Of its 6 fits, 1 by other code (`c1`), 1 by this code (`c0`) on cpu B, torch 2, 1 before fits recorded their code and "
        "machine: `--reuse this_code` (or `this_machine`) refits them in a folder of their own."
    )


def test_a_cell_that_takes_fits_from_any_code_keeps_its_key_and_one_that_names_its_code_has_its_own():
    experiment = Experiment("forget2", ["configs/pretrain.yaml"], ["configs/oracle.yaml"])
    keys = {reuse: Cell(experiment, 0, provenance=provenance_key(reuse)).key for reuse in ("any_code", "this_code", "this_machine")}
    assert keys["any_code"] == Cell(experiment, 0).key and len(set(keys.values())) == 3


def test_an_experiments_args_go_into_every_entry_after_its_config_and_leave_the_cell_as_if_spelled_out():
    folded = Experiment(
        "forget2", ["configs/pretrain.yaml"], ["configs/oracle.yaml"],
        {"a": ["configs/unlearn/unit_reset.yaml", "--trainer.max_steps=3"]}, args=["--data.init_args.forget_classes=[2]"],
    )  # fmt: skip
    spelled = Experiment(
        "forget2", ["configs/pretrain.yaml", "--data.init_args.forget_classes=[2]"], ["configs/oracle.yaml", "--data.init_args.forget_classes=[2]"],
        {"a": ["configs/unlearn/unit_reset.yaml", "--data.init_args.forget_classes=[2]", "--trainer.max_steps=3"]},
    )  # fmt: skip
    assert folded == spelled and Cell(folded, 0).key == Cell(spelled, 0).key  # the same runs, reused
    assert Cell(folded, 0).key != Cell(Experiment("forget2", ["configs/pretrain.yaml"], ["configs/oracle.yaml"]), 0).key
    with pytest.raises(UsageError, match=r"forget2: methods: a: starts with a config file \(\.yaml\), got \['--trainer.max_steps=3'\]"):
        Experiment("forget2", ["configs/pretrain.yaml"], ["configs/oracle.yaml"], {"a": ["--trainer.max_steps=3"]})
    with pytest.raises(UsageError, match="after: b: a needs both methods listed"):
        Experiment("forget2", ["configs/pretrain.yaml"], ["configs/oracle.yaml"], {"a": ["configs/unlearn/undo.yaml"]}, after={"b": "a"})


MISSPELT = '{"name": "a", "pretrain": ["configs/pretrain.yaml"], "oracle": ["configs/oracle.yaml"], "methods": {"sg": ["configs/unlearn/selective_gradiant.yaml"]}}'
TWICE_A = ", ".join(['{"name": "a", "pretrain": ["configs/pretrain.yaml"], "oracle": ["configs/oracle.yaml"]}'] * 2)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ("--only=[forget9,forget8]", r"--only names no experiment of this grid: \['forget8'\] \(it has \['forget9', 'replace6to3'\]\)"),
        ("--seeds=[]", "--seeds must list at least one seed"),
        ("--seeds=[0,0]", r"--seeds repeats a seed: \[0, 0\]"),
        (f"--experiments=[{TWICE_A}]", r"experiment names repeat: \['a'\]"),
        ("--timing_repeats=0", "--timing_repeats must be at least 1"),
        ("--draws=0", "--draws must be at least 1, got 0"),
        ("--threads=0", "--threads must be at least 1, got 0"),
        ("--speed_repeats=-1", "--speed_repeats must be 0"),
        ("--headline=README.md", "--headline takes test-set results"),  # the tiny config has no headline; with val it is refused
        ("--only=forget8", r"^--only names no experiment of this grid: \['forget8'\]"),  # one name needs no list brackets
        ("--seedz=1", r"^unknown option or config key 'seedz'; did you mean --seeds\? \(run 'unlearning bench --help' for the options\)$"),
        ("--jobs=two", r"^jobs: expected int, got two \(run 'unlearning bench --help'"),
        ("--reuse=same_code", r"^reuse: expected Literal\['any_code', 'this_code', 'this_machine'\], got same_code \(run "),
        (  # refused before the pretrain and oracle cells train, not when its own cell runs
            f"--experiments=[{MISSPELT}]",
            r"^experiment a: methods: sg: no config file configs/unlearn/selective_gradiant.yaml \(paths are relative to ",
        ),
    ],
)
def test_bench_rejects_bad_options_before_writing_anything(tmp_path, option, message):
    holdout = ["--holdout=val"] if option.startswith("--headline") else []
    with pytest.raises(UsageError, match=message):
        main(["bench", "-c", str(ROOT / "tests" / "conf" / "bench_tiny.yaml"), "--out", str(tmp_path / "results"), option, *holdout])
    assert not (tmp_path / "results").exists()


def test_bench_takes_one_allowed_module_without_list_brackets(tmp_path):
    """``--allow_module mypkg.nets`` parses as a list of one, like ``--only`` and ``--seeds``: the next check is reached."""
    with pytest.raises(UsageError, match="^--seeds must list at least one seed"):
        main(
            [
                "bench",
                "-c",
                str(ROOT / "tests" / "conf" / "bench_tiny.yaml"),
                "--out",
                str(tmp_path / "results"),
                "--allow_module",
                "mypkg.nets",
                "--seeds=[]",
            ]
        )


def test_bench_refuses_a_results_folder_it_cannot_make(tmp_path):
    (tmp_path / "results").write_text("a file where the folder would go")
    with pytest.raises(UsageError, match=r"--out .*results: cannot make the results folder there \(File exists\); give another --out"):
        main(["bench", "-c", str(ROOT / "tests" / "conf" / "bench_tiny.yaml"), "--out", str(tmp_path / "results")])
    assert (tmp_path / "results").read_text() == "a file where the folder would go"


@pytest.mark.parametrize("kwargs", [{"repeats": 0}, {"chunk": 0}, {"epochs": 0}])
def test_speed_comparison_rejects_counts_below_one(kwargs):
    with pytest.raises(UsageError, match="must be at least 1"):
        compare(**kwargs)


@pytest.mark.slow
def test_the_readmes_forget9_verdicts_hold_on_seed_0(tmp_path):
    """configs/bench.yaml's forget-9 experiment on seed 0 (one timing, no speed comparison), checked against the verdicts
    the README records: the bench raises :class:`HeadlineChanged` if any came out otherwise. The README is copied, so a
    change shows in the copy and the repository's page stays as it was."""
    readme = tmp_path / "README.md"
    readme.write_text((ROOT / "README.md").read_text())
    main(["bench", "-c", str(CONFIGS / "bench.yaml"), "--only", "[forget9]", "--seeds", "[0]", "--timing_repeats", "1",
          "--count_flops", "false", "--speed_repeats", "0", "--out", str(tmp_path / "results"), "--docs", str(tmp_path / "results.md"),
          "--headline", str(readme)])  # fmt: skip
    assert all(f'"forget9/{method}/seed0": "forgets"' in readme.read_text() for method in ("reset_retrain", "unit_reset"))


@pytest.mark.slow
def test_the_every_digit_grid_runs_each_digit_and_pair_through_the_cli(tmp_path):
    """configs/bench_all_classes.yaml's own entries on tiny budgets (one short epoch of pretraining, three steps a method):
    the plumbing for every digit and pair, not the verdicts. Each run's classes are the experiment's, the masked reset
    keeps its frozen majority, and the grid and figure are written."""
    config = yaml.safe_load((CONFIGS / "bench_all_classes.yaml").read_text())
    tiny = ["-c", "tests/conf/tiny.yaml", "--model.init_args.log_figures=false"]
    for exp in config["experiments"]:
        exp["pretrain"] += tiny
        exp["oracle"] += tiny
        exp["methods"] = {m: [*args, "--trainer.max_steps=3", "--trainer.val_check_interval=3"] for m, args in exp["methods"].items()}
        exp["evidence"] = exp["name"] in ("forget4", "replace1to7")  # the suite on one digit and one pair: it takes seconds a cell
    # FLOPs are counted as test_bench_counts_flops_beside_the_timed_cost_and_keeps_them checks: here they would refit every method
    config |= {
        "seeds": [0],
        "out": str(tmp_path / "results"),
        "docs": str(tmp_path / "results.md"),
        "timing_repeats": 1,
        "count_flops": False,
    }
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(config))
    rows = main(["bench", "-c", str(tmp_path / "grid.yaml")])
    assert {r["experiment"] for r in rows} == {e["name"] for e in config["experiments"]} and len(rows) == 10 * 8 + 4 * 5
    for row in rows:
        exp = next(e for e in config["experiments"] if e["name"] == row["experiment"])
        recorded = read_checkpoint(row["checkpoint"])["datamodule_hyper_parameters"]
        wanted = dict(a.removeprefix("--data.init_args.").split("=") for a in exp["args"] if a.startswith("--data.init_args."))
        assert {key: recorded[key] for key in wanted} == {key: yaml.safe_load(value) for key, value in wanted.items()}
        assert row["method"] != "masked_reset" or row["frozen"] >= 0.5
    judged = {r["experiment"] for r in rows if "verdict" in r}
    assert judged == {"forget4", "replace1to7"}
    assert "| forget4 |" in (tmp_path / "results.md").read_text() and (tmp_path / "grid_verdicts.png").is_file()


@pytest.mark.slow
def test_draws_refit_each_method_on_the_seeds_model_and_split_with_their_own_randomness(tmp_path):
    """``--draws 2``: one pretrained model and oracle a seed, each method fitted twice. The second fit starts from the same
    weights on the same split under its own seed, moves other weights, and is judged against the same oracle; its rows,
    tables and headline key name the draw."""
    quick = ["-c", "tests/conf/tiny.yaml", "--trainer.limit_train_batches=40", "--model.init_args.log_figures=false"]
    config = {
        "seeds": [0], "threads": 1, "speed_repeats": 0, "draws": 2,
        "experiments": [{"name": "forget9", "pretrain": ["configs/pretrain.yaml", *quick], "oracle": ["configs/oracle.yaml", *quick],
                         "methods": {"selective_gradient": ["configs/unlearn/selective_gradient.yaml", "--trainer.max_steps=5",
                                                            "--trainer.val_check_interval=5"]}}],
    }  # fmt: skip
    (tmp_path / "grid.yaml").write_text(yaml.safe_dump(config))
    readme = tmp_path / "README.md"
    readme.write_text("<!-- headline -->\n<!-- /headline -->\n")
    rows = main(["bench", "-c", str(tmp_path / "grid.yaml"), "--out", str(tmp_path / "results"), "--headline", str(readme)])
    assert [(r["method"], r["draw"]) for r in rows] == [
        ("pretrained", 0),
        ("oracle", 0),
        ("selective_gradient", 0),
        ("selective_gradient", 1),
    ]
    first, second = (read_checkpoint(r["checkpoint"]) for r in rows[2:])
    assert [(c["datamodule_hyper_parameters"]["seed"], c["datamodule_hyper_parameters"]["split_seed"]) for c in (first, second)] == [
        (0, None),
        (1000, 0),
    ]
    assert all(r["frozen"] >= 0.89 for r in rows[2:])  # each keeps its mask of the one pretrained model bit for bit
    assert not torch.equal(first["state_dict"]["net.head.weight"], second["state_dict"]["net.head.weight"])  # two draws
    assert all("verdict" in r and r["cost"] > 0 for r in rows)
    table = (tmp_path / "results" / "results.md").read_text()
    assert "| selective_gradient | 0 (draw 1) |" in table and "(seeds 0, 2 draws each, mean ± std)" in table
    assert '"forget9/selective_gradient/seed0/draw1"' in readme.read_text() and '"forget9/selective_gradient/seed0"' in readme.read_text()
    experiment = Experiment(**config["experiments"][0])
    assert Cell(experiment, 0, draws=2).key != Cell(experiment, 0).key == Cell(experiment, 0, draws=1).key


def test_the_verdict_grid_reads_each_method_against_the_oracle_beside_the_pretrained_start_and_another_seeds_oracle():
    def row(exp, method, seed, retain, verdict="forgets", cost=0.2):
        return {"experiment": exp, "method": method, "seed": seed, "retain_acc": retain, "verdict": verdict, "cost": cost, "frozen": 0.5}

    rows = []
    for exp in ("forget1", "forget4"):
        for seed, (oracle, start, after) in enumerate([(0.960, 0.951, 0.957), (0.950, 0.949, 0.952)]):
            rows += [row(exp, "oracle", seed, oracle, cost=1.0), row(exp, "pretrained", seed, start, "incomplete", 1.1)]
            rows.append(row(exp, "masked_reset", seed, after, "hides" if (exp, seed) == ("forget4", 1) else "forgets"))
    grid = verdict_grid(rows)
    assert "| experiment | pretrained | another seed's oracle | masked_reset |" in grid
    # the start: -0.9 and -0.1 points, one seed of two within half a point; the oracles read against each other: -1.0 and
    # +1.0; the method: -0.3 and +0.2
    assert "| forget1 | -0.50 pp, 1/2 within 0.5 | lowest -1.00 pp, 1/2 within 0.5 | forgets 2/2<br>-0.05 pp, 0.20×, 50% frozen |" in grid
    assert "| forget4 | -0.50 pp, 1/2 within 0.5 | lowest -1.00 pp, 1/2 within 0.5 | forgets 1/2, hides 1/2<br>-0.05 pp" in grid
    assert "| all | 2/4 within 0.5 | 2/4 within 0.5 | 4/4 within 0.5<br>forgets 3/4 |" in grid
    counted = verdict_grid([r | {"compute": 0.25 if r["method"] == "masked_reset" else 1.0} for r in rows])
    assert "| forgets 2/2<br>-0.05 pp, 0.20× (0.25× FLOPs), 50% frozen |" in counted and "0.20×, 50% frozen" not in counted


def test_the_verdict_grid_counts_every_draw_and_says_so():
    def row(exp, method, draw, verdict="forgets"):
        return {"experiment": exp, "method": method, "seed": 0, "draw": draw, "retain_acc": 0.95, "verdict": verdict, "cost": 0.2}

    rows = [row(exp, m, 0) for exp in ("forget1", "forget4") for m in ("oracle", "pretrained")]
    rows += [
        row(exp, "reset", draw, "hides" if (exp, draw) == ("forget4", 1) else "forgets")
        for exp in ("forget1", "forget4")
        for draw in (0, 1)
    ]
    grid = verdict_grid(rows)
    assert "Each seed's methods ran 2 times" in grid and "forgets 1/2, hides 1/2" in grid and "forgets 3/4" in grid
    assert "draws" not in verdict_grid([r for r in rows if r["draw"] == 0])


def test_the_per_seed_table_names_each_seeds_verdict_and_its_probe_ratio_with_the_interval():
    base = {"experiment": "forget9", "forget_acc": 0.0, "retain_acc": 0.95}
    rows = [
        base | {"method": "oracle", "seed": 0, "probe_ratio": 1.0, "probe_ratio_interval": None, "verdict": "forgets"},
        base | {"method": "reset", "seed": 1, "probe_ratio": 0.2, "probe_ratio_interval": [0.161, 0.244], "verdict": "hides"},
        base | {"method": "reset", "seed": 0, "probe_ratio": 0.7, "verdict": "forgets"},  # a row from before the intervals
    ]
    lines = per_seed_tables(rows).splitlines()
    assert "probe miss × oracle (90%) |" in lines[2] and lines[2].endswith("| verdict |")
    assert lines[4:7] == [
        "| oracle | 0 | 0.00 | 95.00 | 1.00 | forgets |",
        "| reset | 0 | 0.00 | 95.00 | 0.70 | forgets |",
        "| reset | 1 | 0.00 | 95.00 | 0.20 (0.16-0.24) | hides |",
    ]


def test_quiet_collector_keeps_the_objects_alive_before_it_out_of_the_collectors_passes_and_releases_them_after():
    import gc

    assert gc.get_freeze_count() == 0
    with quiet_collector():
        assert gc.get_freeze_count() > 10_000  # the interpreter's long-lived objects: torch's, Lightning's, the tests'
        assert gc.isenabled()  # the fit's own garbage is still collected
    assert gc.get_freeze_count() == 0


def test_point_labels_stay_inside_the_axes_and_clear_of_each_other_where_a_sweep_sits_at_one_height():
    import itertools

    import matplotlib.pyplot as plt

    # the masked reset's sweep at one cost, a few points apart, and three methods crowded at the right edge
    points = {f"masked_reset_u{u}": (x, 0.25) for u, x in [(10, 82), (30, 64), (50, 46), (70, 28)]}
    points |= {"head_mask": (100, 0.04), "layer_freeze_1": (99, 0.06), "layer_freeze_2": (98, 0.062)}
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.scatter(*zip(*points.values()))
    ax.set_yscale("log")
    ax.set_xlim(-3, 103)
    place_labels(ax, points)
    renderer = fig.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in ax.texts]
    frame = ax.get_window_extent(renderer)
    plt.close(fig)
    assert sorted(text.get_text() for text in ax.texts) == sorted(points)
    assert all(frame.x0 <= b.x0 and b.x1 <= frame.x1 and frame.y0 <= b.y0 and b.y1 <= frame.y1 for b in boxes)
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
