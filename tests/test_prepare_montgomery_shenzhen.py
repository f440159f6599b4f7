"""Data preparation for the montgomery_shenzhen_lightm bundle: layouts, checks, split, demo data and CLI."""

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from monai_mamba_nets.data import (
    load_split,
    make_demo_cxr,
    montgomery_shenzhen_demo,
    prepare_montgomery_shenzhen,
    read_grayscale,
    stratified_group_split,
    to_grayscale,
)
from monai_mamba_nets.data.montgomery_shenzhen import parse_case_name

REPO = Path(__file__).resolve().parents[1]
SPLITS = ("training", "validation", "test")


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _image(height=12, width=10, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(height, width), dtype=np.uint8)


def _mask(height=12, width=10, columns=slice(2, 8)) -> np.ndarray:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[3:9, columns] = 255
    return mask


def _montgomery(root: Path, names) -> Path:
    for name in names:
        _png(root / "CXR_png" / f"{name}.png", _image())
        _png(root / "ManualMask" / "leftMask" / f"{name}.png", _mask(columns=slice(6, 9)))
        _png(root / "ManualMask" / "rightMask" / f"{name}.png", _mask(columns=slice(1, 4)))
    return root


def _shenzhen(root: Path, names, image_dir="CXR_png", mask_dir="mask") -> Path:
    for name in names:
        _png(root / image_dir / f"{name}.png", _image())
        _png(root / mask_dir / f"{name}_mask.png", _mask())
    return root


def _flat(root: Path, names, mask_suffix="") -> Path:
    for name in names:
        _png(root / "images" / f"{name}.png", _image())
        _png(root / "masks" / f"{name}{mask_suffix}.png", _mask())
    return root


def _names(prefix, count, tuberculosis_every=3):
    return [f"{prefix}_{i:04d}_{int(i % tuberculosis_every == 0)}" for i in range(1, count + 1)]


def _all_items(datalist_path):
    datalist = json.loads(Path(datalist_path).read_text())
    return datalist, {split: datalist[split] for split in SPLITS}


def test_montgomery_left_and_right_masks_are_merged(tmp_path):
    root = _montgomery(tmp_path / "MontgomerySet", _names("MCUCXR", 10))
    datalist_path = prepare_montgomery_shenzhen(str(tmp_path / "out"), montgomery_dir=str(root))
    items = [item for split in SPLITS for item in load_split(datalist_path, split)]
    assert len(items) == 10
    merged = read_grayscale(items[0]["label"])
    expected = _mask(columns=slice(6, 9)) | _mask(columns=slice(1, 4))
    np.testing.assert_array_equal(merged, expected)
    assert {item["source"] for item in items} == {"montgomery"}
    assert Path(items[0]["image"]).samefile(root / "CXR_png" / f"{items[0]['case']}.png")


@pytest.mark.parametrize("image_dir, mask_dir", [("CXR_png", "mask"), ("lungs", "lungmasks")])
def test_shenzhen_layout_pairs_mask_suffix(tmp_path, image_dir, mask_dir):
    root = _shenzhen(tmp_path / "shenzhen", _names("CHNCXR", 10), image_dir, mask_dir)
    datalist, splits = _all_items(prepare_montgomery_shenzhen(str(tmp_path / "out"), shenzhen_dir=str(root)))
    assert sum(len(items) for items in splits.values()) == 10
    assert {item["source"] for items in splits.values() for item in items} == {"shenzhen"}
    assert datalist["labels"] == {"0": "background", "1": "lung"}


def test_flat_layout_accepts_plain_and_suffixed_mask_names(tmp_path):
    root = _flat(tmp_path / "flat", _names("MCUCXR", 5))
    _flat(root, _names("CHNCXR", 5), mask_suffix="_mask")
    _, splits = _all_items(prepare_montgomery_shenzhen(str(tmp_path / "out"), flat_dir=str(root)))
    sources = Counter(item["source"] for items in splits.values() for item in items)
    assert sources == {"montgomery": 5, "shenzhen": 5}


