"""The montgomery_shenzhen_lightm bundle: files, metadata, properties, and train/evaluate/infer on demo data.

The workflow tests run the documented ``python -m monai.bundle`` commands on the generated demo data with
tiny overrides (32x32 images, 8 filters, one epoch), in a temporary cache and bundle root.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata, verify_net_in_out
from PIL import Image

from monai_mamba_nets.bundle_demo import read_metrics, run_demo

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "montgomery_shenzhen_lightm"
CONFIGS = BUNDLE / "configs"
SCHEMA = REPO.parent / "shared" / "monai_schemas" / "meta_schema_20240725.json"
SCHEMA_MD5 = "76e1add273836515d0bbb3bc71962474"

# Small enough for a CPU test: every workflow builds the network with these.
TINY = {"image_size": [32, 32], "network_def#init_filters": 8, "num_workers": 0}
TINY_TRAIN = {**TINY, "epochs": 1, "iterations_per_epoch": 0, "batch_size": 4, "val_interval": 1}


def _args(overrides: dict) -> list[str]:
    """``--key value`` command-line overrides as python-fire parses them (lists without spaces)."""
    text = {
        key: value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))
        for key, value in overrides.items()
    }
    return [item for key, value in text.items() for item in (f"--{key}", value)]


def _bundle_run(args: list[str], cwd: Path, env: dict, processes: int = 1) -> str:
    launcher = [sys.executable, "-m", "monai.bundle", "run"]
    if processes > 1:
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1"]
        launcher += [f"--nproc_per_node={processes}", "-m", "monai.bundle", "run"]
    done = subprocess.run(launcher + args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-6000:]
    return output


@pytest.fixture(scope="module", autouse=True)
def demo_env(tmp_path_factory):
    """Environment (of this process and of the commands) whose cache, so the demo data, is a temporary folder."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("MONAI_MAMBA_NETS_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield dict(os.environ)


def test_bundle_files():
    for name in (
        "LICENSE", "large_files.yml", "docs/README.md", "docs/data_license.txt", "configs/metadata.json",
        "configs/train.json", "configs/evaluate.json", "configs/inference.json", "configs/multi_gpu_train.json",
        "configs/multi_gpu_evaluate.json", "configs/logging.conf",
    ):  # fmt: skip
        assert (BUNDLE / name).is_file(), name
    assert not (BUNDLE / "models").exists() or not any((BUNDLE / "models").iterdir())


def test_json_is_zoo_formatted():
    """4-space indent, key order kept, newline at the end (model-zoo's pretty-format-json hook)."""
    for path in sorted(CONFIGS.glob("*.json")):
        text = path.read_text()
        assert text == json.dumps(json.loads(text), indent=4) + "\n", path.name


def test_large_files_lists_no_unpublished_weights():
    import yaml

    assert yaml.safe_load((BUNDLE / "large_files.yml").read_text()) == {"large_files": []}


def test_network_is_referenced_by_dotted_path():
    for name in ("train.json", "inference.json"):
        config = json.loads((CONFIGS / name).read_text())
        assert config["network_def"]["_target_"] == "monai_mamba_nets.LightMUNet"
        assert config["network_def"]["spatial_dims"] == 2 and config["network_def"]["in_channels"] == 1
    train, inference = (json.loads((CONFIGS / n).read_text()) for n in ("train.json", "inference.json"))
    assert train["network_def"] == inference["network_def"]
    assert train["training"] == "@run"


@pytest.mark.skipif(not SCHEMA.is_file(), reason=f"local schema copy {SCHEMA} is absent")
def test_metadata_verifies_against_schema_offline():
    verify_metadata(
        meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA), hash_val=SCHEMA_MD5, hash_type="md5"
    )
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    assert metadata["version"] in metadata["changelog"]
    assert metadata["network_data_format"]["outputs"]["pred"]["channel_def"] == {"0": "background", "1": "lung"}
    assert "eval_metrics" not in metadata  # no published weights, so no accuracy to claim


def test_verify_net_in_out():
    verify_net_in_out(
        net_id="network_def",
        meta_file=str(CONFIGS / "metadata.json"),
        config_file=str(CONFIGS / "inference.json"),
        device="cpu",
        n=4,
    )


