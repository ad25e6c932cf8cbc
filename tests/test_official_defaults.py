"""Every ``paper:`` value in a notebook's parameter cell is a line of the official code, and says which.

Convention (``ep.show.paper_table``): ``name = small_default  # paper: VALUE (official_file.py function-or-flag)``
marks a value the official code uses; ``paper scale: VALUE`` marks this repo's size for a GPU run and claims
nothing. OFFICIAL below holds each official value with the file and the function (or CLI flag of ``main``) it comes
from, read in jessicarumbelow/exemplar-partitioning; ``make paper`` runs the notebooks with these values.
"""

from pathlib import Path

import pytest

from ep.show.paper_table import literal_prefix, paper_comments, paper_parameters, parameter_source

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "notebooks").glob("[0-9][0-9]_*.ipynb"))

BUILD = "scripts/build_partitions.py"
OFFICIAL = {  # parameter name -> (value, official file, function or main's CLI flag); per notebook where it differs
    "model_name": ("google/gemma-2-2b", BUILD, "DEFAULT_MODEL"),
    "context_length": (128, BUILD, "main --context-length"),
    "percentile": (10, BUILD, "main --percentile"),
    "docs_per_batch": (128, BUILD, "main --model-batch-size"),
    "batch_size": (128, BUILD, "main --model-batch-size"),
    "max_tokens": (1_000_000, BUILD, "main --max-tokens"),
    "calib_tokens": (200_000, BUILD, "main --calibration-tokens"),
    "saturation_window": (1, BUILD, "build_dictionary(saturation_window=1)"),
    "exact_context": (True, "ep/discovery/extraction.py", "extract_per_position (positions 1..L-1, BOS skipped)"),
    "cutoff": (0.7, "scripts/match_dictionaries.py", "main --cutoff"),
    ("06_sae", "percentile"): (10, "scripts/compare_sae.py", "main: --ep-percentile None -> 10"),
    ("09_stability", "layer"): (12, BUILD, "DEFAULT_LAYER"),
    # notebook 04: scripts/exp_behavioral.py main's CLI
    ("04_refusal", "model_name"): ("google/gemma-2-2b-it", "scripts/exp_behavioral.py", "main --model"),
    ("04_refusal", "layer"): (20, "scripts/exp_behavioral.py", "main --layer"),
    ("04_refusal", "percentiles"): ([5, 6, 8, 10, 12, 15, 20], "scripts/make_fig_refusal.py", "SOURCES"),
    ("04_refusal", "seeds"): ([0, 1, 2, 3], "scripts/aggregate_reanchor.py", "SEEDS"),
    ("04_refusal", "min_heldout_harmful"): (50, "scripts/exp_behavioral.py", "main --n-held-out-harmful"),
    ("04_refusal", "seed"): (0, "scripts/exp_behavioral.py", "main: PROMPT_SEED = 0"),
    ("04_refusal", "percentile"): (8, "scripts/exp_behavioral.py", "main --percentile"),
    ("04_refusal", "n_build"): (300, "scripts/exp_behavioral.py", "main --n-prompts-per-side"),
    ("04_refusal", "top_k"): (5, "scripts/exp_behavioral.py", "main --top-k-refusal-partitions"),
    ("04_refusal", "min_members"): (5, "scripts/exp_behavioral.py", "main: n_members >= 5"),
    ("04_refusal", "min_rate"): (0.3, "scripts/exp_behavioral.py", "main --min-refusal-rate"),
    ("04_refusal", "null_max_rate"): (0.05, "scripts/exp_behavioral.py", "main: refusal_rate <= 0.05"),
    ("04_refusal", "label_tokens"): (60, "scripts/exp_behavioral.py", "main --max-new-tokens"),
    ("04_refusal", "max_new_tokens"): (60, "scripts/exp_behavioral.py", "main --max-new-tokens"),
}
# Notebooks whose paper: comments give the value but do not yet name the official file (their values are checked,
# their citations not): remove a notebook from here once its parameter cell cites its sources.
CITATIONS_PENDING = {"00_start_here", "04_refusal"}


def official(notebook: str, name: str):
    return OFFICIAL.get((notebook, name)) or OFFICIAL.get(name)


def test_literal_prefix_reads_the_value_before_its_note():
    assert literal_prefix('"google/gemma-2-2b" (build_partitions.py DEFAULT_MODEL)') == "google/gemma-2-2b"
    assert literal_prefix("1_000_000 (build_partitions.py main --max-tokens)") == 1_000_000
    assert literal_prefix("[4, 8, 12] (three layers)") == [4, 8, 12]
    assert literal_prefix("None") is None
    with pytest.raises(ValueError):
        literal_prefix("~200k tokens")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_paper_value_is_the_official_one_and_cites_it(path):
    for comment in (c for c in paper_comments(path) if c["kind"] == "paper"):
        name = comment["name"]
        source = official(path.stem, name)
        assert source is not None, f"{name}: 'paper:' claims an official value; add it (and its source) to OFFICIAL"
        value, file, where = source
        assert comment["parsed"] and comment["value"] == value, \
            f"{name}: the comment says paper: {comment['note']!r}; the official {file} ({where}) says {value!r}"
        if path.stem not in CITATIONS_PENDING:
            assert Path(file).name in comment["note"], f"{name}: cite {Path(file).name} ({where}) after the value"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_paper_scale_values_are_parameters_of_the_notebook(path):
    """make paper passes these to papermill: each must name a parameter the cell defines."""
    source = "".join(line.split("#")[0] for line in parameter_source(path).splitlines(keepends=True))
    for name in paper_parameters(path):
        assert f"{name} =" in source or f"{name}," in source


def test_the_builds_at_p10_where_the_official_builds_at_p10():
    """The official CLI builds at p10 (build_partitions.py, compare_sae.py): p1 is only AxBench's headline."""
    for stem in ("02_dictionary", "05_matching", "06_sae"):
        path = REPO / "notebooks" / f"{stem}.ipynb"
        assert paper_parameters(path).get("percentile") == 10, stem
