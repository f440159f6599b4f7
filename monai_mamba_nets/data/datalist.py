"""Datalist helpers that the bundle configs call, with errors that say how to fix the input."""

from __future__ import annotations

from pathlib import Path

from monai.data import load_decathlon_datalist

__all__ = ["DATALIST_NAME", "load_split", "list_images"]

# File name of the datalist that the ``prepare`` commands write into their output folder.
DATALIST_NAME = "datalist.json"


def load_split(datalist: str | Path, split: str) -> list[dict]:
    """Read one split of a datalist written by ``python -m monai_mamba_nets prepare ...``.

    Relative ``image``/``label`` paths are resolved against the datalist's folder (MONAI's decathlon rule).

    Args:
        datalist: path of the datalist JSON.
        split: key of the split, e.g. ``"training"``, ``"validation"`` or ``"test"``.

    Returns:
        The split's items, each a dict with at least ``image`` and ``label``.

    Raises:
        ValueError: when the file is missing, or the split is missing or empty.
    """
    path = Path(datalist)
    if not path.is_file():
        raise ValueError(
            f"datalist {path} does not exist. Set dataset_dir to a folder written by "
            "'python -m monai_mamba_nets prepare <dataset> --output_dir <folder>' (it holds "
            f"{DATALIST_NAME}), or set datalist to such a file."
        )
    try:
        items = load_decathlon_datalist(str(path), is_segmentation=True, data_list_key=split)
    except ValueError as error:
        raise ValueError(f"datalist {path} has no split {split!r}: {error}") from error
    if not items:
        raise ValueError(f"datalist {path}: split {split!r} is empty.")
    return items


def list_images(folder: str | Path, pattern: str = "*.png") -> list[str]:
    """Sorted paths of the files in ``folder`` that match ``pattern`` (inference input).

    Raises:
        ValueError: when ``folder`` is not a folder or holds no matching file.
    """
    path = Path(folder)
    if not path.is_dir():
        raise ValueError(f"input folder {path} does not exist or is not a folder.")
    files = sorted(str(p) for p in path.glob(pattern) if p.is_file())
    if not files:
        raise ValueError(f"input folder {path} holds no file matching {pattern!r}.")
    return files
