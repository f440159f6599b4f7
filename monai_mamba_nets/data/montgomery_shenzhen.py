"""Montgomery and Shenzhen chest X-rays with lung masks: layout readers, checks, split and datalist.

``python -m monai_mamba_nets prepare montgomery_shenzhen --output_dir OUT [--montgomery_dir M] [--shenzhen_dir S]
[--flat_dir F] [--seed 0]`` reads any combination of three layouts:

- Montgomery (NLM release): ``M/CXR_png/MCUCXR_0001_0.png`` with ``M/ManualMask/leftMask/MCUCXR_0001_0.png`` and
  ``M/ManualMask/rightMask/MCUCXR_0001_0.png``; the two masks are merged into one lung mask.
- Shenzhen: ``S/CXR_png/CHNCXR_0001_0.png`` (``S/lungs/`` is accepted too) with the mask
  ``S/mask/CHNCXR_0001_0_mask.png`` (folder ``masks/`` or ``lungmasks/`` accepted).
- Flat: ``F/images/<name>.png`` with ``F/masks/<name>.png`` or ``F/masks/<name>_mask.png`` (e.g. the Kaggle
  "chest-xray-masks-and-labels" release, or an already merged set).

Case names follow ``<PREFIX>_<number>_<0|1>``: the prefix gives the source (``MCUCXR`` Montgomery, ``CHNCXR``
Shenzhen, any other prefix its own source), the number the patient and the last digit the finding (0 normal,
1 tuberculosis). Every image is decoded and every mask is thresholded at grey value > 127 and checked against
its image's size; all problems are collected and reported together in one ``ValueError``.

The output folder receives ``masks/<name>.png`` (one binary 0/255 lung mask per case) and ``datalist.json``
with the splits ``training``/``validation``/``test`` (7:1:2 by default): patient-level, stratified by source and
finding, reproducible for a given seed. Image paths in the datalist are relative to the output folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from .datalist import DATALIST_NAME
from .images import MASK_THRESHOLD, read_mask, read_size, write_mask
from .split import stratified_group_split

__all__ = [
    "CxrCase",
    "SOURCES",
    "SPLITS",
    "montgomery_cases",
    "shenzhen_cases",
    "flat_cases",
    "parse_case_name",
    "prepare_montgomery_shenzhen",
]

logger = logging.getLogger(__name__)

# File-name prefix -> source name of the two NLM tuberculosis sets.
SOURCES = {"MCUCXR": "montgomery", "CHNCXR": "shenzhen"}
SPLITS = ("training", "validation", "test")
SHENZHEN_IMAGE_DIRS = ("CXR_png", "lungs")
SHENZHEN_MASK_DIRS = ("mask", "masks", "lungmasks")
FINDINGS = ("normal", "tuberculosis")

_CASE_NAME = re.compile(r"^(?P<patient>(?P<prefix>[A-Za-z]+)_(?P<number>\d+))_(?P<finding>[01])$")
_MASK_SUFFIX = "_mask"


@dataclass(frozen=True)
class CxrCase:
    """One chest X-ray and the mask file(s) whose union is its lung mask."""

    name: str
    image: Path
    masks: tuple[Path, ...]


def parse_case_name(name: str) -> tuple[str, str, int]:
    """Split a case name such as ``MCUCXR_0001_0`` into (patient, source, finding).

    Returns:
        ``("MCUCXR_0001", "montgomery", 0)``: the patient id, the source (lower-case prefix when it is not a
        known one) and the finding (0 normal, 1 tuberculosis).

    Raises:
        ValueError: when ``name`` does not follow ``<PREFIX>_<number>_<0|1>``.
    """
    match = _CASE_NAME.match(name)
    if match is None:
        raise ValueError(
            f"case name {name!r} does not follow <PREFIX>_<number>_<0|1> (e.g. MCUCXR_0001_0, CHNCXR_0123_1): "
            "the last digit (0 normal, 1 tuberculosis) is needed for the stratified split."
        )
    prefix = match["prefix"]
    return match["patient"], SOURCES.get(prefix.upper(), prefix.lower()), int(match["finding"])


def _require_dir(folder: Path, layout: str) -> None:
    if not folder.is_dir():
        raise ValueError(f"{layout} layout: folder {folder} does not exist.")


def _png_files(folder: Path) -> dict[str, Path]:
    """Stem -> path of the PNG files in ``folder``; other visible files are reported, hidden ones ignored."""
    pngs: dict[str, Path] = {}
    others: list[str] = []
    for path in sorted(folder.iterdir()):
        if path.name.startswith(".") or not path.is_file():
            continue
        if path.suffix.lower() == ".png":
            pngs[path.stem] = path
        else:
            others.append(path.name)
    if others:
        logger.warning("%s: ignoring %d files that are not PNG: %s", folder, len(others), ", ".join(others))
    return pngs


def _pair(
    images: dict[str, Path], mask_sets: Sequence[tuple[Path, dict[str, Path]]]
) -> tuple[list[CxrCase], list[str]]:
    """Pair every image with one mask from each (folder, stem -> path) set; report everything unpaired."""
    cases: list[CxrCase] = []
    problems: list[str] = []
    for name, image in sorted(images.items()):
        missing = [str(folder) for folder, masks in mask_sets if name not in masks]
        if missing:
            problems.append(f"{image}: no mask for this image in {', '.join(missing)}")
        else:
            cases.append(CxrCase(name, image, tuple(masks[name] for _, masks in mask_sets)))
    for folder, masks in mask_sets:
        for name in sorted(set(masks) - set(images)):
            problems.append(f"{masks[name]}: mask without an image named {name}.png")
    return cases, problems


def montgomery_cases(root: str | Path) -> tuple[list[CxrCase], list[str]]:
    """Cases of the Montgomery layout ``CXR_png/`` + ``ManualMask/{leftMask,rightMask}/`` (same file names).

    Returns:
        The paired cases (masks = (left, right)) and a list of problems (unpaired files, empty folder).

    Raises:
        ValueError: when a layout folder is missing.
    """
    root = Path(root)
    if not (root / "CXR_png").is_dir() and (root / "MontgomerySet" / "CXR_png").is_dir():
        raise ValueError(f"montgomery_dir {root} holds MontgomerySet/: pass {root / 'MontgomerySet'} instead.")
    folders = (root / "CXR_png", root / "ManualMask" / "leftMask", root / "ManualMask" / "rightMask")
    for folder in folders:
        _require_dir(folder, "Montgomery")
    images, left, right = (_png_files(folder) for folder in folders)
    cases, problems = _pair(images, [(folders[1], left), (folders[2], right)])
    if not images:
        problems.append(f"{folders[0]}: no PNG images")
    return cases, problems


def _one_of(root: Path, names: Sequence[str], what: str) -> Path:
    found = [root / name for name in names if (root / name).is_dir()]
    if len(found) != 1:
        state = "none" if not found else "several: " + ", ".join(p.name for p in found)
        raise ValueError(
            f"Shenzhen layout: {root} must hold exactly one {what} folder of {list(names)}, found {state}."
        )
    return found[0]


def shenzhen_cases(root: str | Path) -> tuple[list[CxrCase], list[str]]:
    """Cases of the Shenzhen layout: ``CXR_png/X.png`` (or ``lungs/``) with ``mask/X_mask.png`` (or ``masks/``,
    ``lungmasks/``).

    Returns:
        The paired cases and a list of problems (unpaired files, masks not named ``*_mask.png``, empty folder).

    Raises:
        ValueError: when the image or mask folder is missing or ambiguous.
    """
    root = Path(root)
    _require_dir(root, "Shenzhen")
    image_dir = _one_of(root, SHENZHEN_IMAGE_DIRS, "image")
    mask_dir = _one_of(root, SHENZHEN_MASK_DIRS, "mask")
    images = _png_files(image_dir)
    problems = []
    masks: dict[str, Path] = {}
    for stem, path in _png_files(mask_dir).items():
        if stem.endswith(_MASK_SUFFIX):
            masks[stem[: -len(_MASK_SUFFIX)]] = path
        else:
            problems.append(f"{path}: Shenzhen masks are named <image name>{_MASK_SUFFIX}.png")
    cases, unpaired = _pair(images, [(mask_dir, masks)])
    if not images:
        problems.append(f"{image_dir}: no PNG images")
    return cases, problems + unpaired


def flat_cases(root: str | Path) -> tuple[list[CxrCase], list[str]]:
    """Cases of a flat layout ``images/X.png`` with ``masks/X.png`` or ``masks/X_mask.png``.

    Returns:
        The paired cases and a list of problems (unpaired files, two masks for one image, empty folder).

    Raises:
        ValueError: when ``images/`` or ``masks/`` is missing.
    """
    root = Path(root)
    image_dir, mask_dir = root / "images", root / "masks"
    for folder in (image_dir, mask_dir):
        _require_dir(folder, "flat")
    images = _png_files(image_dir)
    problems = []
    masks: dict[str, Path] = {}
    for stem, path in _png_files(mask_dir).items():
        name = stem[: -len(_MASK_SUFFIX)] if stem.endswith(_MASK_SUFFIX) and stem not in images else stem
        if name in masks:
            problems.append(f"{masks[name]} and {path}: two masks for image {name}.png")
        masks[name] = path
    cases, unpaired = _pair(images, [(mask_dir, masks)])
    if not images:
        problems.append(f"{image_dir}: no PNG images")
    return cases, problems + unpaired


def _merged_mask(case: CxrCase, output: Path) -> list[str]:
    """Check a case's image and masks and write the union of its masks to ``output``; return its problems."""
    try:
        height, width = read_size(case.image)
    except ValueError as error:
        return [str(error)]
    problems = []
    merged = None
    for path in case.masks:
        try:
            mask = read_mask(path)
        except ValueError as error:
            problems.append(str(error))
            continue
        if mask.shape != (height, width):
            problems.append(
                f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} (width x height) but image {case.image} "
                f"is {width}x{height}"
            )
            continue
        merged = mask if merged is None else merged | mask
    if problems:
        return problems
    if not merged.any():
        files = ", ".join(str(p) for p in case.masks)
        return [f"{files}: empty lung mask (no pixel above {MASK_THRESHOLD}; masks are expected as 0/255 PNGs)"]
    write_mask(merged, output)
    return []