def test_split_is_reproducible_patient_level_and_stratified(tmp_path):
    names = _names("MCUCXR", 40) + _names("CHNCXR", 60, tuberculosis_every=2)
    root = _flat(tmp_path / "flat", names)
    first = _all_items(prepare_montgomery_shenzhen(str(tmp_path / "a"), flat_dir=str(root), seed=3))[1]
    again = _all_items(prepare_montgomery_shenzhen(str(tmp_path / "b"), flat_dir=str(root), seed=3))[1]
    other = _all_items(prepare_montgomery_shenzhen(str(tmp_path / "c"), flat_dir=str(root), seed=4))[1]
    cases = {split: [item["case"] for item in items] for split, items in first.items()}
    assert cases == {split: [item["case"] for item in items] for split, items in again.items()}
    assert cases != {split: [item["case"] for item in items] for split, items in other.items()}
    patients = [{parse_case_name(case)[0] for case in cases[split]} for split in SPLITS]
    assert not (patients[0] & patients[1] or patients[0] & patients[2] or patients[1] & patients[2])
    assert sorted(sum(cases.values(), [])) == sorted(names)
    strata = {split: Counter((item["source"], item["finding"]) for item in items) for split, items in first.items()}
    # montgomery: 13 TB + 27 normal, shenzhen: 30 + 30; each stratum cut 7:1:2 by largest remainder
    assert strata["training"] == {
        ("montgomery", "tuberculosis"): 9, ("montgomery", "normal"): 19,
        ("shenzhen", "tuberculosis"): 21, ("shenzhen", "normal"): 21,
    }  # fmt: skip
    assert strata["validation"] == {
        ("montgomery", "tuberculosis"): 1, ("montgomery", "normal"): 3,
        ("shenzhen", "tuberculosis"): 3, ("shenzhen", "normal"): 3,
    }  # fmt: skip
    assert strata["test"] == {
        ("montgomery", "tuberculosis"): 3, ("montgomery", "normal"): 5,
        ("shenzhen", "tuberculosis"): 6, ("shenzhen", "normal"): 6,
    }  # fmt: skip


def test_stratified_group_split_ignores_input_order_and_rejects_bad_fractions():
    strata = {f"p{i}": i % 2 for i in range(20)}
    reversed_strata = dict(reversed(list(strata.items())))
    assert stratified_group_split(strata, (0.7, 0.1, 0.2), 0) == stratified_group_split(
        reversed_strata, (0.7, 0.1, 0.2), 0
    )
    assert [len(part) for part in stratified_group_split(strata, (0.7, 0.1, 0.2), 0)] == [14, 2, 4]
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_group_split(strata, (0.7, 0.2, 0.2), 0)
    with pytest.raises(ValueError, match="no groups"):
        stratified_group_split({}, (0.7, 0.1, 0.2), 0)


def test_case_names():
    assert parse_case_name("MCUCXR_0001_0") == ("MCUCXR_0001", "montgomery", 0)
    assert parse_case_name("CHNCXR_0662_1") == ("CHNCXR_0662", "shenzhen", 1)
    assert parse_case_name("DEMOCXR_0003_1") == ("DEMOCXR_0003", "democxr", 1)
    with pytest.raises(ValueError, match="<PREFIX>_<number>_<0|1>"):
        parse_case_name("patient7")


def test_missing_mask_is_listed_and_skip_unpaired_records_it(tmp_path):
    root = _shenzhen(tmp_path / "shenzhen", _names("CHNCXR", 11))
    (root / "mask" / "CHNCXR_0004_0_mask.png").unlink()
    _png(root / "mask" / "CHNCXR_0099_0_mask.png", _mask())
    with pytest.raises(ValueError) as error:
        prepare_montgomery_shenzhen(str(tmp_path / "out"), shenzhen_dir=str(root))
    message = str(error.value)
    assert "2 problem(s)" in message and "--skip_unpaired" in message
    assert "CHNCXR_0004_0.png: no mask" in message
    assert "CHNCXR_0099_0_mask.png: mask without an image" in message
    datalist, splits = _all_items(
        prepare_montgomery_shenzhen(str(tmp_path / "out"), shenzhen_dir=str(root), skip_unpaired=True)
    )
    assert sum(len(items) for items in splits.values()) == 10
    assert len(datalist["unpaired"]) == 2


def test_montgomery_needs_both_masks(tmp_path):
    root = _montgomery(tmp_path / "MontgomerySet", _names("MCUCXR", 10))
    (root / "ManualMask" / "rightMask" / "MCUCXR_0002_0.png").unlink()
    with pytest.raises(ValueError, match=r"MCUCXR_0002_0.png: no mask for this image in .*rightMask"):
        prepare_montgomery_shenzhen(str(tmp_path / "out"), montgomery_dir=str(root))


