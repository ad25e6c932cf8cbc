"""The notebooks' closing summaries (``ep.show.summary``), each built from a small results dict: no model, no run."""

import json

import pytest

from ep.show import summary


def _same_from_file(builder, results, tmp_path, *args, **kwargs):
    """A builder gives the same text from the dict and from the JSON ``save_results`` wrote (string keys)."""
    path = tmp_path / "results.json"
    path.write_text(json.dumps(results, default=float))
    text = builder(results, *args, **kwargs)
    assert builder(path, *args, **kwargs) == builder(str(path), *args, **kwargs) == text
    return text


def test_activations(tmp_path):
    results = {"model": "m", "layer": 9, "n_tokens": 3000, "bos_norm_ratio": 13.6, "mean_cosine_distance_raw": 0.033,
               "mean_cosine_distance_centred": 0.998, "theta": {"p1": 0.2469, "p10": 0.5063},
               "fraction_pairs_within_theta": 0.0096}
    text = _same_from_file(summary.activations, results, tmp_path, percentile=1.0)
    for shown in ("layer 9 of `m`", "14× the median norm", "other 3,000 tokens", "distance 0.033", "(0.998)",
                  "θ(p1) = 0.247 and θ(p10) = 0.506: 0.96%", "(about 1%)"):
        assert shown in text, shown


def test_dictionary_with_and_without_a_stop_and_rebuilds(tmp_path):
    results = {"percentile": 10, "threshold": 0.51234, "threshold_rows_protocol": 0.49876, "tokens": 12000,
               "regions": 700, "build_seconds": 3.4, "protocol": {"docs_per_batch": 128},
               "from_scratch": {"tokens": 2000, "exemplars": 300, "fast_seconds": 0.0123, "loop_seconds": 1.26},
               "new_regions_per_1k": {"start": 180.2, "end": 40.4},
               "stop_rule": {"window": 1, "stopped_after_tokens": None},
               "regions_by_percentile": {1: {"documents": {"regions": 3000}}, 10: {"documents": {"regions": 400}}},
               "published_rebuild": {}, "singleton_fraction": 0.61}
    text = _same_from_file(summary.dictionary, results, tmp_path, sweep_tokens=6000)
    assert "chose 300 exemplars" in text and "0.012 s against the loop's 1.3 s" in text
    assert "θ(p10) = 0.5123 with batches of 128" in text and "0.4988 with shuffled rows" in text
    assert "never fires at this budget" in text and "p1 gives 3,000 regions and p10 400" in text
    assert "Published" not in text and "61% singletons" in text
    results["stop_rule"]["stopped_after_tokens"] = 9000
    results["published_rebuild"] = {10: {"published_theta": 0.5, "ours_theta": 0.5 + 2e-7, "same_exemplars": False}}
    text = summary.dictionary(results, sweep_tokens=6000)
    assert "stops after 9,000 tokens." in text and "the 1 official stand-ins (p10)" in text
    assert "within 2e-07 and DIFFERENT exemplars" in text


def test_ood_reads_the_winners_and_the_coverage(tmp_path):
    methods = {"ep": {"code": 0.9, "lang": 0.7}, "mahalanobis": {"code": 0.6, "lang": 0.8}}
    rows = [{"p": p, "set": s, "within_threshold_rate": rate} for p, rates in ((1.0, (0.1, 0.05, 0.0)),
                                                                                  (10.0, (0.9, 0.6, 0.3)))
            for s, rate in zip(("held-out wikipedia", "russian lines", "random token ids"), rates)]
    results = {"mean_token_auroc": {"ep": 0.8, "mahalanobis": 0.7}, "token_auroc": methods,
               "document_auroc": {"ep": {"code": 0.5, "lang": 0.6}, "mahalanobis": {"code": 0.9, "lang": 0.9}},
               "coverage": {"sets": ["held-out wikipedia", "russian lines", "random token ids"], "by_p": rows},
               "dictionary_tokens": 12000}
    text = _same_from_file(summary.ood, results, tmp_path)
    assert "over 2 OOD sets: EP 0.80, Mahalanobis 0.70\n  (EP ahead)" in text
    assert "EP 0.55, Mahalanobis 0.90 (Mahalanobis ahead)" in text
    assert "from p10 to p1: held-out Wikipedia 0.90 →\n  0.10, russian lines 0.60 → 0.05" in text
    assert "random token ids 0.30 → 0.00" in text and "holds 12,000 tokens" in text


