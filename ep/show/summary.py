"""Each notebook's closing summary, written from its results: one function per notebook, returning Markdown.

A summary must never hold a typed number, so each is built from the results a notebook saves: the dict given to
``ep.save_results`` or the path it returned (both give the same text). The few values a notebook does not save (a
parameter, a token decoded by the model's tokenizer) are arguments. The notebook's cell is one call:
``ep.show.markdown(ep.show.summary.refusal(path, ...))``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np


def _plain(results: dict | str | Path) -> dict:
    """The results as their JSON holds them (string keys, plain floats), from the dict or the file it was saved to."""
    if isinstance(results, (str, Path)):
        return json.loads(Path(results).read_text())
    return json.loads(json.dumps(results, default=float))


def start_here(results: dict | str | Path, model_name: str | None) -> str:
    """Notebook 00: the published dictionary opened safely, compared across p (or models), checked, used on new text.

    ``model_name``: the model the sections that put text on the dictionary need (named when they were skipped)."""
    r = _plain(results)
    lines = [f"- We opened `{r['model_short']}` layer {r['layer']} p{r['percentile']} with no code from the file run: "
             f"{r['regions']:,} regions over {r['tokens']:,} tokens, θ = {r['threshold']:.3f}; the biggest region "
             f"holds {r['biggest_region']['members']:,} tokens, and regions of 5+ members have median coherence "
             f"{r['median_coherence_5plus']:.2f}.",
             f"- Across {r['compared_across']}: " + ", ".join(
                 f"{k} θ {s['threshold']:.3f}, {s['regions']:,} regions ({s['regions_per_token']:.2f} per token)"
                 for k, s in r["compared"].items())
             + (". A smaller p gives a tighter θ and more regions per token." if r["compared_across"] == "p" else ".")]
    if r["protocol"]["model"] is None:
        lines.append("- The sections that put text on the dictionary were skipped: they need "
                     f"{model_name or 'a model'}.")
    matched = r["exemplar_self_check"]
    if matched:
        lines.append(f"- The model matches the file: all {matched['exemplars_checked']:,} exemplar tokens, "
                     f"re-extracted, land in their own region (largest distance {matched['max_distance']:.1e}).")
    if r["median_new_text_distance"]:
        lines.append("- New text, median nearest-exemplar distance: " + ", ".join(
            f"{k} {v:.3f}" for k, v in r["median_new_text_distance"].items()) + f" (θ {r['threshold']:.3f}).")
    lines.append("- **Next**: notebook 01 traces the activations themselves; notebook 02 builds a dictionary from "
                 "scratch.")
    return "\n".join(lines)


def activations(results: dict | str | Path, percentile: float) -> str:
    """Notebook 01: the attention sink, what centring does, and θ against its definition."""
    r = _plain(results)
    theta, theta10 = r["theta"][f"p{percentile:g}"], r["theta"]["p10"]
    return f"""
- At layer {r['layer']} of `{r['model']}` the first token (BOS) has {r['bos_norm_ratio']:.0f}× the median norm of the \
others: an
  attention sink, which EP drops. The other {r['n_tokens']:,} tokens share a large common component.
- Raw activations look alike (mean pairwise cosine distance {r['mean_cosine_distance_raw']:.3f}); centred on the \
spherical centre they
  spread out ({r['mean_cosine_distance_centred']:.3f}), so a percentile of their distances means something.
- θ(p{percentile:g}) = {theta:.3f} and θ(p10) = {theta10:.3f}: {r['fraction_pairs_within_theta']:.2%} of this \
sample's token pairs
  fall within θ(p{percentile:g}), as the definition says they should (about {percentile:g}%).
- **Next**: notebook 02 freezes the centre and θ on a calibration sample and streams tokens through leader
  clustering. Try `layer = 3` or `15`: how do the BOS ratio and the distance distribution change?