def _raise_problems(problems: list[str], hint: str) -> None:
    if problems:
        listing = "\n  ".join(problems)
        raise ValueError(f"{len(problems)} problem(s) with the input files:\n  {listing}\n{hint}")


def prepare_montgomery_shenzhen(
    output_dir: str,
    montgomery_dir: str | None = None,
    shenzhen_dir: str | None = None,
    flat_dir: str | None = None,
    seed: int = 0,
    fractions: Sequence[float] = (0.7, 0.1, 0.2),
    skip_unpaired: bool = False,
) -> str:
    """Check the Montgomery/Shenzhen lung-mask data, merge the masks and write a split datalist.

    Args:
        output_dir: folder for ``masks/`` and ``datalist.json`` (created; existing files of the same names are
            overwritten). Must not be one of the input folders.
        montgomery_dir: Montgomery release folder (the one holding ``CXR_png/`` and ``ManualMask/``).
        shenzhen_dir: Shenzhen folder (holding ``CXR_png/`` or ``lungs/``, and ``mask/``, ``masks/`` or
            ``lungmasks/``).
        flat_dir: a folder holding ``images/`` and ``masks/``.
        seed: seed of the split.
        fractions: training, validation and test fractions.
        skip_unpaired: leave out images without a mask and masks without an image instead of failing; they are
            logged and listed under ``"unpaired"`` in the datalist. (The public Shenzhen release has 662 images
            but 566 masks.) Unreadable files and size mismatches always fail.

    Returns:
        The path of the datalist JSON.

    Raises:
        ValueError: when no input is given, a layout folder is missing, or any file cannot be paired, read or
            matched in size; the message lists every problem.
    """
    layouts = [
        ("montgomery", montgomery_dir, montgomery_cases),
        ("shenzhen", shenzhen_dir, shenzhen_cases),
        ("flat", flat_dir, flat_cases),
    ]
    given = [(layout, Path(folder), reader) for layout, folder, reader in layouts if folder is not None]
    if not given:
        raise ValueError("prepare montgomery_shenzhen: give at least one of montgomery_dir, shenzhen_dir, flat_dir.")
    if len(fractions) != len(SPLITS):
        raise ValueError(f"fractions must give {len(SPLITS)} values for {SPLITS}, got {tuple(fractions)}.")
    output = Path(output_dir).resolve()
    for layout, folder, _ in given:
        if folder.resolve() == output:
            raise ValueError(f"output_dir {output} is the {layout} input folder; choose a separate folder.")

    cases: list[CxrCase] = []
    unpaired: list[str] = []
    problems: list[str] = []
    for layout, folder, reader in given:
        layout_cases, layout_unpaired = reader(folder)
        logger.info("%s layout %s: %d paired cases", layout, folder, len(layout_cases))
        cases += layout_cases
        unpaired += layout_unpaired
    if skip_unpaired:
        if unpaired:
            logger.warning("skip_unpaired: leaving out %d files:\n  %s", len(unpaired), "\n  ".join(unpaired))
    else:
        problems += unpaired

    strata: dict[str, tuple[str, int]] = {}
    seen: dict[str, Path] = {}
    for case in cases:
        if case.name in seen:
            problems.append(f"{case.image}: case {case.name} also comes from {seen[case.name]}")
            continue
        seen[case.name] = case.image
        try:
            patient, source, finding = parse_case_name(case.name)
        except ValueError as error:
            problems.append(f"{case.image}: {error}")
            continue
        if strata.setdefault(patient, (source, finding)) != (source, finding):
            problems.append(f"{case.image}: patient {patient} has images with both findings")
    hint = "Fix or remove these files" + (
        "." if skip_unpaired else ", or pass --skip_unpaired to leave out unpaired ones."
    )
    _raise_problems(problems, hint)
    if not cases:
        raise ValueError("prepare montgomery_shenzhen: no cases found.")

    mask_dir = output / "masks"
    mask_dir.mkdir(parents=True, exist_ok=True)
    for index, case in enumerate(cases, 1):
        problems += _merged_mask(case, mask_dir / f"{case.name}.png")
        if index % 100 == 0:
            logger.info("checked %d/%d cases", index, len(cases))
    _raise_problems(problems, "Fix or remove these files.")

    parts = stratified_group_split(strata, fractions, seed)
    datalist: dict = {
        "name": "Montgomery and Shenzhen chest X-ray lung segmentation",
        "description": "Written by 'python -m monai_mamba_nets prepare montgomery_shenzhen'. Patient-level split "
        "stratified by source and finding; paths are relative to this file's folder.",
        "sources": {layout: os.path.relpath(folder.resolve(), output) for layout, folder, _ in given},
        "seed": seed,
        "fractions": list(fractions),
        "labels": {"0": "background", "1": "lung"},
    }
    by_patient: dict[str, list[CxrCase]] = {}
    for case in cases:
        by_patient.setdefault(parse_case_name(case.name)[0], []).append(case)
    for split, patients in zip(SPLITS, parts):
        items = []
        for case in sorted((c for p in patients for c in by_patient[p]), key=lambda c: c.name):
            _, source, finding = parse_case_name(case.name)
            items.append(
                {
                    "image": os.path.relpath(case.image.resolve(), output),
                    "label": os.path.relpath(mask_dir / f"{case.name}.png", output),
                    "case": case.name,
                    "source": source,
                    "finding": FINDINGS[finding],
                }
            )
        datalist[split] = items
    if skip_unpaired:
        datalist["unpaired"] = unpaired
    datalist_path = output / DATALIST_NAME
    datalist_path.write_text(json.dumps(datalist, indent=4) + "\n")
    counts = ", ".join(f"{split} {len(datalist[split])}" for split in SPLITS)
    logger.info("wrote %s (%s)", datalist_path, counts)
    return str(datalist_path)
