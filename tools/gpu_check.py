"""GPU checks for a machine with one or more CUDA devices: ``bash tools/gpu_check.sh`` runs them, each under a time limit.

Each check prints one line, ``PASS`` or ``FAIL`` (or ``SKIP`` with the reason) and its numbers. Run from the
project root; it writes only under a temporary folder.

    python tools/gpu_check.py <check>

Checks: stages, evaluate, ddp, precision, syncs, speed. ``GPU_CHECK_DEVICE=cpu`` runs them on the CPU instead (a dry run of
the script itself: the sync check then has nothing to watch, and the 2-device check runs two CPU processes).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
import traceback
import warnings
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lightning.pytorch import Callback

from unlearning.checkpoints import last_checkpoint, net_state_dict, read_checkpoint
from unlearning.cli import main

CONFIGS = ROOT / "configs"
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
ACCELERATOR = "gpu" if DEVICE == "cuda" else "cpu"
WORK: Path  # the folder the checks share, from --work
QUIET = [
    "--trainer.enable_progress_bar=false",
    "--trainer.enable_model_summary=false",
    f"--trainer.accelerator={ACCELERATOR}",
    "--trainer.devices=1",
]


def fit(config: str, out: Path, *overrides: str):
    start = time.perf_counter()
    cli = main(["fit", "-c", str(CONFIGS / config), f"--trainer.default_root_dir={out}", *QUIET, *overrides])
    return cli, time.perf_counter() - start


def report(name: str, ok: bool, numbers: str) -> None:
    print(f"{'PASS' if ok else 'FAIL'} {name}: {numbers}", flush=True)


def pretrained(out: Path) -> tuple[Path, Path, Path, Path]:
    """Pretrain, oracle and the replacement pair on the GPU, five epochs each (what the other checks start from).

    Trained by the first check that needs them and kept under ``--work`` for the next ones.
    """
    paths = []
    for config in ("pretrain.yaml", "oracle.yaml", "replace/pretrain.yaml", "replace/oracle.yaml"):
        folder = WORK / "pretrained" / config.replace("/", "_")
        done = sorted(folder.glob("lightning_logs/*/*/version_*/checkpoints/last.ckpt"))
        if done:
            paths.append(done[0])
            continue
        cli, seconds = fit(config, folder)
        metrics = cli.trainer.callback_metrics
        device = next(cli.model.parameters()).device
        report(f"fit {config}", device.type == DEVICE, f"{seconds:.1f} s on {device}, val/acc {100 * float(metrics['val/acc']):.2f}%")
        paths.append(last_checkpoint(cli.trainer))
    return tuple(paths)  # type: ignore[return-value]


def frozen_unchanged(checkpoint: Path, start: Path) -> bool:
    """Whether every weight the checkpoint's mask froze is bit-identical to the run's starting weights."""
    masks, before, after = read_checkpoint(checkpoint)["weight_masks"], net_state_dict(start), net_state_dict(checkpoint)
    return all(torch.equal(after[k][~m], before[k][~m]) for k, m in masks.items())


def check_stages(out: Path) -> None:
    pre, oracle, rpre, _ = pretrained(out)
    # the masked reset's frozen units take their own linear, which skips their weight gradient
    for name, config in (("selective gradient", "selective_gradient"), ("masked reset", "masked_reset")):
        cli, seconds = fit(f"unlearn/{config}.yaml", out / config, f"--model.init_args.weights={pre}")
        frozen = frozen_unchanged(last_checkpoint(cli.trainer), pre)
        forget = float(cli.trainer.callback_metrics["val/forget_acc"])
        report(name, frozen and forget < 0.01, f"{seconds:.2f} s, forget {100 * forget:.2f}%, frozen weights bit-identical: {frozen}")
    cli, seconds = fit("unlearn/reset_retrain.yaml", out / "rd", f"--model.init_args.weights={pre}")
    report("reset_retrain", True, f"{seconds:.2f} s, forget {100 * float(cli.trainer.callback_metrics['val/forget_acc']):.2f}%")
    cli, seconds = fit("replace/selective_gradient.yaml", out / "rsg", f"--model.init_args.weights={rpre}")
    metrics = cli.trainer.callback_metrics
    report(
        "replacement",
        float(metrics["val/new_acc"]) > 0.5,
        f"{seconds:.2f} s, new {100 * float(metrics['val/new_acc']):.2f}%, old {100 * float(metrics['val/old_acc']):.2f}%",
    )
    (out / "paths.json").write_text(
        json.dumps({"pretrained": str(pre), "oracle": str(oracle), "unlearned": str(last_checkpoint(cli.trainer))})
    )


def check_evaluate(out: Path) -> None:
    pre, oracle, _, _ = pretrained(out)
    cli, _ = fit("unlearn/selective_gradient.yaml", out / "sg", f"--model.init_args.weights={pre}")
    start = time.perf_counter()
    result = main(
        [
            "evaluate",
            "--ckpt",
            str(last_checkpoint(cli.trainer)),
            "--oracle",
            str(oracle),
            "--pretrained",
            str(pre),
            "--device",
            DEVICE,
            "--out",
            str(out / "evidence"),
        ]
    )
    verdicts = {k: v["verdict"] for k, v in result["verdict"].items()}
    report(
        f"evaluate --device {DEVICE}",
        verdicts["oracle"] == "forgets" and verdicts["pretrained"] == "incomplete",
        f"{time.perf_counter() - start:.1f} s, verdicts {verdicts}",
    )


class MaskDump(Callback):
    def __init__(self, folder: Path):
        self.folder = folder

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        if trainer.global_step == 0:
            state = {"device": str(pl_module.device), "head": pl_module.net.head.weight.detach().cpu()}
            if pl_module.weight_masks is not None:
                state["mask"] = {k: v.cpu() for k, v in pl_module.weight_masks.items()}
                state["mask_devices"] = sorted({str(v.device) for v in pl_module.weight_masks.values()})
            torch.save(state, self.folder / f"rank{trainer.global_rank}.pt")


def check_ddp(out: Path) -> None:
    if DEVICE == "cuda" and torch.cuda.device_count() < 2:
        print(
            f"SKIP ddp: {torch.cuda.device_count()} GPU here; the 2-GPU checks (one mask on both ranks, frozen weights bit-identical, the probe broadcast) need two",
            flush=True,
        )
        return
    pre, _, rpre, _ = pretrained(out)
    for config, weights in (("unlearn/selective_gradient.yaml", pre), ("replace/selective_gradient.yaml", rpre)):
        folder = out / config.replace("/", "_")
        folder.mkdir(parents=True)
        cli = main(["-c", str(CONFIGS / config), f"--model.init_args.weights={weights}", f"--trainer.default_root_dir={folder}", *QUIET[:2],
                    f"--trainer.accelerator={ACCELERATOR}", "--trainer.devices=2", "--trainer.strategy=ddp_spawn"], run=False)  # fmt: skip
        cli.trainer.callbacks.append(MaskDump(folder))
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        ranks = [torch.load(folder / f"rank{r}.pt") for r in (0, 1)]
        same_mask = all(torch.equal(ranks[0]["mask"][k], ranks[1]["mask"][k]) for k in ranks[0]["mask"])
        same_head = torch.equal(ranks[0]["head"], ranks[1]["head"])
        devices = [(r["device"], r["mask_devices"]) for r in ranks]
        own_device = all(dev == [d] for d, dev in devices)
        frozen = frozen_unchanged(last_checkpoint(cli.trainer), weights)
        report(f"ddp 2 devices {config}", same_mask and same_head and own_device and frozen,
               f"same mask {same_mask}, same probed head {same_head}, each rank's tensors on its own device {devices}, frozen bit-identical {frozen}")  # fmt: skip


def check_precision(out: Path) -> None:
    pre, _, rpre, _ = pretrained(out)
    for precision in ("bf16-mixed", "16-mixed"):
        runs = (("unlearn/selective_gradient.yaml", pre), ("unlearn/masked_reset.yaml", pre), ("replace/selective_gradient.yaml", rpre))
        for config, weights in runs:  # the masked reset's frozen units take their own linear under autocast
            cli, seconds = fit(config, out / f"{precision}_{config.replace('/', '_')}", f"--model.init_args.weights={weights}",
                               f"--trainer.precision={precision}", "--model.init_args.gradient_clip_val=1.0")  # fmt: skip
            metrics = {k: float(v) for k, v in cli.trainer.callback_metrics.items() if k.startswith("val/")}
            report(
                f"{precision} + clip 1.0 {config}",
                not any(math.isnan(v) for v in metrics.values()),
                f"{seconds:.2f} s, " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in metrics.items()),
            )


class SyncWatch(Callback):
    """Turns CUDA's sync debug mode on inside each training step only, and records what it reports."""

    def __init__(self):
        self.caught: list[warnings.WarningMessage] = []
        self._record = None

    def on_train_batch_start(self, trainer, pl_module, *args) -> None:
        self._record = warnings.catch_warnings(record=True)
        self.caught_now = self._record.__enter__()
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")

    def on_train_batch_end(self, trainer, pl_module, *args) -> None:
        torch.cuda.set_sync_debug_mode(0)
        self.caught += self.caught_now
        self._record.__exit__(None, None, None)