"""


def dictionary(results: dict | str | Path, sweep_tokens: int) -> str:
    """Notebook 02: from scratch vs the fast builder, calibration, the build, p, the published rebuilds."""
    r = _plain(results)
    scratch, sweep, rebuilt = r["from_scratch"], r["regions_by_percentile"], r["published_rebuild"]
    p_lo, p_hi = list(sweep)[0], list(sweep)[-1]
    stop_at, window = r["stop_rule"]["stopped_after_tokens"], r["stop_rule"]["window"]
    lines = [
        f"- **From scratch.** The ten-line leader loop on {scratch['tokens']:,} real tokens chose "
        f"{scratch['exemplars']:,} exemplars, exactly those of the fast builder, which took "
        f"{scratch['fast_seconds']:.3f} s against the loop's {scratch['loop_seconds']:.1f} s.",
        f"- **Calibration.** θ(p{r['percentile']:g}) = {r['threshold']:.4f} with batches of "
        f"{r['protocol']['docs_per_batch']} whole documents (the paper's protocol) and "
        f"{r['threshold_rows_protocol']:.4f} with shuffled rows.",
        f"- **The build.** {r['tokens']:,} tokens became {r['regions']:,} regions in {r['build_seconds']:.0f} s; new "
        f"regions per 1k tokens fell from {r['new_regions_per_1k']['start']:.0f} to "
        f"{r['new_regions_per_1k']['end']:.0f}; the official stop rule "
        + (f"stops after {stop_at:,} tokens." if stop_at else
           f"(W = {window} batch of 128 documents) never fires at this budget: stream more."),
        f"- **Against p.** On {sweep_tokens:,} tokens, p{p_lo} gives {sweep[p_lo]['documents']['regions']:,} regions "
        f"and p{p_hi} {sweep[p_hi]['documents']['regions']:,} (θ by documents).",
    ]
    if rebuilt:
        lines.append(f"- **Published dictionaries.** Rebuilt from their recipe, the {len(rebuilt)} official stand-ins "
                     f"(p{', p'.join(map(str, rebuilt))}) come back with θ within "
                     f"{max(abs(x['published_theta'] - x['ours_theta']) for x in rebuilt.values()):.0e} and "
                     + ("identical exemplars" if all(x["same_exemplars"] for x in rebuilt.values()) else
                        "DIFFERENT exemplars") + "; member counts differ where the official counts by batch.")
    lines.append(f"- Regions are heavy-tailed ({r['singleton_fraction']:.0%} singletons at this budget; the paper "
                 "streams up to 1M tokens; its published p1 dictionaries 10M). **Next**: notebook 03 uses the distance "
                 "to the nearest exemplar as a free out-of-distribution signal.")
    return "\n".join(lines)


def ood(results: dict | str | Path) -> str:
    """Notebook 03: EP's nearest-exemplar distance against Mahalanobis, per token and per document; within θ."""
    r = _plain(results)
    ep_mean, mahalanobis_mean = r["mean_token_auroc"]["ep"], r["mean_token_auroc"]["mahalanobis"]
    n_ood = len(next(iter(r["token_auroc"].values())))
    doc_ep, doc_maha = (float(np.mean(list(v.values()))) for v in list(r["document_auroc"].values())[:2])
    token_winner = "EP" if ep_mean > mahalanobis_mean else "Mahalanobis"
    doc_winner = "EP" if doc_ep > doc_maha else "Mahalanobis"
    in_set, language_set, random_set = r["coverage"]["sets"]
    within = {(row["p"], row["set"]): row["within_threshold_rate"] for row in r["coverage"]["by_p"]}
    ps = [p for p, _ in within]
    finest, coarsest = float(min(ps)), float(max(ps))
    w = {name: {p: within[p, name] for p in (coarsest, finest)} for name in (in_set, language_set, random_set)}
    return f"""
- The nearest-exemplar distance is an OOD score that falls out of `assign` with no extra fitting.
- Token level, mean AUROC over {n_ood} OOD sets: EP {ep_mean:.2f}, Mahalanobis {mahalanobis_mean:.2f}
  ({token_winner} ahead). A single token of code can look like prose; the fitted Gaussian also sees the huge
  outlier dimensions that centring and normalising discard.
- Document level (mean over a text's tokens): EP {doc_ep:.2f}, Mahalanobis {doc_maha:.2f} ({doc_winner} ahead).
- Within θ (the paper's reading), from p{coarsest:g} to p{finest:g}: held-out Wikipedia {w[in_set][coarsest]:.2f} →
  {w[in_set][finest]:.2f}, {language_set} {w[language_set][coarsest]:.2f} → {w[language_set][finest]:.2f},
  random token ids {w[random_set][coarsest]:.2f} → {w[random_set][finest]:.2f}.
- The paper reports nearest-exemplar distance as a free OOD signal on Gemma-2-2B with a 10M-token dictionary; this
  dictionary holds {r['dictionary_tokens']:,} tokens, so in-distribution tokens also often lack a close
  exemplar. Stream more (`max_tokens`) and watch the in-distribution histogram move left.
- **Next**: notebook 04 looks inside a chat model's dictionary for the region that carries refusal.
"""