def _rates(rate, effect, delta=-0.1, degenerate=0.0):
    return {"harmful_refusal": rate, "degenerate": degenerate, "effect": effect, "delta": delta}


def _refusal_results(collapsed: bool, headline: bool = True):
    exemplar = _rates(0.1, "collapsed", -0.5) if collapsed else _rates(0.4, "lowered", -0.2)
    sweep = [{"percentile": 5, "n_regions": 1184, "n_candidates": 0},
             {"percentile": 8, "n_regions": 156, "n_candidates": 2, "exemplar": exemplar,
              "mean": _rates(0.0, "broken", -0.6, 0.7), "null": _rates(0.55, "lowered", -0.05)}]
    return {"model": "qwen", "layer": 20, "protocol": {"label_tokens": 8}, "heldout_harmful": 50,
            "build_refusal": {"harmful": 0.625, "harmless": 0.025},
            "baseline": {"harmful_refusal": 0.6, "degenerate": 0.0}, "p_sweep": sweep, "chosen_percentile": 8,
            "on_build": {8: {"harmful_refusal": 0.41, "degenerate": 0.0}},
            "headline": {**exemplar, "basis": "exemplar"} if headline else None,
            "k_sweep": [{"k": 1, **exemplar}, {"k": 2, **_rates(0.3, "lowered")}],
            "geometry": {"fraction": {"all-token centre": 0.088, "final-position centre": 0.49}},
            "diff_in_means": _rates(0.04, "collapsed", -0.56)}


def test_refusal_names_collapse_only_when_the_exemplar_collapsed(tmp_path):
    text = _same_from_file(summary.refusal, _refusal_results(collapsed=False), tmp_path, collapse=0.5,
                           broken_margin=0.1)
    assert "refused 62% of the build harmful prompts and 2% of the harmless ones (8 new tokens)" in text
    assert "p = 5: 1,184 regions, no candidate region; p = 8: 156 regions, exemplar 0.40 (0% degenerate, " \
           "lowered), mean 0.00 (70% degenerate, broken), null 0.55" in text
    assert "did best at p = 8 (0.41 against 0.62)" in text and "K = 1..2: 0.40, 0.30." in text
    assert "No percentile shows a clean collapse" in text and "other bases: none." in text
    assert "**DiffMean** (plain removal at layer 20" in text and "diff-in-means" not in text.lower()
    text = summary.refusal(_refusal_results(collapsed=True), collapse=0.5, broken_margin=0.1)
    assert "collapsed held-out refusal cleanly (at most 50% of the baseline's rate, degenerate share within 0.1 " \
           "of the baseline's) at p = [8]" in text
    text = summary.refusal(_refusal_results(collapsed=False, headline=False), collapse=0.5, broken_margin=0.1)
    assert "there is no headline condition" in text


def _matching_results(sibling=True):
    return {
        "model": "base", "instruct_model": "tuned", "tokens": 5000, "cutoff": 0.7,
        "fractions": {"persisted": 0.64, "dropped": 0.36, "introduced": 0.35}, "counts": {"introduced": 200},
        "same_stream_token_fraction": 0.95,
        "exemplar_in_chat_text": {"persisted (base side)": 0.24, "dropped": 0.33, "introduced": 0.28},
        "persisted_fraction_by_region_size": {"regions with ≥ 5 members": 0.44},
        "membership": {"mean_f1": 0.59, "pairs_scored": 1790, "mean_f1_chance": 0.0003, "mean_f1_below_cutoff": None,
                       "token_agreement": 0.27, "median_nearest_gap_theta": 0.11,
                       "same_region_tokens_moved_only": 0.67},
        "direction_shift": {"Wikipedia": {"median_shift_theta": 0.06, "median_relative_change": 0.06},
                            "chat: template": {"median_shift_theta": 0.75, "median_relative_change": 0.18}},
        "ladder": {"layers": [3, 6, 9], "by_steps_apart": {1: 0.3, 2: 0.1},
                   "tokens_aligned": [[1, 0.2, 0.5], [0.2, 1, 0.2], [0.5, 0.2, 1]]},
        "finetune": {"steps": 20, "pairs": 27, "loss_first": 3.76, "loss_last": 0.06} if sibling else None,
        "replies_ending_turn": {"base": 0, "instruct": 5}, "n_demo": 6}