def check_syncs(out: Path) -> None:
    if DEVICE != "cuda":
        print("SKIP syncs: CUDA's sync debug mode needs a GPU", flush=True)
        return
    pre, _, rpre, _ = pretrained(out)
    for config, weights in (("pretrain.yaml", None), ("unlearn/selective_gradient.yaml", pre), ("unlearn/reset_retrain.yaml", pre),
                            ("replace/selective_gradient.yaml", rpre)):  # fmt: skip
        args = [
            "-c",
            str(CONFIGS / config),
            f"--trainer.default_root_dir={out / 'sync'}",
            *QUIET,
            "--trainer.max_steps=30",
            "--trainer.val_check_interval=30",
        ]
        args += [f"--model.init_args.weights={weights}"] if weights else []
        cli = main(args, run=False)
        watch = SyncWatch()
        cli.trainer.callbacks.append(watch)
        cli.trainer.fit(cli.model, datamodule=cli.datamodule)
        where = sorted({f"{Path(w.filename).name}:{w.lineno}" for w in watch.caught if "synchroniz" in str(w.message).lower()})
        report(
            f"syncs inside the step, {config}",
            not where,
            f"{len(watch.caught)} reported in 30 steps" + (f" at {', '.join(where)}" if where else ""),
        )


def check_speed(out: Path) -> None:
    from unlearning.speed import compare

    start = time.perf_counter()
    _, seconds = fit("pretrain.yaml", out / "five_epochs")
    report("5-epoch SeedMLP fit", True, f"{seconds:.1f} s wall (fit command, including its validations and checkpoints)")
    result = compare(repeats=3)
    report(
        "Lightning against plain torch",
        result.device.startswith(DEVICE),
        f"{result.ratio:.2f} median ratio ({', '.join(f'{r:.2f}' for r in result.run_ratios)}), floor {result.floor:.2f}, device {result.device}, {time.perf_counter() - start:.0f} s",
    )


CHECKS = {
    "stages": check_stages,
    "evaluate": check_evaluate,
    "ddp": check_ddp,
    "precision": check_precision,
    "syncs": check_syncs,
    "speed": check_speed,
}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("check", choices=list(CHECKS))
    parser.add_argument("--work", type=Path, required=True, help="a folder the checks share (the pretrained checkpoints)")
    args = parser.parse_args()
    WORK = args.work
    if DEVICE == "cuda" and not torch.cuda.is_available():
        print(f"SKIP {args.check}: no CUDA device on this machine (GPU_CHECK_DEVICE=cpu runs a dry run)", flush=True)
        sys.exit(0)
    torch.backends.cuda.matmul.allow_tf32 = False  # the same numbers as the tests expect; see docs/scaling.md for TF32
    with tempfile.TemporaryDirectory() as tmp:
        try:
            CHECKS[args.check](Path(tmp))
        except Exception:  # noqa: BLE001 - whatever stops a check is its FAIL line
            print(f"FAIL {args.check}: {traceback.format_exc().strip().splitlines()[-1]}", flush=True)
            traceback.print_exc()
            sys.exit(1)