def _rate_text(c: dict) -> str:
    return f"{c['harmful_refusal']:.2f} ({c['degenerate']:.0%} degenerate, {c['effect']})"


def refusal(results: dict | str | Path, collapse: float, broken_margin: float) -> str:
    """Notebook 04: labels, the p sweep, where the centre sits, the headline, collapse, DiffMean.

    ``collapse`` and ``broken_margin``: the study's rules (``ep.studies.refusal.COLLAPSE``, ``.BROKEN_MARGIN``)."""
    r = _plain(results)
    p_sweep, baseline, headline, chosen = r["p_sweep"], r["baseline"], r["headline"], r["chosen_percentile"]
    base_rate, n_harm, frac = baseline["harmful_refusal"], r["heldout_harmful"], r["geometry"]["fraction"]
    conditions = list(dict.fromkeys(k for row in p_sweep for k in row
                                    if k not in ("percentile", "n_regions", "n_candidates")))
    clean = [(row["percentile"], c) for row in p_sweep for c in conditions
             if c != "null" and c in row and row[c]["effect"] == "collapsed"]
    clean_exemplar = [p for p, c in clean if c == "exemplar"]
    others = ", ".join(f"p = {p:g} ({c})" for p, c in clean if c != "exemplar") or "none"
    lines = [
        f"- **Model and labels.** {r['model']} refused {r['build_refusal']['harmful']:.0%} of the build harmful "
        f"prompts and {r['build_refusal']['harmless']:.0%} of the harmless ones ({r['protocol']['label_tokens']} new "
        f"tokens); held out: {base_rate:.0%} of {n_harm} harmful ({baseline['degenerate']:.0%} degenerate). The "
        "paper's Gemma-2-2B-it refuses ~98%, so there is less refusal to remove and more label noise here.",
        "- **The sweep.** " + "; ".join(
            f"p = {row['percentile']:g}: {row['n_regions']:,} regions, "
            + (", ".join(f"{c} {_rate_text(row[c])}" for c in conditions if c in row) or "no candidate region")
            for row in p_sweep) + f" (baseline {base_rate:.2f}).",
        f"- **Where the centre sits.** Along DiffMean the all-token centre is {frac['all-token centre']:.2f} of "
        f"the way from harmless to harmful prompts (the final-position centre {frac['final-position centre']:.2f}): "
        "centred removal moves harmful prompts to the centre's coordinate.",
    ]
    if headline is not None:
        null = next((row for row in p_sweep if row["percentile"] == chosen), {}).get("null")
        on_build = r["on_build"][str(chosen)]["harmful_refusal"]
        lines.append(
            f"- **The headline.** On build prompts the exemplar ablation did best at p = {chosen:g} "
            f"({on_build:.2f} against {r['build_refusal']['harmful']:.2f}). There, held-out harmful refusal went "
            f"{base_rate:.2f} → {_rate_text(headline)}; its null {_rate_text(null)}; Δ {headline['delta']:+.2f} "
            f"against the null's {null['delta']:+.2f}. K = 1..{len(r['k_sweep'])}: "
            + ", ".join(f"{k['harmful_refusal']:.2f}" for k in r["k_sweep"]) + ".")
    else:
        lines.append("- **The headline.** No percentile gave a candidate whose ablation left the model intact on build "
                     "prompts, so there is no headline condition.")
    lines.append("- **Collapse?** " + (
        f"The exemplar basis collapsed held-out refusal cleanly (at most {collapse:.0%} of the baseline's rate, "
        f"degenerate share within {broken_margin} of the baseline's) at p = {clean_exemplar}."
        if clean_exemplar else
        "No percentile shows a clean collapse with the exemplar, the paper's basis: it lowered refusal without "
        "breaking the model, but not to half the baseline's.")
        + f" Clean collapses with the other bases: {others}. Conditions marked broken lowered the rate because "
        "completions degenerated, not because the model complied.")
    lines.append(f"- **DiffMean** (plain removal at layer {r['layer']}, a supervised direction): "
                 f"{_rate_text(r['diff_in_means'])}.")
    return "\n".join(lines)


