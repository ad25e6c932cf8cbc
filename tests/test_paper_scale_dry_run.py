"""The paper-scale switch, dry-run: notebooks execute with the paper's *structure* on a tiny random model.

A Gemma-2-shaped checkpoint (26 layers like Gemma-2-2B, width 64, the Gemma tokenizer) is written into a local
Hugging Face cache in the hub's own layout (``models--ep-dry-run--tiny-gemma-2/snapshots/<rev>``) and the notebooks
load it by the hub id ``ep-dry-run/tiny-gemma-2`` with ``HF_HUB_OFFLINE=1``: the exact code path of
``google/gemma-2-2b`` (the hub client resolves the id; no download). Each notebook runs with that id, the paper's
layer (20) and ``check_claims=False``: random weights cannot meet the science asserts, but every shape and invariant
assert still runs. Notebooks not listed here cannot run this way (each says why in its parameter cell): 00 (its
dictionaries are the published stand-ins of a real model), 04 (a random model never refuses, so no region passes
the candidate rule), 05 (its LoRA sibling needs a base model that answers few-shot prompts). 08's dry run
(max_tokens 6000, 2 prompts) had not finished after ~13 min on the shared 2-core machine: too slow for CI as is.
The last test assembles ``make paper``'s table (``ep.show.paper_table``) from these runs' results: it says "dry run".
"""

from pathlib import Path

import papermill
import pytest
from conftest import run_dir

from ep.method.files import one_maker

REPO = Path(__file__).resolve().parents[1]
DRY_RUNS = {  # notebook -> parameters beyond the model, the layer and check_claims (smoke sizes keep CI short)
    "01_activations": {"max_tokens": 6000},
    "02_dictionary": {},
    "03_ood": {},
    "06_sae": {"layer": 12, "max_tokens": 2000, "calib_docs": 20, "sae_steps": 20, "sae_batch_size": 256,  # paper: L12
               "match_tokens": 2000, "min_active": 5, "n_per_language": 8, "n_harmful": 16, "n_code": 8,
               "n_axbench": 4, "coverage_tokens": [1000]},
    "07_axbench": {"sweep_layers": [20], "n_train_pos": 8, "n_train_neg": 8, "n_eval": 4, "build_tokens": 2000,
                   "calibration_docs": 20, "n_boot": 2, "sae_width": 64, "sae_steps": 5},
    "09_stability": {},
}
HUB_ID = "ep-dry-run/tiny-gemma-2"


@pytest.fixture(scope="module")
def tiny_gemma2(tmp_path_factory):
    """The tiny checkpoint saved as a folder."""
    import torch
    from transformers import AutoTokenizer, Gemma2Config, Gemma2ForCausalLM

    from ep.model.loading import _float_checkpoint

    tokenizer = AutoTokenizer.from_pretrained(_float_checkpoint("gemma-3-270m"))
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=26,
                          num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=1024,
                          pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                          eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hub") / "tiny-gemma-2-shaped"
    Gemma2ForCausalLM(config).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def hub_cache(tiny_gemma2, tmp_path_factory):
    """A Hugging Face cache holding the tiny checkpoint under HUB_ID, as a download would leave it; env for it."""
    import shutil

    cache = tmp_path_factory.mktemp("hf-cache")
    repo = cache / ("models--" + HUB_ID.replace("/", "--"))
    revision = "0" * 40
    shutil.copytree(tiny_gemma2, repo / "snapshots" / revision)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return {"HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}


@pytest.mark.model
def test_the_tiny_checkpoint_loads_like_a_hub_id(tiny_gemma2):
    import ep

    model, info = ep.load_model(str(tiny_gemma2))
    assert info.n_layers == 26 and info.d_model == 64
    acts = ep.token_activations(model, ["A short test sentence."], 20, progress=False).acts
    assert acts.shape[1] == 64


@pytest.fixture(scope="module")
def dry_run_dir(tmp_path_factory):
    """One folder for every dry run of this test run: the executed notebooks and results/ (the table reads it), shared
    by pytest-xdist's workers, so the table finds every worker's runs."""
    return run_dir(tmp_path_factory, "dry-run")


def _dry_run(name, hub_cache, out, monkeypatch):
    """Run ``name`` at paper structure into ``out``, unless this session has run it already (one process at a time:
    a second asking for the same run waits for the first's result)."""
    result = out / "results" / f"{name}.json"
    with one_maker(result):
        if result.exists():
            return
        for key, value in hub_cache.items():  # the kernel inherits them
            monkeypatch.setenv(key, value)
        path = REPO / "notebooks" / f"{name}.ipynb"
        parameters = {"model_name": HUB_ID, "layer": 20, "check_claims": False,
                      "results_dir": str(out / "results"), **DRY_RUNS[name]}
        papermill.execute_notebook(str(path), str(out / path.name), cwd=str(path.parent), parameters=parameters,
                                   progress_bar=False)
    assert result.exists()


@pytest.mark.notebook
@pytest.mark.parametrize("name", sorted(DRY_RUNS))
def test_notebook_runs_with_paper_structure(hub_cache, name, dry_run_dir, monkeypatch):
    _dry_run(name, hub_cache, dry_run_dir, monkeypatch)


@pytest.mark.notebook
def test_make_paper_table_from_the_dry_run(hub_cache, dry_run_dir, monkeypatch):
    """The table make paper writes, from the dry runs above (run here only those not run yet): it says dry run."""
    import json

    from ep.show import paper_table

    for name in sorted(DRY_RUNS):
        _dry_run(name, hub_cache, dry_run_dir, monkeypatch)
    md = paper_table.table(dry_run_dir / "results")
    assert "**Dry run**" in md
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| claim")]
    assert len(rows) == len(paper_table.HEADLINES)
    records = [c for name in DRY_RUNS for c in json.loads((dry_run_dir / "results" / f"{name}.json").read_text())
               .get("claims", [])]
    assert records and all(c["verdict"] == "dry run" for c in records), "check_claims=False: every verdict a dry run"
