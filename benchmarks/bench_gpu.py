"""
On a GPU: the builder against the official code, extraction against a bare forward, and a paper-scale projection.

    python benchmarks/bench_gpu.py              # on CUDA: full sizes -> results/gpu.{json,md}
    python benchmarks/bench_gpu.py --dry-run    # tiny sizes on the CPU (the default without CUDA; CI runs it)

1. Builder: ours (`DictionaryBuilder`, whose leader clustering screens in bf16 on Ampere+ and in fp32 on older GPUs,
   TF32 off either way: `ep.method._engine._ieee_fp32`) against the official `Dictionary.add_batch`, the same rows in
   the same batches: synthetic rows of width 2,304 with about 10^5 exemplars, and real rows (Gemma 3 270M, layer 9,
   extracted on the device). First batch and whole stream; identical exemplar sets are checked.
2. Extraction: `ep.token_activations` (stops after the layer) against a bare Hugging Face forward of the same
   tokenized batches through the whole model (what `output_hidden_states=True` code does), tokens per second.
3. Projection: a 10M-token build (the paper's scale) = extraction at the measured rate + the builder, whose cost per
   batch is fitted as a + b K (K the exemplars so far) with K growing as c n^alpha (fitted on the real stream) and
   summed to 10^7 rows. An extrapolation far past the measured range: an order of magnitude, not a promise.

What "the official on CUDA" is: the official `Dictionary` (ep/discovery/dictionary.py) is numpy code that moves its
two products, against the exemplars (`_nearest_exemplar`) and within a batch (`_pairwise_sim`), to torch on the GPU
in fp32 when its environment has torch and a GPU (`geometry.try_torch_gpu`); its per-row leader loop, heaps and
reservoirs stay on the host. So on a GPU machine give its venv a CUDA torch (`/tmp/official-venv/bin/pip install
torch numpy scipy`, set up as in bench_official.py). The worker reports which device the official code used; without
torch in its venv or without a GPU it is the CPU numpy code, and the results say so.
"""

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_official import WORKER as OFFICIAL_WORKER
from bench_official import clustered, official, run_info, theta_for

import ep
from ep.method.builder import DictionaryBuilder
from ep.method.calibration import Calibration, spherical_centre
from ep.show.notebook import machine

HERE = Path(__file__).parent
PAPER_TOKENS = 10_000_000
REPORT_DEVICE = '''
torch, device = importlib.import_module("ep.discovery.geometry").try_torch_gpu()  # what the official code will use
print(json.dumps({"device": str(device) if torch is not None else "cpu (numpy)"}), flush=True)
'''
WORKER = OFFICIAL_WORKER.replace("\nDictionary =", REPORT_DEVICE + "Dictionary =", 1)


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def ours(x: np.ndarray, centre: torch.Tensor, theta: float, batch: int, device) -> tuple[list, list, list]:
    """Our builder on `device` over the stream -> (seconds per batch, exemplars so far before each batch, exemplars)."""
    cal = Calibration(centre=centre, threshold=theta, percentile=float("nan"), n_tokens=0)
    b, times, ks = DictionaryBuilder(cal, chunk_size=batch, device=device), [], []
    n = x.shape[0]
    doc, pos = torch.arange(n) // 128, torch.arange(n) % 128
    for s in range(0, n, batch):
        ks.append(b.num_regions)
        sync()
        t = time.perf_counter()
        b.add_arrays(torch.from_numpy(x[s:s + batch]), doc[s:s + batch], pos[s:s + batch], pos[s:s + batch])
        sync()
        times.append(time.perf_counter() - t)
    return times, ks, b.snapshot().exemplar_index.tolist()


def compare(label: str, x: np.ndarray, frac: float, batch: int, device, worker, tmp: Path) -> dict:
    centre = spherical_centre(torch.from_numpy(x))
    np.save(tmp / "x.npy", x)
    np.save(tmp / "c.npy", centre.numpy())
    theta = theta_for(x, centre, frac)
    t_o, ks, ex_o = ours(x, centre, theta, batch, device)
    off = official(worker, {"data": str(tmp / "x.npy"), "centre": str(tmp / "c.npy"), "theta": theta, "batch": batch})
    row = {"data": label, "rows": x.shape[0], "d": x.shape[1], "theta": theta, "regions": len(ex_o),
           "identical": ex_o == off["exemplars"], "official_regions": len(off["exemplars"]),
           "ours_s": sum(t_o), "official_s": sum(off["times"]), "ours_first_s": t_o[0],
           "official_first_s": off["times"][0], "batch_s": t_o, "k_before": ks}
    row["speedup"], row["first_speedup"] = row["official_s"] / row["ours_s"], row["official_first_s"] / t_o[0]
    print(json.dumps({k: v for k, v in row.items() if k not in ("batch_s", "k_before")}), flush=True)
    return row