def matching(results: dict | str | Path, singleton_fraction: float, chat_exemplar_fraction: float,
             introduced_tokens: Sequence[tuple[str, int]], largest_introduced: Sequence[tuple[str, int]],
             refounded: int) -> str:
    """Notebook 05: the finetune, token shifts, persisted/dropped/introduced regions, membership, the ladder.

    What the results do not hold, from the dictionaries themselves: the base dictionary's ``singleton_fraction``, the
    share of all base exemplars founded in chat text, the introduced regions' most common exemplar tokens and their
    largest regions (token, members), and how many introduced regions a dropped region's founding token re-founds."""
    r = _plain(results)
    s, m, sh, cutoff = r["fractions"], r["membership"], r["direction_shift"], r["cutoff"]
    chat, sibling, ended, n_demo = r["exemplar_in_chat_text"], r["finetune"], r["replies_ending_turn"], r["n_demo"]
    layers = r["ladder"]["layers"]
    steps = np.abs(np.subtract.outer(np.arange(len(layers)), np.arange(len(layers))))
    by_step = {int(k): v for k, v in r["ladder"]["by_steps_apart"].items()}
    aligned = np.array(r["ladder"]["tokens_aligned"])
    token_by_step = {k: float(aligned[steps == k].mean()) for k in range(1, len(layers))}
    far = max(by_step)
    big = r["persisted_fraction_by_region_size"]["regions with ≥ 5 members"]
    moved_most = max(sh, key=lambda g: sh[g]["median_shift_theta"])
    top_introduced = ", ".join(f"`{t!r}` ({n})" for t, n in largest_introduced)
    if sibling is not None:
        lines = [f"- **The sibling.** {sibling['steps']} LoRA steps on {sibling['pairs']} of the base model's own "
                 f"few-shot answers took the answer loss from {sibling['loss_first']:.2f} to "
                 f"{sibling['loss_last']:.2f}; afterwards {ended['instruct']} of {n_demo} held-out instructions got a "
                 f"reply that ended its turn, against {ended['base']} of {n_demo} for the base model."]
    else:
        lines = [f"- **The pair.** `{r['model']}` and `{r['instruct_model']}`: {ended['instruct']} of {n_demo} "
                 f"held-out instructions got a reply that ended its turn from the instruct model, {ended['base']} from "
                 "the base model."]
    lines += [
        "- **Tokens.** Median direction shift base → instruct: "
        + ", ".join(f"{g} {v['median_shift_theta']:.2f} θ (relative change {v['median_relative_change']:.2f})"
                    for g, v in sh.items())
        + f"; moved most: {moved_most}.",
        f"- **Directions.** {s['persisted']:.0%} of the base regions persisted (exemplar cosine ≥ {cutoff}), "
        f"{s['dropped']:.0%} were dropped and {s['introduced']:.0%} of the instruct regions were "
        f"introduced; {r['same_stream_token_fraction']:.0%} of the persisted pairs are founded by the very same "
        f"token of the stream. Exemplars in chat text: dropped {chat['dropped']:.0%}, introduced "
        f"{chat['introduced']:.0%}, persisted {chat['persisted (base side)']:.0%} (all base exemplars: "
        f"{chat_exemplar_fraction:.0%}). Most common exemplar tokens of introduced regions: "
        + (", ".join(f"`{t!r}` ({n})" for t, n in introduced_tokens) or "none")
        + f". The largest introduced regions (members at arrival): {top_introduced or 'none'}; {refounded} of the "
        f"{r['counts']['introduced']} introduced regions are founded by the same stream token as a dropped base "
        "region: the same region, re-pointed. "
        f"Regions with ≥ 5 members persisted {big:.0%}, against {s['persisted']:.0%} of all regions.",
        f"- **Membership.** Persisted pairs: mean F1 {m['mean_f1']:.2f} over {m['pairs_scored']:,} scored pairs "
        f"(chance {m['mean_f1_chance']:.2f}"
        + (f", pairs below the cutoff {m['mean_f1_below_cutoff']:.2f}" if m["mean_f1_below_cutoff"] is not None else "")
        + f"); {m['token_agreement']:.0%} of held-out tokens land in their base region's partner. A token's two "
        f"nearest exemplars are a median {m['median_nearest_gap_theta']:.2f} θ apart, and even with the base exemplars "
        f"fixed {1 - m['same_region_tokens_moved_only']:.0%} of tokens change region when only the tokens move.",
        f"- **Ladder** (layers {layers}). Adjacent layers share {by_step[1]:.0%} of their regions, the farthest "
        f"pair {by_step[far]:.0%}; single tokens aligned at cosine ≥ {cutoff}: {token_by_step[1]:.0%} and "
        f"{token_by_step[far]:.0%}"
        + (" (the same ordering: the ladder reflects the model, not the matching)."
           if (by_step[1] - by_step[far]) * (token_by_step[1] - token_by_step[far]) > 0 else
           " (a different ordering from the regions': look at the two maps before trusting the ladder)."),
        "- **Against the paper**, which matches Gemma-2-2B with Gemma-2-2B-it at layer 20 (published p10 "
        f"dictionaries): these dictionaries hold {r['tokens']:,} tokens and {singleton_fraction:.0%} of the base "
        "regions are singletons"
        + (", and the finetune is a few steps of LoRA rather than full instruction tuning" if sibling else "")
        + ", so compare what changed where (chat template vs prose) rather than the fractions themselves.",
    ]
    return "\n".join(lines)


