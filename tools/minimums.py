"""The oldest releases ``pyproject.toml`` allows of the pure-Python dependencies, as pip pins: what CI's second
environment installs before running the fast suite there (``.ci/run``).

    python tools/minimums.py           # lightning==2.6.0 torchmetrics==1.5.2 ...
    python tools/minimums.py --check   # exit 1 unless this environment has exactly those versions

Read from ``pyproject.toml`` itself, so a raised lower bound is what CI tests from then on. Torch and torchvision are
left out (each build is gigabytes): their minimum was checked by hand (docs/reliability.md).
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import tomllib

#: the dependencies whose lower bound CI installs (distribution names as pyproject.toml spells them)
PURE_PYTHON = ("lightning", "torchmetrics", "jsonargparse", "tensorboard", "docstring-parser")


def minimum_pins(pyproject: Path) -> list[str]:
    """``name[extras]==lower bound`` for each of :data:`PURE_PYTHON`; an error names one without a ``>=`` bound."""
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    pins = []
    for name in PURE_PYTHON:
        spec = next((d for d in dependencies if re.match(rf"{name}(\[|>|<|=|$)", d)), None)
        bound = spec and re.search(r">=\s*([\w.]+)", spec)
        if not bound:
            raise SystemExit(f"{pyproject}: {name} has no '>=' lower bound to test: {spec!r}")
        extras = re.match(rf"{name}(\[[^\]]*\])?", spec).group(1) or ""
        pins.append(f"{name}{extras}=={bound.group(1)}")
    return pins


def off_minimum(pins: list[str]) -> list[str]:
    """The pins this environment does not hold, each with the version it has instead."""
    from importlib.metadata import PackageNotFoundError, version

    from packaging.version import Version

    wrong = []
    for pin in pins:
        name, wanted = re.sub(r"\[.*\]", "", pin).split("==")
        try:
            found = version(name)
        except PackageNotFoundError:
            found = "none"
        if found == "none" or Version(found) != Version(wanted):
            wrong.append(f"{name} {found} (want {wanted})")
    return wrong


if __name__ == "__main__":
    pins = minimum_pins(Path(__file__).resolve().parents[1] / "pyproject.toml")
    if sys.argv[1:] == ["--check"]:
        if wrong := off_minimum(pins):
            raise SystemExit("not the minimum versions: " + ", ".join(wrong))
        print("minimum versions installed: " + " ".join(pins))
    else:
        print(" ".join(pins))