@pytest.mark.parametrize(
    "workflow_type, config, overrides",
    [("train", "train.json", TINY_TRAIN), ("infer", "inference.json", {**TINY, "load_pretrain": False})],
)
def test_workflow_properties(workflow_type, config, overrides, tmp_path):
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / config),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        workflow_type=workflow_type,
        bundle_root=str(tmp_path),
        **overrides,
    )
    workflow.initialize()
    assert workflow.check_properties() == []


@pytest.mark.parametrize(
    "config, recipe_ids", [("train.json", ["image_size", "epochs"]), ("inference.json", ["image_size"])]
)
def test_recipe_follows_the_data(demo_env, monkeypatch, tmp_path, config, recipe_ids):
    """The embedded demo data runs the demo recipe; a real dataset_dir runs the paper's."""
    monkeypatch.setenv("MONAI_MAMBA_NETS_CACHE", demo_env["MONAI_MAMBA_NETS_CACHE"])
    for dataset_dir, recipe in ((None, "demo"), (str(tmp_path), "paper")):
        parser = ConfigParser()
        parser.read_config(str(CONFIGS / config))
        if dataset_dir is not None:
            parser["dataset_dir"] = dataset_dir
        assert parser.get_parsed_content("recipe") == recipe
        recipes = parser.get_parsed_content("recipes")
        for name in recipe_ids:
            assert parser.get_parsed_content(name) == recipes[recipe][name]
        assert parser.get_parsed_content("network_def").init_filters == recipes[recipe]["init_filters"]


