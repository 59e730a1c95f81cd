"""What made a fit: the package's code and the machine it ran on.

A bench reuses the fits an earlier bench left in its results folder, keyed by the configs alone
(:attr:`unlearning.bench.Cell.key`). Floats differ between CPU models and torch builds, and the code changes between
commits, so each fit records both (:func:`code_fingerprint`, :func:`machine_name`), the bench's report says how many of
its fits came from elsewhere, and ``unlearning bench --reuse this_code`` (or ``this_machine``) refits what did.
"""

from __future__ import annotations

import ast
import hashlib
import platform
from functools import cache
from pathlib import Path

import torch

PACKAGE = Path(__file__).resolve().parent


def _without_docstrings(tree: ast.AST) -> ast.AST:
    """``tree`` with every module, class and function docstring removed: prose that changes no behaviour."""
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return tree


def source_fingerprint(root: Path) -> str:
    """A hash of what every ``.py`` file under ``root`` does: its syntax tree, so that comments, docstrings, blank lines
    and formatting change nothing, and a renamed file or a changed line does."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        tree = _without_docstrings(ast.parse(path.read_text(), filename=str(path)))
        digest.update(f"{path.relative_to(root).as_posix()}\0{ast.dump(tree)}\0".encode())
    return digest.hexdigest()[:12]


@cache
def code_fingerprint() -> str:
    """:func:`source_fingerprint` of the installed ``unlearning`` package (once per process)."""
    return source_fingerprint(PACKAGE)


def _cpu_model() -> str:
    """The CPU's model name (Linux's ``/proc/cpuinfo``), else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@cache
def machine_name() -> str:
    """The CPU model, torch build and GPU (where torch sees one) a fit ran with: what sets its floats (the thread count
    is the bench cell's own)."""
    gpu = f", {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ""
    return f"{_cpu_model()}, torch {torch.__version__}{gpu}"
