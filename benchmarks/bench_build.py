"""
The end-to-end build (tokens -> dictionary) against the bare Hugging Face forward (its limit), fp32 and bf16,
what bf16 changes, and the builder's cost per token as the number of regions K grows.

    python benchmarks/bench_build.py            # Gemma 3 270M layer 9, 96 Wikipedia documents, context 128
    python benchmarks/bench_build.py --docs 32  # smaller

1. Per dtype (fp32 then bf16, alternating over --reps): the bare forward through the layer (a hook stops the
   model there; no nnsight, no builder), then the end-to-end build (nnsight extraction + DictionaryBuilder on
   the same calibration), in tokens/s.
2. What bf16 changes on the same tokens: relative activation change ||a16 - a32|| / ||a32||, cosine of the
   centred directions, and the region sets (fp32's centre and theta for both): regions, exemplar-set Jaccard,
   and the share of tokens whose region's exemplar is the same token in both builds.
3. Cost vs K: synthetic rows streamed in batches of 4096 with a threshold that keeps making regions; seconds per
   token and RSS per batch against K (plot results/build_cost_vs_k.png).
Results: results/build.{json,md}, with the machine and the load average at every number.
"""

import argparse
import json
import os
import time
from pathlib import Path

import torch
from provenance import command, commit

import ep
from ep.method.builder import DictionaryBuilder
from ep.method.calibration import Calibration, calibrate, to_directions
from ep.model.loading import transformers_model
from ep.show.notebook import machine

HERE = Path(__file__).parent


def loads() -> str:
    return "/".join(f"{x:.2f}" for x in os.getloadavg())


def rss_mb() -> float:
    """Current resident set size (Linux /proc), not the peak: the models loaded before would mask it."""
    return next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmRSS")) / 1024


class _Stop(Exception):
    pass


def bare_forward(model, texts, layer: int, context: int, batch: int) -> tuple[int, float]:
    """Tokens/s of the plain HF forward up to `layer` (stopped by a hook), batches like the extractor's."""
    hf, tok = transformers_model(model), model.tokenizer  # the wrapped transformers model itself: no tracing
    block = hf.model.layers[layer]

    def stop(*_):
        raise _Stop

    handle, n, t = block.register_forward_hook(stop), 0, time.perf_counter()
    try:
        with torch.no_grad():
            for s in range(0, len(texts), batch):
                enc = tok(texts[s:s + batch], return_tensors="pt", padding=True, truncation=True, max_length=context)
                n += int(enc["attention_mask"].sum()) - enc["input_ids"].shape[0]  # BOS excluded, as extracted
                try:
                    hf(**enc)
                except _Stop:
                    pass
    finally:
        handle.remove()
    return n, time.perf_counter() - t


def end_to_end(model, texts, layer, context, batch, cal) -> tuple[ep.Dictionary, torch.Tensor, float]:
    t = time.perf_counter()
    b, acts = DictionaryBuilder(cal), []
    for ab in ep.iter_token_activations(model, texts, layer, context_length=context, batch_size=batch,
                                        progress=False):
        b.add(ab)
        acts.append(ab.acts.float())
    return b.snapshot(), torch.cat(acts), time.perf_counter() - t


