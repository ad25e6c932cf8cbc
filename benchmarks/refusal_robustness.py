"""
How stable was notebook 04's earlier headline across build samples, and which defaults should it use?

PROTOCOL: this study and its recorded results (``benchmarks/results/refusal_robustness*.md``) follow
notebook 04's *earlier* protocol, not the paper's that the notebook now runs by default: dictionaries
built on the build prompts' **final positions only**, a layer chosen from a sweep, **plain** removal, nulls
by size and |cos| with diff-in-means, labels from Arditi et al.'s substring list over the whole (10-token)
completion (``R.ARDITI_SUBSTRINGS``). The paper's protocol (all-token dictionary, centred removal, top
K = 1..5 candidates, matched null; ``scripts/exp_behavioral.py``) is notebook 04's; porting this study to
it is future work. Kept because it measures how noisy a one-region ablation is with 80 + 80 build prompts.

Notebook 04 builds its refusal dictionaries on 80 + 80 shuffled train prompts (``seed``), chooses a
layer and a region on them, and ablates that region's direction on held-out prompts. With so few build
prompts the choice can move with the sample. This script repeats the notebook's choose-then-ablate
steps for several seeds (each seed: another build sample) and measures refusal on a dev set carved
from the train splits, never on the held-out val prompts: this study chose the notebook's defaults.

Per seed it records the sweep (top region size, member refusal rate, cosine with the build
diff-in-means, per layer and percentile), the layer each selection rule picks, and dev refusal after
plain removal at the picked layer of: the top region's mean-member direction, its exemplar, the span
of the top 3 regions' mean directions (p = 8 and p = 20); every sweep layer's own top region at once;
the diff-in-means direction.

    python benchmarks/refusal_robustness.py                 # seeds 0-5, ~2.7 min a seed on 2 CPU cores
    python benchmarks/refusal_robustness.py --seeds 0 1     # fewer

Needs the offline mirror (EP_DATA_DIR). Writes benchmarks/results/refusal_robustness.{json,md}.
"""

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import ep  # noqa: E402

PROTOCOL = ("notebook 04's earlier protocol, not the paper's: final-position dictionaries, layer sweep, plain "
            "removal, size/|cos| nulls, Arditi et al.'s substrings over the whole completion")
from provenance import command, commit  # noqa: E402

from ep.model import interventions as I  # noqa: E402
from ep.studies import refusal as R  # noqa: E402

# notebook 04's defaults
MODEL, SWEEP, PERCENTILE, MIN_MEMBERS = "qwen2.5-coder-0.5b-instruct", (8, 12, 16, 20), 8.0, 5
N_BUILD, MIN_HELDOUT, N_HARMLESS, MAX_NEW_TOKENS, BATCH = 80, 50, 20, 10, 72
N_DEV = 52  # dev harmful prompts, as many as the notebook holds out


def splits(seed: int) -> tuple[list[str], list[str], list[str], list[str]]:
    """The notebook's build set for one seed, and a dev set from the rest of the train splits.

    The notebook reserves the first ``MIN_HELDOUT`` shuffled harmful_train prompts for its held-out set
    and builds on the next ``N_BUILD``; the dev set is the next ``N_DEV`` (harmless: after the build).
    No val prompt is read: this study chooses the notebook's defaults, so it must not see held-out data.
    """
    rng = np.random.default_rng(seed)
    harmful, harmless = ep.data.instructions("harmful_train"), ep.data.instructions("harmless_train")
    order_harmful, order_harmless = rng.permutation(len(harmful)), rng.permutation(len(harmless))
    build_harmful = [harmful[i] for i in order_harmful[MIN_HELDOUT:MIN_HELDOUT + N_BUILD]]
    build_harmless = [harmless[i] for i in order_harmless[:N_BUILD]]
    dev_harmful = [harmful[i] for i in order_harmful[MIN_HELDOUT + N_BUILD:MIN_HELDOUT + N_BUILD + N_DEV]]
    dev_harmless = [harmless[i] for i in order_harmless[N_BUILD:N_BUILD + N_HARMLESS]]
    return build_harmful, build_harmless, dev_harmful, dev_harmless


# -- this study's region rules (the earlier protocol; notebook 04 runs the paper's) ----------------