def test_matching(tmp_path):
    args = dict(singleton_fraction=0.5, chat_exemplar_fraction=0.2, introduced_tokens=[("<end>", 3)],
                largest_introduced=[(" the", 9)], refounded=4)
    text = _same_from_file(summary.matching, _matching_results(), tmp_path, **args)
    assert "20 LoRA steps on 27" in text and "from 3.76 to 0.06" in text and "5 of 6 held-out" in text
    assert "moved most: chat: template." in text and "64% of the base regions persisted (exemplar cosine ≥ 0.7)" in text
    assert "(all base exemplars: 20%)" in text and "`'<end>'` (3)" in text
    assert "`' the'` (9); 4 of the 200 introduced" in text
    assert "over 1,790 scored pairs (chance 0.00)" in text and "below the cutoff" not in text
    assert "fixed 33% of tokens change region" in text
    # one step apart: regions 30%, tokens 20%; two apart: regions 10%, tokens 50%: opposite orderings
    assert "share 30% of their regions, the farthest pair 10%" in text and "20% and 50% (a different ordering" in text
    assert "5,000 tokens and 50% of the base regions are singletons, and the finetune" in text
    text = summary.matching(_matching_results(sibling=False), **args)
    assert "**The pair.** `base` and `tuned`" in text and "LoRA" not in text


def test_sae(tmp_path):
    match = {"matched_fraction": 0.3, "regions_with_overlap": 40,
             "sae_to_ep": {"matched_fraction": 0.25, "features_with_overlap": 50},
             "top1_coherence": {"frac_all_same": 0.4, "n_evaluated": 30, "mean_distinct": 2.26}}
    fields = {"llm_test_accuracy": 1.0, "sae_test_accuracy": 0.91, "sae_top_1_test_accuracy": 0.62}
    results = {"model": "m", "layer": 9, "ep": {"regions": 600}, "sae": {"width": 512},
               "token_ratio_sae_over_ep": 6.4, "flops_ratio_sae_over_ep": 90.2, "seconds_ratio_sae_over_ep": None,
               "matching": {"paper": match, "direction only": {"matched_fraction": 0.2},
                            "looser_reading": {"matched_fraction": 0.1},
                            "paper, exemplar basis": {"matched_fraction": 0.15,
                                                      "sae_to_ep": {"matched_fraction": 0.05}}},
               "probe_retention": {"language": 0.9, "code": 0.8}, "mean_probe_retention": 0.85,
               "probes": {"by_task": {"a": {}, "b": {}, "c": {}}, "sae_mean_retention": 0.7,
                          "pooled_one_hot_control_retention": 0.55,
                          "coverage": {"2k tokens": {"retention": 0.71}, "+ task texts": {"retention": 0.88}}},
               "saebench_fields": {"binary (one-hot, l0 = 1): retention": fields,
                                   "signed (dense, the official default): retention": {"sae_test_accuracy": 0.95}}}
    text = _same_from_file(summary.sae, results, tmp_path, match_threshold=0.5, match_pool="build",
                           match_basis="mean", other_basis="exemplar", pool_tokens=5000, gemma_scope_tokens=4 * 10**9)
    assert text.startswith("Measured here (m, layer 9, 600 EP regions vs a 512-wide SAE)")
    assert "6.4x EP's tokens and ~90x its FLOPs (paper" in text and "= 400x tokens" in text
    assert "(5,000 build pool tokens" in text and "30% of the 40 regions" in text and "F1 > 0.5" in text
    assert "the exemplar basis: EP→SAE 15%, SAE→EP 5%" in text and "(mean 2.3 distinct" in text
    assert "(3 binary tasks)" in text and "(language 90%, code 80%;" in text and "control 55%" in text
    assert "binary readout all 91%, top-1 62%; signed readout all 95%" in text
    assert "retention 0.71 → 0.88 over 2k tokens, + task texts" in text


def _axbench_results(n_boot=20):
    means = {"diffmean": 0.94, "ep_p1_exemplar": 0.81, "ep_p1_mean": 0.83, "length": 0.64, "random": 0.53}
    return {"model": "m", "layer": 12, "n_concepts": 10, "n_train_rows": 936, "n_eval_rows": 480, "regions": 1909,
            "build_tokens": 20000, "protocol": {"bases": ["exemplar", "mean"]}, "mean_auroc": means,
            "seed_spread": {"n_boot": n_boot, **({"std_eval_rows_redrawn": {"ep_p1_exemplar": 0.021},
                                                  "std_both_rows_redrawn": {"ep_p1_exemplar": 0.03,
                                                                            "ep_p1_mean": 0.028}} if n_boot else {})},
            "controls": {"paper protocol": means, "output tokens only": {"ep_p1_exemplar": 0.84, "ep_p1_mean": 0.85},
                         "all four together": {"ep_p1_exemplar": 0.96, "ep_p1_mean": 0.95}},
            "mean_auroc_by_layer": {6: {"ep_p1_exemplar": 0.6}, 12: {"ep_p1_exemplar": 0.81}},
            "mean_auroc_by_build_tokens": {2500: {"exemplar": 0.78, "mean": 0.76}, 20000: {"exemplar": 0.81,
                                                                                             "mean": 0.83}},
            "slope_per_tenfold_build_tokens": {"exemplar": 0.025, "mean": 0.077}, "paper": {"EP p1 (paper)": 0.881}}


