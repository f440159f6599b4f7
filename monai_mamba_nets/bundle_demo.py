"""Run a bundle's training, evaluation and inference on its demo data with the bundle's ``configs/demo.json``.

``python -m monai_mamba_nets demo [--bundle montgomery_shenzhen_lightm] [--bundles_dir bundles] [--work_dir DIR]``
runs, through ``monai.bundle.run`` and with ``bundle_root`` set to the work folder, the equivalent of::

    python -m monai.bundle run --config_file "['configs/train.json','configs/demo.json']"
    python -m monai.bundle run --config_file "['configs/train.json','configs/evaluate.json','configs/demo.json']"
    python -m monai.bundle run --config_file "['configs/inference.json','configs/demo.json']"

``demo.json`` only holds top-level overrides (small image size, few epochs, ...) that the three workflows share.
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
    bundle: str = "montgomery_shenzhen_lightm", bundles_dir: str = "bundles", work_dir: str | None = None
) -> dict:
    """Train, evaluate and infer ``bundle`` on its demo data; outputs go to ``work_dir``.

    Args:
        bundle: bundle folder name under ``bundles_dir``.
        bundles_dir: folder holding the bundles (the repository's ``bundles/``).
        work_dir: bundle root for the outputs (``models/``, ``eval/``); default
            ``<cache>/demo_runs/<bundle>``. Earlier ``models/`` and ``eval/`` there are removed first.

    Returns:
        ``{"metrics": {name: value}, "work_dir": ..., "predictions": [paths], "seconds": ...}``.

    Raises:
        ValueError: when the bundle or its ``configs/demo.json`` does not exist.
    """
    configs = Path(bundles_dir) / bundle / "configs"
    demo = configs / "demo.json"
    if not demo.is_file():
        raise ValueError(f"{demo} does not exist: {bundle!r} is not a bundle with demo settings under {bundles_dir}.")
    work = Path(work_dir) if work_dir is not None else cache_dir() / "demo_runs" / bundle
    for output in ("models", "eval"):
        shutil.rmtree(work / output, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    common = {
        "meta_file": str(configs / "metadata.json"),
        "logging_file": str(configs / "logging.conf"),
        "bundle_root": str(work),
    }
    start = time.perf_counter()
    run(config_file=[str(configs / "train.json"), str(demo)], **common)
    run(config_file=[str(configs / "train.json"), str(configs / "evaluate.json"), str(demo)], **common)
    run(config_file=[str(configs / "inference.json"), str(demo)], **common)
    return {
        "metrics": read_metrics(work / "eval" / "metrics.csv"),
        "work_dir": str(work),
        "predictions": sorted(str(p) for p in (work / "eval").glob("*_seg.*")),
        "seconds": time.perf_counter() - start,
    }