def top_regions(table, k: int = 1) -> list[int]:
    """The ``k`` best-scoring regions of ``R.region_table`` (only those with a score)."""
    ranked = table[table["score"].notna()]
    if len(ranked) < k:
        raise ValueError(f"only {len(ranked)} regions have enough members; asked for {k}")
    return [int(r) for r in ranked["region"][:k]]


def null_region(table, size: int, exclude: Sequence[int] = (), min_members: int = 5, max_rate: float = 0.2,
                directions: torch.Tensor | None = None, reference: torch.Tensor | None = None,
                max_cosine: float = 0.3) -> int:
    """A control region: ≥ ``min_members``, refusal rate ≤ ``max_rate``, size closest to ``size``.

    With ``directions`` [K, d] (one per region) and a ``reference`` direction [d] (e.g. the diff-in-means
    refusal direction), candidates must also satisfy |cos| ≤ ``max_cosine``: a region lying on that axis,
    e.g. harmless prompts on the far side of the refusal direction, is no null, since removing its
    direction moves refusal too. Fallbacks: the lowest-refusal regions when none is below ``max_rate``; the least
    aligned ones when none is below ``max_cosine``.
    """
    ok = table[(table["members"] >= min_members) & ~table["region"].isin(list(exclude))]
    if ok.empty:
        raise ValueError("no region has enough members for a null control")
    low = ok[ok["refusal_rate"] <= max_rate]
    pool = low if not low.empty else ok[ok["refusal_rate"] == ok["refusal_rate"].min()]
    if directions is not None and reference is not None:
        ref = reference.double().reshape(-1) / reference.double().norm()
        dirs = directions.double()[torch.tensor(pool["region"].to_numpy(dtype=np.int64))]
        cos = (dirs @ ref / dirs.norm(dim=1).clamp_min(1e-300)).abs().numpy()
        pool = pool.assign(abs_cos=cos)
        unaligned = pool[pool["abs_cos"] <= max_cosine]
        pool = unaligned if not unaligned.empty else pool[pool["abs_cos"] == pool["abs_cos"].min()]
    best = pool.assign(gap=(pool["members"] - size).abs()).sort_values(["gap", "refusal_rate", "region"])
    return int(best["region"].iloc[0])


def null_regions(table, size: int, k: int, exclude: Sequence[int] = (), **kwargs) -> list[int]:
    """``k`` distinct null regions, each the :func:`null_region` of those not yet taken (a top-k span's control)."""
    picked: list[int] = []
    for _ in range(k):
        picked.append(null_region(table, size, exclude=[*exclude, *picked], **kwargs))
    return picked


def layer_regions(build: R.Generations, harmful: np.ndarray, layer: int, percentile: float, *, min_members: int = 5,
                  seed: int = 0, null_kind: str = "mean", null_max_rate: float = 0.2,
                  null_max_cosine: float = 0.3, refused: np.ndarray | None = None) -> dict:
    """One layer's regions on a final-position dictionary (this study's protocol).

    ``refused`` [N] overrides ``build.refused`` (e.g. labels made with another phrase list).

    Calibrates and builds a dictionary on the recorded final-position activations at ``layer``, scores
    its regions (``R.region_table``), takes the top 3 and 3 null regions (:func:`null_regions`: about
    the top region's size, refusal rate ≤ ``null_max_rate``, |cos| ≤ ``null_max_cosine`` between their
    ``null_kind`` direction, "mean" or "exemplar", and the build diff-in-means). Returns a dict:
    ``dictionary``, ``table``, ``top3``, ``nulls``, ``dim`` (the diff-in-means direction [d]),
    ``directions`` (the top region's exemplar and mean direction, the top 3's exemplars and mean
    directions) and ``cosines`` (of each of those with ``dim``; the cosine to the span for the top 3).
    """
    if null_kind not in ("mean", "exemplar"):
        raise ValueError(f"null_kind must be 'mean' or 'exemplar', got {null_kind!r}")
    harmful = np.asarray(harmful, dtype=bool)
    acts = build.final_acts[layer]
    dictionary = ep.build_dictionary([build.batch(layer)], ep.calibrate(acts, percentile, seed=seed), progress=False)
    refused = build.refused if refused is None else np.asarray(refused, dtype=bool)
    table = R.region_table(dictionary.assign(acts)[0], refused, harmful, len(dictionary), min_members)
    top3 = top_regions(table, 3)
    dim = I.diff_in_means(acts[harmful], acts[~harmful])
    exemplars, means = dictionary.exemplars, dictionary.mean_directions
    kind = means if null_kind == "mean" else exemplars
    size = int(table.set_index("region").loc[top3[0], "members"])
    nulls = null_regions(table, size, 3, exclude=top3, min_members=min_members, max_rate=null_max_rate,
                         directions=kind, reference=dim, max_cosine=null_max_cosine)
    directions = {"top-1 exemplar": exemplars[top3[0]], "top-1 mean": means[top3[0]],
                  "top-3 exemplars": exemplars[top3], "top-3 mean": means[top3]}
    return {"dictionary": dictionary, "table": table, "top3": top3, "nulls": nulls, "dim": dim,
            "directions": directions, "cosines": {name: I.subspace_cosine(v, dim) for name, v in directions.items()}}