def test_unreadable_png_mismatched_size_and_empty_mask_are_all_reported(tmp_path):
    root = _flat(tmp_path / "flat", _names("MCUCXR", 10))
    (root / "images" / "MCUCXR_0001_0.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    _png(root / "masks" / "MCUCXR_0002_0.png", _mask(height=14))
    _png(root / "masks" / "MCUCXR_0004_0.png", np.full((12, 10), 100, dtype=np.uint8))
    with pytest.raises(ValueError) as error:
        prepare_montgomery_shenzhen(str(tmp_path / "out"), flat_dir=str(root))
    message = str(error.value)
    assert "3 problem(s)" in message
    assert "MCUCXR_0001_0.png: cannot read the image" in message
    assert "MCUCXR_0002_0.png: mask is 10x14 (width x height) but image" in message and "is 10x12" in message
    assert "MCUCXR_0004_0.png: empty lung mask" in message
    assert not (tmp_path / "out" / "datalist.json").exists()


@pytest.mark.parametrize("folder", ["images", "masks"])
def test_empty_or_missing_folders(tmp_path, folder):
    root = _flat(tmp_path / "flat", _names("MCUCXR", 3))
    for path in (root / folder).iterdir():
        path.unlink()
    with pytest.raises(ValueError, match="problem"):
        prepare_montgomery_shenzhen(str(tmp_path / "out"), flat_dir=str(root))
    (root / folder).rmdir()
    with pytest.raises(ValueError, match=f"flat layout: folder .*{folder} does not exist"):
        prepare_montgomery_shenzhen(str(tmp_path / "out"), flat_dir=str(root))


def test_empty_image_folder_is_named(tmp_path):
    (tmp_path / "flat" / "images").mkdir(parents=True)
    (tmp_path / "flat" / "masks").mkdir()
    with pytest.raises(ValueError, match=r"images: no PNG images"):
        prepare_montgomery_shenzhen(str(tmp_path / "out"), flat_dir=str(tmp_path / "flat"))


def test_argument_errors(tmp_path):
    root = _flat(tmp_path / "flat", _names("MCUCXR", 10))
    with pytest.raises(ValueError, match="at least one of"):
        prepare_montgomery_shenzhen(str(tmp_path / "out"))
    with pytest.raises(ValueError, match="choose a separate folder"):
        prepare_montgomery_shenzhen(str(root), flat_dir=str(root))
    with pytest.raises(ValueError, match="fractions must give 3 values"):
        prepare_montgomery_shenzhen(str(tmp_path / "out"), flat_dir=str(root), fractions=(0.5, 0.5))
    with pytest.raises(ValueError, match="pass .*MontgomerySet instead"):
        prepare_montgomery_shenzhen(
            str(tmp_path / "out"),
            montgomery_dir=str(_montgomery(tmp_path / "m" / "MontgomerySet", ["MCUCXR_0001_0"]).parent),
        )
    shenzhen = _png(tmp_path / "s" / "CXR_png" / "CHNCXR_0001_0.png", _image()).parents[1]
    with pytest.raises(ValueError, match=r"exactly one mask folder of \['mask', 'masks', 'lungmasks'\], found none"):
        prepare_montgomery_shenzhen(str(tmp_path / "out"), shenzhen_dir=str(shenzhen))
    (shenzhen / "lungs").mkdir()
    with pytest.raises(ValueError, match="exactly one image folder .* found several: CXR_png, lungs"):
        prepare_montgomery_shenzhen(str(tmp_path / "out"), shenzhen_dir=str(shenzhen))


def test_bad_names_duplicates_and_conflicting_findings(tmp_path):
    root = _flat(tmp_path / "flat", ["MCUCXR_0001_0", "MCUCXR_0001_1", "scan7"])
    other = _flat(tmp_path / "flat2", ["MCUCXR_0001_0"])
    with pytest.raises(ValueError) as error:
        prepare_montgomery_shenzhen(str(tmp_path / "out"), flat_dir=str(root), montgomery_dir=None)
    assert "scan7.png: case name 'scan7' does not follow" in str(error.value)
    assert "patient MCUCXR_0001 has images with both findings" in str(error.value)
    montgomery = _montgomery(tmp_path / "MontgomerySet", ["MCUCXR_0001_0"])
    with pytest.raises(ValueError, match="case MCUCXR_0001_0 also comes from"):
        prepare_montgomery_shenzhen(str(tmp_path / "out"), flat_dir=str(other), montgomery_dir=str(montgomery))


def test_grayscale_conversion(tmp_path):
    grey = _image()
    rgb = Image.fromarray(np.stack([grey] * 3, axis=-1))
    assert to_grayscale(rgb).mode == "L"
    np.testing.assert_array_equal(np.asarray(to_grayscale(rgb)), grey)
    sixteen = Image.fromarray(grey.astype(np.uint16) * 200)
    assert to_grayscale(sixteen) is sixteen
    colour = _png(tmp_path / "colour.png", np.stack([grey, grey, 255 - grey], axis=-1))
    with pytest.raises(ValueError, match=r"colour.png: colour image"):
        read_grayscale(colour)


def test_cli_prepare_and_clean_error(tmp_path):
    root = _flat(tmp_path / "flat", _names("CHNCXR", 10))
    command = [sys.executable, "-m", "monai_mamba_nets", "prepare", "montgomery_shenzhen"]
    done = subprocess.run(
        command + ["--output_dir", str(tmp_path / "out"), "--flat_dir", str(root), "--seed", "1"],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).name == "datalist.json"
    assert json.loads((tmp_path / "out" / "datalist.json").read_text())["seed"] == 1
    failed = subprocess.run(command + ["--output_dir", str(tmp_path / "o2")], capture_output=True, text=True, cwd=REPO)
    assert failed.returncode == 1
    assert failed.stderr.strip().splitlines()[-1].startswith("error: prepare montgomery_shenzhen: give at least one")


def test_demo_data_is_deterministic_and_generated_once(tmp_path, monkeypatch, caplog):
    make_demo_cxr(tmp_path / "one", num_cases=10, seed=5)
    make_demo_cxr(tmp_path / "two", num_cases=10, seed=5)
    for name in ("raw/images/DEMOCXR_0001_0.png", "raw/masks/DEMOCXR_0002_1.png", "datalist.json"):
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes()
    monkeypatch.setenv("MONAI_MAMBA_NETS_CACHE", str(tmp_path / "cache"))
    first = montgomery_shenzhen_demo()
    stamp = os.stat(Path(first) / "datalist.json").st_mtime_ns
    assert montgomery_shenzhen_demo() == first
    assert os.stat(Path(first) / "datalist.json").st_mtime_ns == stamp
    assert "DEMO DATA" in caplog.text and "--dataset_dir" in caplog.text
    assert [len(load_split(Path(first) / "datalist.json", split)) for split in SPLITS] == [18, 2, 4]
    with pytest.raises(ValueError, match="at least 10"):
        make_demo_cxr(tmp_path / "three", num_cases=4)


@pytest.mark.real_data
def test_real_montgomery_layout_matches_combined_masks(shared_data, tmp_path):
    """Reads ../shared/data: merging leftMask + rightMask gives back cxr_lung's combined mask."""
    datalist_path = prepare_montgomery_shenzhen(
        str(tmp_path / "out"), montgomery_dir=str(shared_data / "montgomery_layout" / "MontgomerySet")
    )
    datalist, splits = _all_items(datalist_path)
    items = [item for split in SPLITS for item in load_split(datalist_path, split)]
    assert len(items) == 110
    assert [len(splits[split]) for split in SPLITS] == [78, 10, 22]
    for item in items[:10]:
        combined = read_grayscale(shared_data / "cxr_lung" / "masks" / f"{item['case']}.png") > 127
        np.testing.assert_array_equal(read_grayscale(item["label"]) > 127, combined)


@pytest.mark.real_data
def test_real_shenzhen_layout(shared_data, tmp_path):
    """Reads ../shared/data: the 11 Shenzhen cases in lungs/ + lungmasks/ (*_mask.png)."""
    datalist_path = prepare_montgomery_shenzhen(
        str(tmp_path / "out"), shenzhen_dir=str(shared_data / "shenzhen_layout")
    )
    items = [item for split in SPLITS for item in load_split(datalist_path, split)]
    assert sorted(item["case"] for item in items) == [f"CHNCXR_{i:04d}_0" for i in range(1, 12)]
    for item in items:
        mask = read_grayscale(item["label"])
        assert set(np.unique(mask)) == {0, 255}
        assert mask.shape == read_grayscale(item["image"]).shape


@pytest.mark.real_data
def test_real_flat_cxr_lung_split(shared_data, tmp_path):
    """Reads ../shared/data: all 564 cxr_lung cases, split 7:1:2 within every (source, finding) stratum."""
    datalist_path = prepare_montgomery_shenzhen(str(tmp_path / "out"), flat_dir=str(shared_data / "cxr_lung"), seed=0)
    _, splits = _all_items(datalist_path)
    assert [len(splits[split]) for split in SPLITS] == [396, 56, 112]
    total = Counter((item["source"], item["finding"]) for items in splits.values() for item in items)
    assert total == {
        ("montgomery", "normal"): 65, ("montgomery", "tuberculosis"): 45,
        ("shenzhen", "normal"): 228, ("shenzhen", "tuberculosis"): 226,
    }  # fmt: skip
    for split, fraction in zip(SPLITS, (0.7, 0.1, 0.2)):
        counts = Counter((item["source"], item["finding"]) for item in splits[split])
        for stratum, count in total.items():
            assert abs(counts[stratum] - fraction * count) < 1, (split, stratum)