def tiny_model(folder: Path):
    """A random Gemma-3-shaped model (width 64, 4 layers) with a word-level tokenizer, saved and loaded like any
    checkpoint: the dry run needs no download and no converted model."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, PreTrainedTokenizerFast

    words = ["<pad>", "<bos>", "<eos>", "<unk>"] + [f"w{i}" for i in range(60)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>")
    config = Gemma3TextConfig(vocab_size=len(words), hidden_size=64, intermediate_size=128, num_hidden_layers=4,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
                              pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    Gemma3ForCausalLM(config).save_pretrained(folder)
    fast.save_pretrained(folder)
    texts = [" ".join(f"w{(7 * d + 3 * i) % 60}" for i in range(40 + d % 30)) for d in range(48)]
    return ep.load_model(str(folder), device="cpu")[0], texts, 2


@torch.no_grad()
def extraction(model, texts: list[str], layer: int, batch: int = 16, context: int = 128) -> dict:
    """Tokens per second: ep.token_activations against a bare forward of the whole model (same batches)."""
    ep.token_activations(model, texts[:batch], layer, batch_size=batch, context_length=context, progress=False)
    sync()
    t = time.perf_counter()
    n = len(ep.token_activations(model, texts, layer, batch_size=batch, context_length=context, progress=False))
    sync()
    ours_s = time.perf_counter() - t
    hf, dev = model._module, next(model._module.parameters()).device
    encoded = [model.tokenizer(texts[s:s + batch], return_tensors="pt", padding=True, truncation=True,
                               max_length=context) for s in range(0, len(texts), batch)]
    hf(**{k: v.to(dev) for k, v in encoded[0].items()})
    sync()
    t = time.perf_counter()
    for enc in encoded:
        hf(**{k: v.to(dev) for k, v in enc.items()})
    sync()
    bare_s = time.perf_counter() - t
    return {"tokens": n, "ours_s": ours_s, "bare_forward_s": bare_s, "ours_tok_s": n / ours_s,
            "bare_tok_s": sum(int(e["attention_mask"].sum()) for e in encoded) / bare_s}


def project(row: dict, batch: int, tok_s: float, tokens: int = PAPER_TOKENS) -> dict:
    """Seconds for a `tokens`-token build: extraction at tok_s plus the builder extrapolated from `row`'s stream."""
    t, k = np.array(row["batch_s"][1:]), np.array(row["k_before"][1:], dtype=float)  # the first call apart
    a, b = np.polyfit(k, t, 1) if len(t) > 1 and np.ptp(k) > 0 else (float(t.mean()) if len(t) else 0.0, 0.0)
    n = np.arange(1, len(row["k_before"])) * batch
    alpha, logc = np.polyfit(np.log(n), np.log(np.maximum(k, 1)), 1) if len(n) > 1 else (1.0, 0.0)
    ends = np.arange(batch, tokens + batch, batch)
    build = float(np.sum(max(a, 0.0) + max(b, 0.0) * np.exp(logc) * ends ** min(alpha, 1.0)))
    return {"tokens": tokens, "extraction_s": tokens / tok_s, "build_s": build, "cost_per_batch": [a, b],
            "regions_growth": [float(np.exp(logc)), float(alpha)], "total_h": (tokens / tok_s + build) / 3600}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dry-run", action="store_true", help="tiny sizes on the CPU (automatic without CUDA)")
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--rows", type=int, default=200_000, help="synthetic rows (about half become exemplars)")
    ap.add_argument("--docs", type=int, default=1000, help="Wikipedia documents for the real rows")
    ap.add_argument("--official-src", default="/tmp/official")
    ap.add_argument("--official-python", default="/tmp/official-venv/bin/python")
    ap.add_argument("--out", default=None, help="results name (default gpu, or gpu_dry_run; '' writes nothing)")
    args = ap.parse_args()
    dry = args.dry_run or not torch.cuda.is_available()
    device = torch.device("cpu" if dry else "cuda")
    batch, rows = (256, 3000) if dry else (args.batch, args.rows)
    tmp = Path(tempfile.mkdtemp())
    have_official = Path(args.official_python).exists() and Path(args.official_src, "ep").exists()
    worker = subprocess.Popen([args.official_python, "-c", WORKER, args.official_src], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True) if have_official else None
    official_device = json.loads(worker.stdout.readline())["device"] if worker else "not installed"
    res = {**run_info(), "dry_run": dry, "machine": machine(), "device": str(device), "batch": batch,
           "official_device": official_device, "builder": [], "start": time.strftime("%Y-%m-%dT%H:%M:%S")}
    print(json.dumps({k: res[k] for k in ("dry_run", "device", "official_device")}), flush=True)

    if dry:
        model, texts, layer = tiny_model(tmp / "tiny")
    else:
        model, _ = ep.load_model("gemma-3-270m")
        texts, layer = list(ep.data.corpus(max_docs=args.docs)), 9
    res["extraction"] = extraction(model, texts, layer)
    print(json.dumps(res["extraction"]), flush=True)
    real = ep.token_activations(model, texts, layer, progress=False).acts.float().numpy()
    width = 256 if dry else 2304
    shapes = [("synthetic", clustered(rows, width, max(8, rows // 40))),
              ("real rows" + (" (tiny random model)" if dry else ": Gemma 3 270M L9, Wikipedia"), real)]
    for label, x in shapes if worker else []:
        res["builder"].append(compare(label, x, 0.5, batch, device, worker, tmp))
    if worker:
        worker.stdin.close()
        worker.wait()
        res["projection"] = project(res["builder"][-1], batch, res["extraction"]["ours_tok_s"])
        print(json.dumps(res["projection"]), flush=True)
    name = args.out if args.out is not None else ("gpu_dry_run" if dry else "gpu")
    if name:
        (HERE / "results" / f"{name}.json").write_text(json.dumps(res, indent=2) + "\n")
        (HERE / "results" / f"{name}.md").write_text(report(res) + "\n")


def report(res: dict) -> str:
    m, e = res["machine"], res["extraction"]
    lines = [f"# On a GPU: builder vs official, extraction vs a bare forward{' (DRY RUN: tiny, CPU)' * res['dry_run']}",
             "", f"`{res['command']}` at commit {res['commit']}, {res['start']}. {m['gpu'] or m['cpu']}, torch "
             f"{m['torch']}, device {res['device']}; the official code ran on: **{res['official_device']}**.", "",
             f"Extraction: {e['tokens']} tokens, ep.token_activations {e['ours_tok_s']:.0f} tok/s, bare forward "
             f"{e['bare_tok_s']:.0f} tok/s.", "",
             "| data | rows x d | theta | regions | identical | ours (s) | official (s) | x | first call ours / "
             "official (s) |", "|---|---|---|---|---|---|---|---|---|"]
    for r in res["builder"]:
        lines.append(f"| {r['data']} | {r['rows']} x {r['d']} | {r['theta']:.3f} | {r['regions']} | "
                     f"{'yes' if r['identical'] else 'NO: ' + str(r['official_regions'])} | {r['ours_s']:.2f} | "
                     f"{r['official_s']:.2f} | {r['speedup']:.1f} | {r['ours_first_s']:.3f} / "
                     f"{r['official_first_s']:.3f} |")
    if "projection" in res:
        p = res["projection"]
        lines += ["", f"Projected {p['tokens']:,}-token build: extraction {p['extraction_s'] / 3600:.2f} h + builder "
                  f"{p['build_s'] / 3600:.2f} h = {p['total_h']:.2f} h (builder cost per batch "
                  f"{p['cost_per_batch'][0]:.3g} + {p['cost_per_batch'][1]:.3g} K s, regions "
                  f"{p['regions_growth'][0]:.3g} n^{p['regions_growth'][1]:.2f}, fitted on the real rows: "
                  "an extrapolation)."]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
