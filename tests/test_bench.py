"""``unlearning bench`` end to end on a two-method grid: tables, JSON, plots, and reuse of finished runs."""

import json

from tests.conftest import ROOT
from unlearning.cli import main


def test_bench_writes_results_and_reuses_finished_runs(tmp_path):
    out = tmp_path / "results"
    rows = main(["bench", "-c", str(ROOT / "tests" / "conf" / "bench_tiny.yaml"), "--out", str(out)])
    assert {r["method"] for r in rows} == {"pretrained", "oracle", "selective_gradient", "head_mask"}
    verdicts = {r["method"]: r["verdict"] for r in rows}
    assert verdicts["oracle"] == "forgets" and verdicts["head_mask"] == "hides"
    stored = json.loads((out / "results.json").read_text())
    assert len(stored["rows"]) == 4 and "cores" in stored["machine"]
    table = (out / "results.md").read_text()
    assert "| head_mask |" in table and "verdict" in table
    assert {p.name for p in out.glob("*.png")} == {"forget9_forget_vs_retain.png", "forget9_retain_vs_cost.png", "forget9_per_class.png"}

    checkpoints = sorted(out.glob("runs/**/*.ckpt"))
    again = main(["bench", "-c", str(ROOT / "tests" / "conf" / "bench_tiny.yaml"), "--out", str(out)])
    assert sorted(out.glob("runs/**/*.ckpt")) == checkpoints  # nothing was trained again
    assert [r["fit_seconds"] for r in again] == [r["fit_seconds"] for r in rows]