def _fields_text(readout: dict) -> str:
    """SAEBench's probe fields as retention, e.g. ``sae_top_1_test_accuracy`` -> ``top-1``."""
    return ", ".join(f"{f[4:-14].replace('_', '-') or 'all'} {v:.0%}" for f, v in readout.items()
                     if f.startswith("sae"))


def sae(results: dict | str | Path, match_threshold: float, match_pool: str, match_basis: str, other_basis: str,
        pool_tokens: int, gemma_scope_tokens: int) -> str:
    """Notebook 06: compute, the shared core (both directions, both bases), coherence, probes, coverage.

    ``match_threshold``, ``match_pool``, ``match_basis``: the notebook's parameters; ``other_basis``: the basis shown
    beside ``match_basis``; ``pool_tokens``: the tokens of the matching pool; ``gemma_scope_tokens``: what the
    paper's SAEs trained on (``ep.studies.sae.GEMMA_SCOPE_TRAINING_TOKENS``)."""
    r = _plain(results)
    matches, probes, fields = r["matching"], r["probes"], r["saebench_fields"]
    paper, direc, looser = matches["paper"], matches["direction only"], matches["looser_reading"]
    other = matches[f"paper, {other_basis} basis"]
    coherence = paper["top1_coherence"]
    seconds_ratio = r["seconds_ratio_sae_over_ep"]
    binary = fields["binary (one-hot, l0 = 1): retention"]
    signed = fields["signed (dense, the official default): retention"]
    coverage = probes["coverage"]
    return f"""Measured here ({r['model']}, layer {r['layer']}, {r['ep']['regions']} EP regions vs a \
{r['sae']['width']}-wide SAE):
- compute: the SAE processed {r['token_ratio_sae_over_ep']:.1f}x EP's tokens and ~{r['flops_ratio_sae_over_ep']:.0f}x \
its FLOPs \
{f"in {seconds_ratio:.0f}x its time " if seconds_ratio else ""}\
(paper: ~10^3x compute; Gemma Scope 4B tokens vs EP 10M = {gemma_scope_tokens / 1e7:.0f}x tokens)
- shared core ({pool_tokens:,} {match_pool} pool tokens, the paper's rules): {paper['matched_fraction']:.0%} of the \
{paper['regions_with_overlap']} regions with an overlapping feature match at F1 > {match_threshold} by signed \
projection, {direc['matched_fraction']:.0%} by direction only (paper: ~20%); counting every region and taking the \
best by F1 (the looser reading): {looser['matched_fraction']:.0%}; the other way (SAE→EP) \
{paper['sae_to_ep']['matched_fraction']:.0%} of {paper['sae_to_ep']['features_with_overlap']} features; the \
{other_basis} basis: EP→SAE {other['matched_fraction']:.0%}, SAE→EP {other['sae_to_ep']['matched_fraction']:.0%}
- top-1 coherence ({match_basis} basis): the 5 best tokens of {coherence['frac_all_same']:.0%} of \
{coherence['n_evaluated']} regions share their most active SAE feature (mean \
{coherence['mean_distinct']:.1f} distinct features of 5)
- probes at l0 = 1 ({len(probes['by_task'])} binary tasks): the EP histogram keeps {r['mean_probe_retention']:.0%} of \
the raw probe's accuracy on average over task families \
({', '.join(f'{n} {v:.0%}' for n, v in r['probe_retention'].items())}; \
paper: ~97%); the SAE's top-1 histogram {probes['sae_mean_retention']:.0%}; the pooled one-hot control \
{probes['pooled_one_hot_control_retention']:.0%}
- probes in SAEBench's fields (retention = field / llm_test_accuracy, mean over families): binary readout \
{_fields_text(binary)}; signed readout {_fields_text(signed)}
- coverage (language ID): retention {' → '.join(f'{v["retention"]:.2f}' for v in coverage.values())} over \
{', '.join(coverage)}"""