def cost_vs_k(n: int, d: int, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g)  # isotropic: a small theta keeps making regions
    cal = Calibration(centre=torch.zeros(d), threshold=0.7, percentile=float("nan"), n_tokens=0)  # ~every row new
    b, out = DictionaryBuilder(cal), []
    for s in range(0, n, 4096):
        t = time.perf_counter()
        m = x[s:s + 4096].shape[0]
        b.add_arrays(x[s:s + m], torch.zeros(m), torch.zeros(m), torch.zeros(m))
        dt = time.perf_counter() - t
        out.append({"tokens": s + m, "K": b.num_regions, "us_per_token": 1e6 * dt / m,
                    "rss_mb": rss_mb(), "loads": loads()})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--docs", type=int, default=96)
    ap.add_argument("--layer", type=int, default=9)
    ap.add_argument("--context", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--k-rows", type=int, default=60_000)
    ap.add_argument("--only-k", action="store_true", help="keep build.json's model parts; redo cost vs K")
    args = ap.parse_args()
    if args.only_k:
        res = json.loads((HERE / "results" / "build.json").read_text())
        res["cost_vs_k"] = cost_vs_k(args.k_rows, 640)
        res["end"] = {"loads": loads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
        return write(res, args)
    texts = list(ep.data.corpus(max_docs=args.docs + 32))
    cal_texts, texts = texts[:32], texts[32:]
    res = {"start": {"loads": loads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}, "machine": machine(),
           "commit": commit(), "command": command(), "args": vars(args), "rates": []}
    models = {name: ep.load_model("gemma-3-270m", dtype=dt)[0]
              for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    cal_acts = ep.token_activations(models["fp32"], cal_texts, args.layer, context_length=args.context,
                                    progress=False).acts.float()
    cal = calibrate(cal_acts, percentile=1.0)
    dicts, acts = {}, {}
    for _ in range(args.reps):
        for name, model in models.items():
            n, t_bare = bare_forward(model, texts, args.layer, args.context, args.batch)
            d, a, t_e2e = end_to_end(model, texts, args.layer, args.context, args.batch, cal)
            dicts[name], acts[name] = d, a
            row = {"dtype": name, "tokens": a.shape[0], "bare_tok_s": n / t_bare, "e2e_tok_s": a.shape[0] / t_e2e,
                   "regions": len(d), "loads": loads()}
            row["e2e_over_bare"] = row["e2e_tok_s"] / row["bare_tok_s"]
            res["rates"].append(row)
            print(json.dumps(row), flush=True)
    a32, a16 = acts["fp32"], acts["bf16"]
    u32, u16 = to_directions(a32, cal.centre), to_directions(a16, cal.centre)
    ex32, ex16 = set(dicts["fp32"].exemplar_index.tolist()), set(dicts["bf16"].exemplar_index.tolist())
    own = {k: dicts[k].assign(acts[k])[0] if hasattr(dicts[k], "assign") else None for k in dicts}
    same_region = None
    if own["fp32"] is not None:  # region id -> its exemplar's stream index, compared token by token
        e32 = dicts["fp32"].exemplar_index[torch.as_tensor(own["fp32"])]
        e16 = dicts["bf16"].exemplar_index[torch.as_tensor(own["bf16"])]
        same_region = float((e32 == e16).float().mean())
    res["bf16_vs_fp32"] = {
        "relative_activation_change_median": float(((a16 - a32).norm(dim=1) / a32.norm(dim=1)).median()),
        "centred_cosine_median": float((u32 * u16).sum(1).median()),
        "centred_cosine_p1": float((u32 * u16).sum(1).quantile(0.01)),
        "regions_fp32": len(ex32), "regions_bf16": len(ex16),
        "exemplar_jaccard": len(ex32 & ex16) / len(ex32 | ex16),
        "same_region_exemplar_share": same_region, "threshold": float(cal.threshold), "loads": loads()}
    print(json.dumps(res["bf16_vs_fp32"]), flush=True)
    res["cost_vs_k"] = cost_vs_k(args.k_rows, 640)
    res["end"] = {"loads": loads(), "time": time.strftime("%Y-%m-%dT%H:%M:%S")}
    write(res, args)


def write(res: dict, args) -> None:
    (HERE / "results" / "build.json").write_text(json.dumps(res, indent=2) + "\n")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    ks = res["cost_vs_k"]
    fig, ax = plt.subplots(figsize=(5, 3.2))
    ax.plot([r["K"] for r in ks], [r["us_per_token"] for r in ks], "o-")
    ax.set(xlabel="regions K", ylabel="µs per token", title="builder cost per token vs K (d = 640)")
    ax2 = ax.twinx()
    ax2.plot([r["K"] for r in ks], [r["rss_mb"] for r in ks], "s--", color="gray")
    ax2.set_ylabel("RSS (MB)", color="gray")
    fig.tight_layout()
    fig.savefig(HERE / "results" / "build_cost_vs_k.png", dpi=120)

    m, b16 = res["machine"], res["bf16_vs_fp32"]
    lines = [f"# End-to-end build vs the bare forward (Gemma 3 270M layer {args.layer}, context {args.context})", "",
             f"`{res['command']}` at commit {res['commit']}. "
             f"{m['cpu']}, torch {m['torch']}; started {res['start']['time']} (load {res['start']['loads']}), "
             f"ended {res['end']['time']} (load {res['end']['loads']}).", "",
             "| dtype | tokens | bare forward (tok/s) | end-to-end build (tok/s) | build / bare | regions | load |",
             "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['dtype']} | {r['tokens']} | {r['bare_tok_s']:.0f} | {r['e2e_tok_s']:.0f} | "
              f"{r['e2e_over_bare']:.2f} | {r['regions']} | {r['loads']} |" for r in res["rates"]]
    lines += ["", "bf16 vs fp32 on the same tokens (fp32's centre and theta "
              f"{b16['threshold']:.4f} for both): median relative activation change "
              f"{b16['relative_activation_change_median']:.4f}; centred cosine median "
              f"{b16['centred_cosine_median']:.5f} (1st percentile {b16['centred_cosine_p1']:.4f}); regions "
              f"{b16['regions_fp32']} (fp32) vs {b16['regions_bf16']} (bf16); exemplar-set Jaccard "
              f"{b16['exemplar_jaccard']:.3f}; tokens whose region has the same exemplar: "
              f"{b16['same_region_exemplar_share']}.", "",
             "Cost per token vs K (synthetic isotropic rows, d 640, theta 0.7: nearly every row new; batches of 4096): "
             "![](build_cost_vs_k.png)", "",
             "| tokens | K | µs/token | RSS (MB) | load |", "|---|---|---|---|---|"]
    lines += [f"| {r['tokens']} | {r['K']} | {r['us_per_token']:.1f} | {r['rss_mb']:.0f} | {r['loads']} |"
              for r in ks]
    (HERE / "results" / "build.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