def labels(run: R.Generations) -> np.ndarray:
    """The recorded run's labels: Arditi et al.'s substrings anywhere in the completion (earlier protocol)."""
    return R.refusal_labels(run.completions, R.ARDITI_SUBSTRINGS, max_chars=None)


def run_seed(model, seed: int) -> dict:
    build_harmful, build_harmless, dev_harmful, dev_harmless = splits(seed)
    gen = dict(max_new_tokens=MAX_NEW_TOKENS, batch_size=BATCH, progress=False)
    is_harmful = np.array([True] * len(build_harmful) + [False] * len(build_harmless))
    build = R.generate(model, R.chat_prompts(model.tokenizer, build_harmful + build_harmless),
                       record_layers=SWEEP, **gen)
    build_refused = labels(build)
    analyses = {layer: layer_regions(build, is_harmful, layer, PERCENTILE, min_members=MIN_MEMBERS, seed=seed,
                                       refused=build_refused)
                for layer in SWEEP}  # the notebook's step; nulls: mean directions, refusal rate <= 0.2, |cos| <= 0.3

    def directions(layer: int, kind: str):  # [d] or [3, d]
        a = analyses[layer]
        nulls = {"null mean": a["nulls"][0], "null-3 mean": a["nulls"]}
        return a["directions"][kind] if kind.startswith("top") else a["dictionary"].mean_directions[nulls[kind]]

    def stats(a: dict) -> dict:
        top = a["table"].set_index("region").loc[a["top3"][0]]
        return {"regions": len(a["dictionary"]), "top_members": int(top.members),
                "top_refusal_rate": float(top.refusal_rate), "cos_mean_with_dim": a["cosines"]["top-1 mean"],
                "cos_top3_mean_with_dim": a["cosines"]["top-3 mean"],
                "cos_null_with_dim": I.cosine(a["dictionary"].mean_directions[a["nulls"][0]], a["dim"])}

    sweep = {layer: stats(a) for layer, a in analyses.items()}
    # the layer rules, on build prompts only
    rules = {"top refusal rate": max(SWEEP, key=lambda layer: sweep[layer]["top_refusal_rate"]),
             "cos with diff-in-means": max(SWEEP, key=lambda layer: sweep[layer]["cos_mean_with_dim"])}
    layer = rules["cos with diff-in-means"]
    conditions = {"baseline": None}
    for kind in ("top-1 mean", "null mean", "top-3 mean", "null-3 mean"):
        conditions[kind] = I.Ablation(directions(layer, kind), (layer,))
    for kind in ("top-1 mean", "null mean"):
        conditions[f"{kind} · each sweep layer"] = I.PerLayer(
            [I.Ablation(directions(sweep_layer, kind), (sweep_layer,)) for sweep_layer in SWEEP])
    conditions["diff-in-means"] = I.Ablation(analyses[layer]["dim"], (layer,))
    dev_prompts = R.chat_prompts(model.tokenizer, dev_harmful + dev_harmless)
    n_harm = len(dev_harmful)
    rates = {}
    for name, edit in conditions.items():
        refused = labels(R.generate(model, dev_prompts, edit=edit, **gen))
        rates[name] = {"harmful": float(refused[:n_harm].mean()), "harmless": float(refused[n_harm:].mean())}
    return {"seed": seed, "build_refusal_harmful": float(build_refused[is_harmful].mean()),
            "n_dev_harmful": n_harm, "rules": rules, "layer": layer,
            "sweep": [{"layer": sweep_layer, **row} for sweep_layer, row in sweep.items()], "rates": rates}