def axbench(results: dict | str | Path, percentile: float, paper_tokens: int = 10_000_000) -> str:
    """Notebook 07: the paper's protocol with its spread, the controls, build tokens, the layer sweep.

    ``percentile``: the dictionary's p; ``paper_tokens``: the paper's build (10M Pile tokens)."""
    r = _plain(results)
    means, controls, spread = r["mean_auroc"], r["controls"], r["seed_spread"]
    n_boot = spread["n_boot"]
    bases = r["protocol"]["bases"]
    ep_methods = [f"ep_p{percentile:g}_{b}" for b in bases]
    ep_main = ep_methods[0]
    eval_std = spread.get("std_eval_rows_redrawn", {})

    def pm(m):  # a mean with its bootstrap spread (evaluation rows redrawn)
        return f"{means[m]:.3f}" + (f" ± {eval_std[m]:.3f}" if m in eval_std else "")

    by_layer = {int(k): v for k, v in r["mean_auroc_by_layer"].items()}
    best_layer = max(by_layer, key=lambda k: by_layer[k].get(ep_main, -math.inf))
    by_tokens = {int(k): v for k, v in r["mean_auroc_by_build_tokens"].items()}
    sizes, slopes, paper_ep = list(by_tokens), r["slope_per_tenfold_build_tokens"], r["paper"]["EP p1 (paper)"]
    last = by_tokens[sizes[-1]]["exemplar"]
    direction = "toward" if (slopes["exemplar"] > 0) == (last < paper_ep) else "away from"
    at_paper = last + slopes["exemplar"] * np.log10(paper_tokens / sizes[-1])
    trend_text = "" if len(by_tokens) < 2 else (
        f"; per tenfold more tokens {slopes['exemplar']:+.3f} and {slopes['mean']:+.3f}, so more coverage moves EP "
        f"{direction} the paper's {paper_ep} on this model (a straight line in log "
        f"tokens would put the exemplar basis at {at_paper:.3f} at 10M: a guide, not a prediction)")
    others = ", ".join(f"{m} {pm(m)}" for m in ("diffmean", "probe", "sae_a") if m in means)
    baseline = controls["paper protocol"][ep_main]
    moves = {name: c[ep_main] - baseline for name, c in list(controls.items())[1:]}
    all_four = controls["all four together"]
    both = spread.get("std_both_rows_redrawn", {})
    both_text = [both[m] if n_boot else float("nan") for m in ep_methods[:2]]
    return f'''
**This run** ({r['model']}, layer {r['layer']}, {r['n_concepts']} concepts, {r['n_train_rows']} training and \
{r['n_eval_rows']}
evaluation rows; a p{percentile:g} dictionary of {r['regions']} regions from {r['build_tokens']}
corpus tokens):
- the paper's protocol: EP exemplar basis **{pm(ep_methods[0])}**, mean-member basis **{pm(ep_methods[1])}**
  (± the std over {n_boot} bootstrap redraws of the evaluation rows; redrawing the training rows too:
  ± {both_text[0]:.3f} and
  ± {both_text[1]:.3f}); {others};
  floors: length {means['length']:.3f}, random {means['random']:.3f}.
  The paper (Gemma-2-2B-it, layer 20, Concept500): EP p1 0.881, SAE 0.755, SAE-A 0.911.
- controls (EP exemplar basis, change against the paper's protocol):
  {"; ".join(f"{k} {v:+.3f}" for k, v in moves.items())};
  all four together gave EP {all_four[ep_methods[0]]:.3f} / {all_four[ep_methods[1]]:.3f}.
- build tokens ({", ".join(f"{n:,}" for n in sizes)}): EP exemplar basis
  {" → ".join(f"{by_tokens[n]['exemplar']:.3f}" for n in sizes)}, mean-member basis
  {" → ".join(f"{by_tokens[n]['mean']:.3f}" for n in sizes)}{trend_text}.
- layer sweep: EP (exemplar) is best at layer {best_layer} of {list(by_layer)}
  ({", ".join(f"L{k} {v[ep_main]:.3f}" for k, v in by_layer.items())}).
'''


