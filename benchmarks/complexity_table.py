"""Regenerate the tables of ``docs/complexity.md``: every network beside the numbers its paper printed.

    python benchmarks/complexity_table.py                            # print the tables (markdown)
    python benchmarks/complexity_table.py --write docs/complexity.md  # replace the generated block of the doc

Counting runs on fake tensors (no memory, no arithmetic), so the whole table takes well under a minute on a CPU.
A network that is not (yet) exported by ``monai_mamba_nets.nets`` is left out with a note.
"""

from __future__ import annotations

import argparse
import re
from dataclasses import dataclass, field
from pathlib import Path

from monai_mamba_nets.complexity import ComplexityReport, build_network, count_complexity

BEGIN, END = "<!-- complexity-table:begin -->", "<!-- complexity-table:end -->"


@dataclass(frozen=True)
class Row:
    label: str
    network: str
    shape: tuple[int, ...]
    paper: str
    kwargs: dict = field(default_factory=dict)


LIGHTM_2D = {"spatial_dims": 2, "in_channels": 3, "out_channels": 2}
LIGHTM_3D = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3}

PER_SAMPLE = [
    Row("LightM-UNet v1 (HEAD), 2D, 3 -> 2", "LightMUNet", (1, 3, 512, 512), "1.09 M (text describes v1)", LIGHTM_2D),
    Row("LightM-UNet v1 (HEAD), 3D, 1 -> 3", "LightMUNet", (1, 1, 128, 128, 128), "1.87 M", LIGHTM_3D),
    Row("LightM-UNet v0 (first upload), 2D", "LightMUNet", (1, 3, 512, 512), "", {**LIGHTM_2D, "variant": "v0"}),
    Row("LightM-UNet v0 (first upload), 3D", "LightMUNet", (1, 1, 128, 128, 128), "", {**LIGHTM_3D, "variant": "v0"}),
    Row(
        "LKM-UNet 3D, AbdomenCT plan, 14 classes",
        "LKMUNet.from_reference_plan",
        (1, 1, 40, 224, 192),
        "tables not read; thop on the reference 185.3 M; 3rd-party 189.55 M / 993.70 G",
        {"spatial_dims": 3},
    ),
    Row("LKM-UNet 2D, 7 stages, 14 classes", "LKMUNet.from_reference_plan", (1, 1, 320, 320), "", {"spatial_dims": 2}),
    Row(
        "Mamba-UNet, 4 classes (grey repeated to RGB)",
        "MambaUNet",
        (1, 1, 224, 224),
        "none; 19,121,472 true (2 classes, Semi-Mamba-UNet)",
        {"in_channels": 1, "out_channels": 4},
    ),
]

PAPER_SETTINGS = [
    Row("LightM-UNet v0, M&S 2D", "LightMUNet", (12, 3, 512, 512), "1.09 M / 267.19 G", {**LIGHTM_2D, "variant": "v0"}),
    Row(
        "LightM-UNet v0, LiTS 3D",
        "LightMUNet",
        (2, 1, 128, 128, 128),
        "1.87 M / 457.62 G",
        {**LIGHTM_3D, "variant": "v0"},
    ),
    Row("LightM-UNet v1, M&S 2D", "LightMUNet", (12, 3, 512, 512), "", LIGHTM_2D),
    Row("LightM-UNet v1, LiTS 3D", "LightMUNet", (2, 1, 128, 128, 128), "", LIGHTM_3D),
]


def _g(macs: int) -> str:
    return f"{macs / 1e9:,.2f}"


def _shape(shape: tuple[int, ...]) -> str:
    return "x".join(map(str, shape))


def count(row: Row) -> ComplexityReport | None:
    try:
        network = build_network(row.network, **row.kwargs)
    except ValueError as error:
        if "unknown network" not in str(error):
            raise
        return None
    return count_complexity(network, row.shape, name=row.label)


def per_sample_table() -> list[str]:
    lines = [
        "| network | input | true params | thop-style params | thop-style GMACs | full GMACs (conv / linear / Mamba) "
        "| paper printed |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for row in PER_SAMPLE:
        report = count(row)
        if report is None:
            lines.append(f"| {row.label} | {_shape(row.shape)} | not built: `{row.network}` is not exported | | | | |")
            continue
        kinds = " / ".join(_g(report.full_macs_by_kind[k]) for k in ("conv", "linear", "mamba"))
        lines.append(
            f"| {row.label} | {_shape(row.shape)} | {report.true_params:,} | {report.thop_params:,} "
            f"| {_g(report.thop_macs)} | {_g(report.full_macs)} ({kinds}) | {row.paper} |"
        )
    return lines


def paper_settings_table() -> list[str]:
    lines = [
        "| network | training batch | thop-style params | thop-style GMACs | full GMACs | paper printed |",
        "|---|---|---:|---:|---:|---|",
    ]
    for row in PAPER_SETTINGS:
        report = count(row)
        lines.append(
            f"| {row.label} | {_shape(row.shape)} | {report.thop_params:,} | {_g(report.thop_macs)} "
            f"| {_g(report.full_macs)} | {row.paper} |"
        )
    return lines


def tables() -> str:
    return "\n".join(
        [
            "Per sample (batch 1):",
            "",
            *per_sample_table(),
            "",
            "LightM-UNet at the paper's training batches (thop measured whole batches):",
            "",
            *paper_settings_table(),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--write", type=Path, help="markdown file whose generated block is replaced")
    args = parser.parse_args()
    text = tables()
    if args.write is None:
        print(text)
        return
    doc = args.write.read_text()
    block = re.compile(re.escape(BEGIN) + ".*?" + re.escape(END), re.DOTALL)
    if not block.search(doc):
        raise SystemExit(f"{args.write} has no block between {BEGIN} and {END}")
    args.write.write_text(block.sub(lambda _: f"{BEGIN}\n{text}\n{END}", doc))
    print(f"updated {args.write}")


if __name__ == "__main__":
    main()