def markdown(results: list[dict], header: str) -> str:
    names = list(results[0]["rates"])
    lines = [f"# Notebook 04 across build samples ({MODEL}, {N_BUILD} + {N_BUILD} build prompts)", "", header, "",
             f"Protocol: {PROTOCOL}.", "",
             f"Dev-set refusal (train prompts outside the build set and the notebook's reserved slice), harmful "
             f"(harmless), {results[0]['n_dev_harmful']} + {N_HARMLESS} prompts, "
             "plain removal at the layer the 'cos with diff-in-means' rule picks (shown per seed); "
             "'each sweep layer' removes every sweep layer's own top (or null) region at once; 'null' is the "
             "notebook's control (size-matched, rarely refused, |cos| ≤ 0.3 with the build diff-in-means), 'null-3' "
             "the three "
             "best such regions (the control for the top-3 span). "
             "Layer picked by the notebook's other rule, 'top refusal rate': in the last column.", "",
             "| seed | layer | " + " | ".join(names) + " | layer, rate rule |", "|---" * (len(names) + 3) + "|"]
    for res in results:
        cells = [f"{res['rates'][n]['harmful']:.2f} ({res['rates'][n]['harmless']:.2f})" for n in names]
        lines.append(f"| {res['seed']} | {res['layer']} | " + " | ".join(cells)
                     + f" | {res['rules']['top refusal rate']} |")
    base = [r["rates"]["baseline"] for r in results]
    lines += ["", "| condition | mean harmful | halved harmful | harmless up ≤ 10 pts "
              "| its null moved harmful ≤ 10 pts | all three |", "|---|---|---|---|---|---|"]
    for n in names:
        harm = [r["rates"][n]["harmful"] for r in results]
        if n == "baseline" or n.startswith("null"):
            lines.append(f"| {n} | {np.mean(harm):.2f} | | | | |")
            continue
        halved = [h <= b["harmful"] / 2 for h, b in zip(harm, base)]
        harmless = [r["rates"][n]["harmless"] - b["harmless"] <= 0.10 + 1e-9 for r, b in zip(results, base)]
        null = n.replace("top-1", "null").replace("top-3", "null-3")
        if null != n:
            quiet = [abs(r["rates"][null]["harmful"] - b["harmful"]) <= 0.10 + 1e-9 for r, b in zip(results, base)]
        else:
            quiet = [True] * len(results)  # diff-in-means has no null region
        every = [a and b and c for a, b, c in zip(halved, harmless, quiet)]
        count = lambda xs: f"{sum(xs)}/{len(xs)}"
        lines.append(f"| {n} | {np.mean(harm):.2f} | {count(halved)} | {count(harmless)} | "
                     f"{count(quiet) if null != n else '(none)'} | {count(every)} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4, 5])
    args = parser.parse_args()
    ep.setup(seed=0)
    model, _ = ep.load_model(MODEL)
    load = os.getloadavg()[0]
    results = []
    for seed in args.seeds:
        start = time.perf_counter()
        results.append(run_seed(model, seed))
        print(f"seed {seed}: {time.perf_counter() - start:.0f} s", json.dumps(results[-1]["rates"]), flush=True)
    machine = ep.show.notebook.machine()
    header = (f"`{command()}` at commit {commit()}. "
              f"{machine['cpu']}, {machine['threads']} threads, torch {machine['torch']}, "
              f"{datetime.datetime.now().isoformat(timespec='seconds')}; load average {load:.1f} -> "
              f"{os.getloadavg()[0]:.1f}.")
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    record = {"commit": commit(), "command": command(), "machine": machine, "protocol": PROTOCOL, "results": results}
    (out / "refusal_robustness.json").write_text(json.dumps(record, indent=1))
    (out / "refusal_robustness.md").write_text(markdown(results, header))
    print(markdown(results, header))


if __name__ == "__main__":
    main()