def steering(results: dict | str | Path) -> str:
    """Notebook 08: each concept's probe gain at the best fluent strength, EP vs DiffMean, partition steering."""
    r = _plain(results)
    gain, regions, budget, moved = r["probe_gain_while_fluent"], r["concept_regions"], r["fluency_budget"], \
        r["partition_kl"]
    concepts = list(gain)
    lines = []
    for c in concepts:
        g = gain[c]
        gains = ", ".join(f"{m} {g[m]:+.2f}" for m in sorted(g, key=g.get, reverse=True))
        lines.append(f"- **{c}** (region {regions[c]['region']}, {regions[c]['members']} members): probe-score gain "
                     f"at the best fluent strength (perplexity ≤ {budget:g}× unsteered): {gains}.")
    ep_wins = [c for c in concepts if max(gain[c]["EP exemplar"], gain[c]["EP mean-member"]) > gain[c]["DiffMean"]]
    return "\n".join(lines + [
        f"- EP directions beat DiffMean on {len(ep_wins)} of {len(concepts)} concepts"
        + (f" ({', '.join(ep_wins)})." if ep_wins else "."),
        "- Every direction breaks fluency when pushed far enough: compare concept scores at equal perplexity, not "
        "equal strength.",
        f"- Partition steering: rotating one token fully onto region {regions[concepts[0]]['region']}'s exemplar "
        f"moved the next-token distribution by KL {moved['1.0']:.2f} (λ = 0.5: {moved['0.5']:.2f}).",
        "- The official concept-steering script found its cosine-contrast selection sometimes picked the wrong "
        "partition and moved to hand-picked partitions; a small dictionary of a 12k-token stream has few concept "
        "regions, so weak EP steering here says more about coverage than about the method. Raise `max_tokens` and "
        "`stream_docs`.",
    ])


def stability(results: dict | str | Path, n_docs: int) -> str:
    """Notebook 09: seeds and orders, which regions recur, disjoint streams, resolution, saturation.

    ``n_docs``: the documents each seed streams (a parameter)."""
    r = _plain(results)
    sizes, persisted, orders = r["regions_per_seed"], r["persisted_fraction"], r["persisted_fraction_orders"]
    rho, cosine, by_size = r["stability_vs_size_spearman"], r["mean_matched_cosine"], r["persisted_disjoint_by_size"]
    fired = {k: v for k, v in r["saturation_stop_tokens"].items() if v is not None}
    stop_text = ("The stop rule fired: " + ", ".join(f"{k} after {v:,} tokens" for k, v in fired.items()) if fired
                 else "The stop rule never fired: this stream is far too short to saturate.")
    size_names = list(by_size)
    return f"""
- **Seeds.** {len(sizes)} seeds, each {n_docs} documents of a new shuffle of the corpus (seeds 0 and 1 share
  {r['documents_shared_by_seeds_0_1']}), gave {min(sizes):,}–{max(sizes):,} regions at p{r['percentile']:g}. \
Matched mean-member directions
  agree (mean cosine {cosine['mean']:.2f}, {persisted['mean']:.0%} persist at cosine ≥ {r['cutoff']})
  {'more' if persisted['mean'] > persisted['exemplar'] else 'no more'} than exemplars
  ({cosine['exemplar']:.2f}, {persisted['exemplar']:.0%}); seed 0's documents in {len(sizes)} orders
  only: {orders['mean']:.0%} and {orders['exemplar']:.0%}.
- **Which regions, across seeds.** Spearman of stability with size: {rho['mean']:.2f} for mean directions,
  {rho['exemplar']:.2f} for exemplars. Isolated tokens come back as themselves; a large region's founder is an
  accident of order.
- **New tokens.** Two disjoint halves share {r['persisted_disjoint_halves']:.0%} of their regions (two orders of one \
half:
  {r['persisted_same_half_two_orders']:.0%}); by size, from {by_size[size_names[0]]:.0%} of singletons to \
{by_size[size_names[-1]]:.0%}
  of regions with {size_names[-1]} members.
- **Resolution.** Regions by p: {', '.join(f'{k} {v:,}' for k, v in r['regions_by_percentile'].items())}.
  Coarse regions that split at the next level: {', '.join(f'{v:.0%}' for v in r['split_fraction'].values())}; a fine
  region of 5+ members keeps a median {', '.join(f'{v:.0%}' for v in r['median_nesting_share'].values())} of its
  tokens inside its parent.
- **Saturation.** {stop_text}
- The paper's repository reports mean directions stable across seeds and exemplars less so on Gemma-2-2B; here
  the same holds on Gemma 3 270M with {r['stream_tokens']:,} tokens. Raise `n_docs` and watch the singletons' share,
  the disjoint-stream persistence and the saturation curves move.
"""


