"""Reproducible group-level splits stratified by a label, for the data-preparation commands."""

from __future__ import annotations

import math
import random
from collections import defaultdict
from collections.abc import Hashable, Mapping, Sequence
from fractions import Fraction

__all__ = ["stratified_group_split"]


def _part_sizes(count: int, fractions: Sequence[float]) -> list[int]:
    """Split ``count`` items into parts proportional to ``fractions`` (largest remainder, ties to earlier parts).

    Fractions are made exact first (0.7 -> 7/10) so that float rounding never decides a tie.
    """
    exact = [count * Fraction(f).limit_denominator(10**6) for f in fractions]
    sizes = [math.floor(e) for e in exact]
    by_remainder = sorted(range(len(fractions)), key=lambda i: (-(exact[i] - sizes[i]), i))
    for i in by_remainder[: count - sum(sizes)]:
        sizes[i] += 1
    return sizes


def stratified_group_split(strata: Mapping[str, Hashable], fractions: Sequence[float], seed: int) -> list[list[str]]:
    """Split groups (e.g. patients) into parts so that every stratum is divided in the given proportions.

    Each stratum's groups are sorted, shuffled with ``random.Random(seed)`` and cut into consecutive parts
    whose sizes follow ``fractions`` by the largest-remainder rule. The result depends only on the group
    names, their strata, ``fractions`` and ``seed``, not on the input order.

    Args:
        strata: group id -> stratum (any hashable with a stable ``repr``, e.g. ``("montgomery", 1)``).
        fractions: one positive fraction per part, summing to 1 (e.g. ``(0.7, 0.1, 0.2)``).
        seed: seed of the shuffle.

    Returns:
        One sorted list of group ids per part.

    Raises:
        ValueError: for empty ``strata``, or fractions that are not positive or do not sum to 1.
    """
    if not strata:
        raise ValueError("stratified_group_split: no groups to split.")
    if not fractions or any(f <= 0 for f in fractions) or not math.isclose(sum(fractions), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions must be positive and sum to 1, got {tuple(fractions)}.")
    groups_by_stratum: dict[Hashable, list[str]] = defaultdict(list)
    for group, stratum in strata.items():
        groups_by_stratum[stratum].append(group)
    rng = random.Random(seed)
    parts: list[list[str]] = [[] for _ in fractions]
    for stratum in sorted(groups_by_stratum, key=repr):
        groups = sorted(groups_by_stratum[stratum])
        rng.shuffle(groups)
        start = 0
        for part, size in zip(parts, _part_sizes(len(groups), fractions)):
            part.extend(groups[start : start + size])
            start += size
    return [sorted(part) for part in parts]
