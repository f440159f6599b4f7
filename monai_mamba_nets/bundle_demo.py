"""Run a bundle's training, evaluation and inference on its embedded demo data.

``python -m monai_mamba_nets demo [--bundle montgomery_shenzhen_lightm] [--bundles_dir bundles] [--work_dir DIR]``
runs, through ``monai.bundle.run`` and with ``bundle_root`` set to the work folder, the equivalent of::

    python -m monai.bundle run --config_file configs/train.json
    python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json']"
    python -m monai.bundle run --config_file configs/inference.json

With no ``dataset_dir`` the configs use the demo data and their demo recipe (small images, few epochs).
"""

from __future__ import annotations

import csv
import shutil
import time
from pathlib import Path

from monai.bundle import run

from .data.demo import cache_dir

__all__ = ["run_demo", "read_metrics"]


def read_metrics(path: str | Path) -> dict[str, float]:
    """Read the ``metrics.csv`` that MONAI's ``MetricsSaver`` writes (``name,value`` per line)."""
    with open(path, newline="") as file:
        return {row[0]: float(row[1]) for row in csv.reader(file) if row}


def run_demo(
    bundle: str = "montgomery_shenzhen_lightm",
    bundles_dir: str = "bundles",
    work_dir: str | None = None,
    overrides: dict | None = None,
) -> dict:
    """Train, evaluate and infer ``bundle`` on its demo data; outputs go to ``work_dir``.

    Args:
        bundle: bundle folder name under ``bundles_dir``.
        bundles_dir: folder holding the bundles (the repository's ``bundles/``).
        work_dir: bundle root for the outputs (``models/``, ``eval/``); default
            ``<cache>/demo_runs/<bundle>``. Earlier ``models/`` and ``eval/`` there are removed first.
        overrides: config ids to override in all three workflows, e.g. ``{"epochs": 1}``.

    Returns:
        ``{"metrics": {name: value}, "work_dir": ..., "predictions": [paths], "seconds": ...}``.

    Raises:
        ValueError: when ``bundle`` is not a bundle folder with train, evaluate and inference configs.
    """
    configs = Path(bundles_dir) / bundle / "configs"
    train, evaluate, infer = (configs / f"{name}.json" for name in ("train", "evaluate", "inference"))
    missing = [str(p) for p in (train, evaluate, infer) if not p.is_file()]
    if missing:
        raise ValueError(f"{bundle!r} is not a bundle under {bundles_dir}: missing {', '.join(missing)}.")
    work = Path(work_dir) if work_dir is not None else cache_dir() / "demo_runs" / bundle
    for output in ("models", "eval"):
        shutil.rmtree(work / output, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    common = {
        "meta_file": str(configs / "metadata.json"),
        "logging_file": str(configs / "logging.conf"),
        "bundle_root": str(work),
        **(overrides or {}),
    }
    start = time.perf_counter()
    run(config_file=str(train), **common)
    run(config_file=[str(train), str(evaluate)], **common)
    run(config_file=str(infer), **common)
    return {
        "metrics": read_metrics(work / "eval" / "metrics.csv"),
        "work_dir": str(work),
        "predictions": sorted(str(p) for p in (work / "eval").glob("*_seg.*")),
        "seconds": time.perf_counter() - start,
    }