def test_train_evaluate_infer_with_documented_commands(demo_env, tmp_path):
    """The issue's commands with no argument but bundle_root (to keep the outputs here): demo data, demo recipe."""
    root = tmp_path / "bundle_root"
    # 1. the issue's form, from the repository root, with the `training` run id
    output = _bundle_run(
        ["training", "--config_file", str(BUNDLE.relative_to(REPO) / "configs" / "train.json")]
        + _args({"bundle_root": str(root)}),
        cwd=REPO,
        env=demo_env,
    )
    assert "DEMO DATA" in output and "--dataset_dir" in output
    state = torch.load(root / "models" / "model.pt", weights_only=True)
    assert all(isinstance(v, torch.Tensor) for v in state.values())  # a plain state dict
    # 2. evaluation, zoo form from the bundle folder: Dice, IoU and HD95 per test image
    _bundle_run(
        ["--config_file", "['configs/train.json','configs/evaluate.json']"] + _args({"bundle_root": str(root)}),
        cwd=BUNDLE,
        env=demo_env,
    )
    metrics = read_metrics(root / "eval" / "metrics.csv")
    assert set(metrics) == {"val_mean_dice", "val_mean_iou", "val_hd95"}
    assert 0 <= metrics["val_mean_iou"] <= metrics["val_mean_dice"] <= 1
    test_cases = [line.split(",")[0] for line in (root / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()[1:]]
    assert len(test_cases) == 4  # the demo's test split
    # 3. inference on a folder of PNGs: one 0/255 mask per input, named after it, at the input's size
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for case in test_cases[:3]:
        shutil.copy(case, inputs)
    _bundle_run(
        ["--config_file", "configs/inference.json"]
        + _args(
            {
                "bundle_root": str(root),
                "dataset_dir": str(inputs),
                "output_dir": str(tmp_path / "masks"),
                "network_def#init_filters": 8,  # the demo-trained model, on PNGs outside the demo folder
            }
        ),
        cwd=BUNDLE,
        env=demo_env,
    )
    for image in sorted(inputs.iterdir()):
        mask = Image.open(tmp_path / "masks" / f"{image.stem}_seg.png")
        assert mask.mode == "L" and mask.size == Image.open(image).size
        assert set(np.unique(np.asarray(mask))) <= {0, 255}
    assert len(list((tmp_path / "masks").iterdir())) == 3


def _finalize_then_list_threads(config: str, before: tuple[str, ...] = ()) -> str:
    """A config that runs ``before``, then the bundle config's own ``finalize``, then writes each rank's thread names
    to ``threads<rank>`` in the output folder: a gloo group still alive at interpreter exit can abort the process,
    when a gloo worker releases its last collective during shutdown."""
    finalize = json.loads((CONFIGS / config).read_text())["finalize"]
    threads = "[open(f'/proc/self/task/{t}/comm').read().strip() for t in os.listdir('/proc/self/task')]"
    list_threads = f"$pathlib.Path(@output_dir, 'threads' + os.environ['RANK']).write_text(' '.join({threads}))"
    return json.dumps({"finalize": [*before, *finalize, "$import pathlib", list_threads]})


def _assert_no_gloo_thread_left(output_dir: Path) -> None:
    for rank in (0, 1):
        names = (output_dir / f"threads{rank}").read_text().split()
        assert not [name for name in names if "gloo" in name], names


def test_multi_gpu_train_and_evaluate_with_gloo_on_two_processes(demo_env, tmp_path):
    """torchrun with 2 CPU processes: both ranks train on disjoint shards and end with identical weights; the
    bundle's finalize leaves no gloo thread behind, in training (DDP) and in evaluation."""
    root = tmp_path / "bundle_root"
    evidence = tmp_path / "ranks.json"
    save_rank = (
        "$torch.save({'world_size': dist.get_world_size(), 'indices': list(iter(@train#sampler)), "
        "'state': @network.module.state_dict()}, @output_dir + f'/rank{dist.get_rank()}.pt')"
    )
    evidence.write_text(_finalize_then_list_threads("multi_gpu_train.json", before=(save_rank,)))
    configs = f"['configs/train.json','configs/multi_gpu_train.json','{evidence}']"
    _bundle_run(["--config_file", configs] + _args({**TINY_TRAIN, "bundle_root": str(root)}), BUNDLE, demo_env, 2)
    ranks = [torch.load(root / "eval" / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert not set(ranks[0]["indices"]) & set(ranks[1]["indices"])
    assert len(ranks[0]["indices"]) == len(ranks[1]["indices"]) == 9  # 18 training cases, 2 shards
    for name, value in ranks[0]["state"].items():
        assert torch.equal(value, ranks[1]["state"][name]), name
    assert (root / "models" / "model.pt").is_file()
    _assert_no_gloo_thread_left(root / "eval")

    evidence.write_text(_finalize_then_list_threads("multi_gpu_evaluate.json"))
    configs = f"['configs/train.json','configs/evaluate.json','configs/multi_gpu_evaluate.json','{evidence}']"
    _bundle_run(["--config_file", configs] + _args({**TINY, "bundle_root": str(root)}), BUNDLE, demo_env, 2)
    rows = (root / "eval" / "val_mean_dice_raw.csv").read_text().splitlines()[1:]
    assert len(rows) == 4  # the test split, gathered from both ranks
    _assert_no_gloo_thread_left(root / "eval")


def test_demo_command_runs_all_three_workflows(demo_env, tmp_path, monkeypatch):
    """``python -m monai_mamba_nets demo`` code path, with an even smaller run than the demo recipe."""
    monkeypatch.setenv("MONAI_MAMBA_NETS_CACHE", demo_env["MONAI_MAMBA_NETS_CACHE"])
    overrides = {"image_size": [32, 32], "epochs": 1, "val_interval": 1}
    result = run_demo(BUNDLE.name, str(BUNDLE.parent), str(tmp_path / "work"), overrides)
    assert set(result["metrics"]) == {"val_mean_dice", "val_mean_iou", "val_hd95"}
    assert len(result["predictions"]) == 24  # every demo image
    assert (tmp_path / "work" / "models" / "model.pt").is_file()


def test_clear_errors_for_missing_inputs(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "inference.json"),
        workflow_type="infer",
        logging_file=False,
        dataset_dir=str(empty),
        load_pretrain=False,
        bundle_root=str(tmp_path),
    )
    with pytest.raises(RuntimeError) as error:  # MONAI wraps errors of `$` expressions
        workflow.initialize()  # builds the evaluator, hence the datalist
    assert "holds no file matching" in str(error.value.__cause__)
    workflow = ConfigWorkflow(
        config_file=str(CONFIGS / "train.json"),
        workflow_type="train",
        logging_file=False,
        dataset_dir=str(empty),
        bundle_root=str(tmp_path),
    )
    workflow.initialize()
    with pytest.raises(RuntimeError) as error:
        workflow.parser.get_parsed_content("train#dataset#data")
    assert "prepare <dataset> --output_dir" in str(error.value.__cause__)
    with pytest.raises(ValueError, match="is not a bundle under .*missing .*train.json"):
        run_demo("no_such_bundle", str(REPO / "bundles"), str(tmp_path / "work"))
