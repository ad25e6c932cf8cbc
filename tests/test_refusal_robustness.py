"""The region rules of benchmarks/refusal_robustness.py (its own, earlier protocol; notebook 04 runs the paper's)."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from ep.model import interventions as I
from ep.studies import refusal as R

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))  # as `python benchmarks/refusal_robustness.py` has it: its sibling modules
_spec = importlib.util.spec_from_file_location("refusal_robustness", BENCHMARKS / "refusal_robustness.py")
B = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(B)


def make_table():
    # region 0: 6 members, 5 refused; region 1: 10 members, 4 refused; region 2: 3 members all refused;
    # region 3: 6 members, 0 refused; region 4: 9 members, 1 refused; region 5: empty
    regions = np.repeat([0, 1, 2, 3, 4], [6, 10, 3, 6, 9])
    refused = np.concatenate([[1] * 5 + [0], [1] * 4 + [0] * 6, [1] * 3, [0] * 6, [1] + [0] * 8]).astype(bool)
    return R.region_table(regions, refused, refused.copy(), n_regions=6, min_members=5)


def test_top_regions_are_the_best_scored():
    assert B.top_regions(make_table(), 2) == [0, 1]
    with pytest.raises(ValueError, match="enough members"):
        B.top_regions(make_table(), 5)

def test_null_region_is_size_matched_and_low_refusal():
    table = make_table()
    assert B.null_region(table, size=6, exclude=[0]) == 3  # rate 0, same size
    assert B.null_region(table, size=9, exclude=[0]) == 4  # rate 0.11, closest size
    assert B.null_region(table, size=9, exclude=[0], max_rate=0.0) == 3
    with pytest.raises(ValueError):
        B.null_region(table, size=6, exclude=[0, 1, 3, 4])
    assert B.null_regions(table, size=6, k=2, exclude=[0]) == [3, 4]  # the next best, never twice


def test_null_region_avoids_the_chosen_axis():
    table = make_table()
    dirs = torch.eye(4)[[0, 1, 2, 0, 3, 3]].float()  # region 3 points like region 0 does
    dirs[3] = -dirs[3]  # ... but from the far side: still the same axis
    kwargs = dict(exclude=[0], directions=dirs, reference=dirs[0])
    assert B.null_region(table, size=6, **kwargs) == 4  # region 3 (|cos| = 1) is skipped
    assert B.null_region(table, size=6, **kwargs, max_cosine=1.0) == 3
    dirs[4] = dirs[0] + 0.01 * dirs[4]  # now every low-refusal region is aligned: take the least aligned
    assert B.null_region(table, size=6, **kwargs) == 4


def test_layer_regions_finds_the_refusal_cluster_and_off_axis_nulls():
    # 8 clusters of 12 prompts at layer 3: cluster 0 harmful and refused, along the refusal axis;
    # the others harmless and answered; cluster 1 points along the axis too, from the far side
    g = torch.Generator().manual_seed(0)
    d, n = 32, 12
    centres = torch.nn.functional.normalize(torch.randn(8, d, generator=g), dim=1)
    axis = torch.nn.functional.normalize(centres[0] - centres[1:].mean(0), dim=0)
    centres[1] = -axis
    acts = 10 * torch.repeat_interleave(centres, n, dim=0) + 0.3 * torch.randn(8 * n, d, generator=g)
    harmful = np.arange(8 * n) < n
    refused = harmful | np.isin(np.arange(8 * n), [2 * n, 3 * n])  # clusters 2, 3: one refusal each
    build = R.Generations([[]] * (8 * n), {3: acts}, torch.zeros(8 * n, dtype=torch.int64), torch.full((8 * n,), 5),
                          prompts=[f"p{i}" for i in range(8 * n)],
                          completions=["I cannot." if r else "Sure." for r in refused])
    a = B.layer_regions(build, harmful, 3, 14.0, min_members=5)  # one region per cluster
    members = a["dictionary"].assign(acts)[0]
    assert set(members[:n].tolist()) == {a["top3"][0]}  # the refused cluster is the top region
    assert a["cosines"]["top-1 mean"] > 0.9 and I.cosine(a["dim"], axis) > 0.9
    assert len(set(a["nulls"])) == 3 and not set(a["nulls"]) & set(a["top3"])
    anti = members[n].item()  # never refused, so the first null candidate without the axis rule
    assert anti not in a["top3"] and set(members[n:2 * n].tolist()) == {anti}
    assert anti not in a["nulls"]  # the far side of the refusal axis is no null
    assert anti in B.layer_regions(build, harmful, 3, 14.0, min_members=5, null_max_cosine=1.0)["nulls"]
    with pytest.raises(ValueError, match="null_kind"):
        B.layer_regions(build, harmful, 3, 14.0, null_kind="median")