def _verdict(interval: Sequence[float]) -> bool | None:
    """True if a bootstrap interval (estimate, low, high) lies above 0, False if below, None if it holds 0."""
    _, lo, hi = interval
    return True if lo > 0 else False if hi < 0 else None


def labels(results: dict | str | Path, above_chance: Sequence[float], n_obvious: int) -> str:
    """Notebook 10: what the judge can and cannot do, the labels against shuffled and logit-lens baselines.

    ``above_chance``: the bootstrap interval of the labels' AUROC minus 0.5; ``n_obvious``: the judge's obvious
    cases."""
    r = _plain(results)
    auroc, ba, ctx = r["auroc"], r["balanced_accuracy"], r["protocol"]["contexts"]
    label_auroc, shuffled_auroc, lens_auroc = auroc.values()
    label_ba, shuffled_ba, lens_ba = ba.values()
    vs_shuffled, vs_lens = r["auroc_label_minus_shuffled"], r["auroc_label_minus_lens"]
    n_members, n_near, n_random = ctx["members"], ctx["near"], ctx["random"]
    can = {True: f"given a region's label, it ranked held-out members above non-members better than chance (mean "
                 f"AUROC {label_auroc:.2f}, interval above 0.5)",
           False: f"its margins ranked non-members above members (mean AUROC {label_auroc:.2f})",
           None: f"it did not rank members above non-members measurably better than chance (mean AUROC "
                 f"{label_auroc:.2f}, the interval holds 0.5)"}[_verdict(above_chance)]
    beats = {True: "above", False: "below", None: "not distinguishable from"}
    n = r["regions_scored"]
    return f"""
- {n} regions of a {r['regions']}-region dictionary were labelled by `{r['protocol']['labeller']}` and judged by the
  same model on {r['judged_contexts']} held-out contexts per condition.
- **The judge can** tell a fitting word from an unfitting one when the category is plain: AUROC
  {r['judge_auroc_obvious']:.2f} on {n_obvious} obvious cases. That is its ceiling here.
- **On the regions**, mean AUROC: labels {label_auroc:.2f}, shuffled labels {shuffled_auroc:.2f}, logit-lens
  tokens {lens_auroc:.2f} (chance 0.5). Mean balanced accuracy at the calibrated threshold: {label_ba:.2f},
  {shuffled_ba:.2f}, {lens_ba:.2f}. So {can}; the labels were {beats[_verdict(vs_shuffled)]} another
  region's label (AUROC difference {vs_shuffled[0]:+.2f}, 95% CI {vs_shuffled[1]:+.2f} to
  {vs_shuffled[2]:+.2f}) and {beats[_verdict(vs_lens)]} the logit-lens tokens
  ({vs_lens[0]:+.2f}, {vs_lens[1]:+.2f} to {vs_lens[2]:+.2f}).
- **The judge cannot** give a usable Yes on its own: {r['margin_above_zero']:.0%} of its margins under the
  labels were above 0, so a threshold at 0 would mostly measure its leaning. Read its margins as a ranking (AUROC),
  or calibrate its threshold as here. Nor can it read a token in its context: it is shown the word alone, so a
  region defined by context (the same word in two senses, a position in a sentence) is out of its reach.
- Quality against size and coherence (Spearman, {n} regions): {r['spearman_with_size']:+.2f} and \
{r['spearman_with_coherence']:+.2f}.
  With this few regions, treat these as anecdotes: raise `n_regions` (the cache keeps what was already asked).
- With {n_members + n_near + n_random} contexts per region a single region's score moves in steps of
  1/{n_members * (n_near + n_random)} (AUROC) or 1/{2 * n_members} (balanced accuracy): read the mean over regions,
  and the examples, not one region's number. A larger judge (by parameter), more contexts and more regions are the
  next steps; the cache keeps every answer already paid for.
"""


__all__ = ["activations", "axbench", "dictionary", "labels", "matching", "ood", "refusal", "sae", "stability",
           "start_here", "steering"]
