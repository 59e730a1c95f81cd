"""Screenshots of TensorBoard's pages for a log folder, through headless Chromium: what a user sees after the README's workflow.

    python tools/tensorboard_screenshots.py [--logdir lightning_logs] [--out tensorboard_screenshots] [--workflow]

The shots go to ``--out`` (by default a folder of the current directory, never the shipped ``docs/screenshots``: refresh
those with ``--out docs/screenshots`` on purpose).

``--workflow`` first runs the README's short workflow into ``--logdir`` (pretrain, oracle, selective gradient,
reset_retrain, a test of the unlearned checkpoint). Needs Debian's ``chromium`` (``apt-get install -y chromium``);
TensorBoard is served on a free port of 127.0.0.1 only and stopped afterwards. Not part of the tests.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: file name -> TensorBoard page; each file is named for the tab a user clicks. Unsmoothed: an unlearning run logs two
#: validation points (step 0 and its last step), which TensorBoard's default smoothing would draw as a gentle slope.
PAGES = {
    "time_series": "#timeseries",
    "scalars": "#scalars&_smoothingWeight=0&tagFilter=%5Eval%2F(acc%7Cforget_acc%7Cretain_acc)",  # ^val/(acc|forget_acc|retain_acc)
    "custom_scalars": "#custom_scalars&_smoothingWeight=0",
    "images": "#images",
    "hparams": "#hparams",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def workflow(logdir: Path) -> None:
    """The README's workflow, short budgets, logs under ``logdir``."""
    root = f"--trainer.default_root_dir={logdir.parent}"

    def fit(*args: str) -> Path:
        subprocess.run([sys.executable, "-m", "unlearning", "fit", *args, root], cwd=ROOT, check=True)
        return max(logdir.glob("*/*/version_*/checkpoints/last.ckpt"), key=lambda p: p.stat().st_mtime)

    pretrained = fit("-c", "configs/pretrain.yaml", "--trainer.max_epochs=2")
    fit("-c", "configs/oracle.yaml", "--trainer.max_epochs=2")
    fit("-c", "configs/unlearn/selective_gradient.yaml", f"--model.init_args.weights={pretrained}")
    unlearned = fit("-c", "configs/unlearn/reset_retrain.yaml", f"--model.init_args.weights={pretrained}")
    subprocess.run(
        [sys.executable, "-m", "unlearning", "test", "-c", "configs/unlearn/reset_retrain.yaml", f"--ckpt_path={unlearned}", root],
        cwd=ROOT,
        check=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--logdir", type=Path, default=ROOT / "lightning_logs")
    parser.add_argument("--out", type=Path, default=Path("tensorboard_screenshots"))
    parser.add_argument("--workflow", action="store_true", help="run the README's workflow into --logdir first")
    parser.add_argument("--wait", type=float, default=15.0, help="seconds Chromium lets each page render")
    args = parser.parse_args()
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        parser.error("no chromium on PATH: apt-get install -y chromium")
    if args.workflow:
        workflow(args.logdir.resolve())
    args.out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    board = subprocess.Popen(
        [sys.executable, "-m", "tensorboard.main", "--logdir", str(args.logdir), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        for _ in range(60):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=1)
                break
            except OSError:
                time.sleep(1)
        for name, fragment in PAGES.items():
            target = args.out / f"tensorboard_{name}.png"
            subprocess.run(
                [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--window-size=1500,1100",
                 f"--virtual-time-budget={int(args.wait * 1000)}", f"--screenshot={target}", f"http://127.0.0.1:{port}/{fragment}"],
                check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=120,
            )  # fmt: skip
            print(f"wrote {target}")
    finally:
        board.terminate()
        board.wait(timeout=30)


if __name__ == "__main__":
    main()