def test_axbench(tmp_path):
    text = _same_from_file(summary.axbench, _axbench_results(), tmp_path, percentile=1.0)
    assert "EP exemplar basis **0.810 ± 0.021**, mean-member basis **0.830**" in text
    assert "± 0.030 and\n  ± 0.028); diffmean 0.940;" in text and "floors: length 0.640, random 0.530" in text
    assert "output tokens only +0.030; all four together +0.150" in text and "gave EP 0.960 / 0.950" in text
    assert "(2,500, 20,000)" in text and "0.780 → 0.810" in text and "moves EP toward the paper's 0.881" in text
    assert "at 0.877 at 10M" in text  # 0.81 + 0.025 * log10(10M / 20k) = 0.81 + 0.025 * 2.699
    assert "best at layer 12 of [6, 12]\n  (L6 0.600, L12 0.810)" in text
    assert "± nan and" in summary.axbench(_axbench_results(n_boot=0), percentile=1.0)


def test_steering(tmp_path):
    gains = {"French": {"EP exemplar": 0.3, "EP mean-member": 0.1, "DiffMean": 0.2, "random": 0.0},
             "code": {"EP exemplar": -0.1, "EP mean-member": 0.0, "DiffMean": 0.5, "random": 0.1}}
    results = {"probe_gain_while_fluent": gains, "fluency_budget": 1.5, "partition_kl": {0.5: 0.12, 1.0: 0.9},
               "concept_regions": {"French": {"region": 7, "members": 12}, "code": {"region": 3, "members": 5}}}
    text = _same_from_file(summary.steering, results, tmp_path)
    assert "- **French** (region 7, 12 members)" in text and "(perplexity ≤ 1.5× unsteered)" in text
    assert "EP exemplar +0.30, DiffMean +0.20, EP mean-member +0.10, random +0.00." in text
    assert "beat DiffMean on 1 of 2 concepts (French)." in text and "onto region 7's exemplar" in text
    assert "KL 0.90 (λ = 0.5: 0.12)" in text


def test_stability(tmp_path):
    results = {"regions_per_seed": [300, 320, 310], "percentile": 10.0, "documents_shared_by_seeds_0_1": 4,
               "cutoff": 0.7, "mean_matched_cosine": {"mean": 0.81, "exemplar": 0.64},
               "persisted_fraction": {"mean": 0.55, "exemplar": 0.3},
               "persisted_fraction_orders": {"mean": 0.7, "exemplar": 0.4},
               "stability_vs_size_spearman": {"mean": 0.2, "exemplar": -0.3}, "persisted_disjoint_halves": 0.25,
               "persisted_same_half_two_orders": 0.5, "persisted_disjoint_by_size": {"1": 0.1, "2-4": 0.3, "5+": 0.6},
               "regions_by_percentile": {"p10": 300, "p1": 2500}, "split_fraction": {"p10->p1": 0.8},
               "median_nesting_share": {"p10->p1": 0.75}, "saturation_stop_tokens": {"p10": None, "p1": None},
               "stream_tokens": 10240}
    text = _same_from_file(summary.stability, results, tmp_path, n_docs=160)
    assert "3 seeds, each 160 documents" in text and "share\n  4), gave 300–320 regions at p10." in text
    assert "agree (mean cosine 0.81, 55% persist at cosine ≥ 0.7)\n  more than exemplars\n  (0.64, 30%)" in text
    assert "in 3 orders\n  only: 70% and 40%" in text and "from 10% of singletons to 60%\n  of regions with 5+" in text
    assert "Regions by p: p10 300, p1 2,500." in text and "never fired" in text and "with 10,240 tokens" in text
    results["saturation_stop_tokens"]["p10"] = 8192
    assert "The stop rule fired: p10 after 8,192 tokens" in summary.stability(results, n_docs=160)


def _labels_results(shuffled=(0.1, 0.02, 0.2)):
    return {"protocol": {"labeller": "qwen", "contexts": {"members": 4, "near": 2, "random": 2}}, "regions": 2130,
            "regions_scored": 10, "judged_contexts": 80, "judge_auroc_obvious": 0.95,
            "auroc": {"label": 0.62, "shuffled": 0.52, "logit lens": 0.55},
            "balanced_accuracy": {"label": 0.6, "shuffled": 0.5, "logit lens": 0.55},
            "auroc_label_minus_shuffled": list(shuffled), "auroc_label_minus_lens": [-0.2, -0.3, -0.1],
            "margin_above_zero": 0.9, "spearman_with_size": 0.48, "spearman_with_coherence": -0.27}


@pytest.mark.parametrize("above, says", [((0.12, 0.05, 0.2), "better than chance (mean AUROC 0.62, interval above"),
                                         ((-0.1, -0.2, -0.05), "ranked non-members above members"),
                                         ((0.0, -0.1, 0.1), "the interval holds 0.5")])
def test_labels_says_what_the_interval_shows(above, says, tmp_path):
    text = _same_from_file(summary.labels, _labels_results(), tmp_path, above_chance=above, n_obvious=12)
    assert says in text
    assert "10 regions of a 2130-region dictionary were labelled by `qwen`" in text and "80 held-out" in text
    assert "AUROC\n  0.95 on 12 obvious cases" in text and "labels 0.62, shuffled labels 0.52, logit-lens" in text
    assert "were above another\n  region's label (AUROC difference +0.10, 95% CI +0.02 to\n  +0.20)" in text
    assert "and below the logit-lens tokens" in text and "90% of its margins" in text
    assert "With 8 contexts per region" in text and "steps of\n  1/16 (AUROC) or 1/8" in text
    text = summary.labels(_labels_results(shuffled=(0.0, -0.1, 0.1)), above_chance=above, n_obvious=12)
    assert "not distinguishable from another" in text


def test_every_notebook_summary_is_one_call():
    """Each builder is used by its notebook's summary cell, and no notebook builds a summary in a long f-string."""
    from pathlib import Path

    notebooks = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    code = {p.name: ["".join(c["source"]) for c in json.loads(p.read_text())["cells"] if c["cell_type"] == "code"]
            for p in notebooks}
    used = {name for cells in code.values() for cell in cells for name in summary.__all__
            if f"ep.show.summary.{name}(" in cell}
    assert used == set(summary.__all__), set(summary.__all__) - used
    for name, cells in code.items():
        long_fstrings = [c[:60] for c in cells if c.count('f"') + c.count("f'") > 12 and "Markdown(" in c]
        assert not long_fstrings, f"{name} builds Markdown in a long f-string cell: {long_fstrings}"


def _start_here_results(model=True):
    return {"model_short": "gemma-3-270m", "layer": 9, "percentile": 10, "regions": 1200, "tokens": 51200,
            "threshold": 0.5123, "biggest_region": {"members": 340}, "median_coherence_5plus": 0.612,
            "compared": {"p2": {"threshold": 0.28, "regions": 5000, "regions_per_token": 0.41},
                         "p10": {"threshold": 0.51, "regions": 1200, "regions_per_token": 0.12}},
            "compared_across": "p", "protocol": {"model": "gemma-3-270m" if model else None},
            "exemplar_self_check": {"exemplars_checked": 1200, "max_distance": 3e-6} if model else None,
            "median_new_text_distance": {"prose": 0.41, "code": 0.62} if model else {}}


def test_start_here(tmp_path):
    text = _same_from_file(summary.start_here, _start_here_results(), tmp_path, model_name="gemma-3-270m")
    assert "opened `gemma-3-270m` layer 9 p10 with no code from the file run: 1,200 regions over 51,200 tokens, " \
           "θ = 0.512; the biggest region holds 340 tokens" in text and "median coherence 0.61." in text
    assert "Across p: p2 θ 0.280, 5,000 regions (0.41 per token), p10 θ 0.510" in text and "more regions per" in text
    assert "all 1,200 exemplar tokens" in text and "(largest distance 3.0e-06)" in text
    assert "prose 0.410, code 0.620 (θ 0.512)" in text and "skipped" not in text
    text = summary.start_here(_start_here_results(model=False), model_name="google/gemma-2-2b")
    assert "skipped: they need google/gemma-2-2b." in text and "matches the file" not in text
    assert "New text" not in text
