"""Sparse autoencoders to compare EP against: train a TopK SAE offline, or load Gemma Scope.

An SAE learns an overcomplete basis by gradient descent: encode f = TopK(W_enc (x - b_dec) + b_enc),
decode x_hat = W_dec f + b_dec, minimise ||x - x_hat||^2 over many passes of an activation set.
EP needs one pass and no gradients; to compare the two fairly we train the SAE on *the same tokens*
the EP dictionary was built on and count what each consumed.

- :func:`train_topk_sae`: a sae-lens ``TopKTrainingSAE`` trained by sae-lens' own ``SAETrainer`` on
  activations already in memory (no model, no hub), epochs over a shuffled copy; returns the SAE and
  a :class:`SAETraining` record (tokens processed, steps, seconds, FLOPs estimate, fit quality).
- :func:`load_pretrained`: an SAE release through sae-lens (``GEMMA_SCOPE`` at paper scale; needs the hub).
- :func:`encode`, :func:`top1`, :func:`explained_variance`: batched use of any sae-lens SAE.
- :func:`closest_width`, :func:`width_matched_sae_id`: the SAE's width matched to the number of EP regions in
  log space, as the official code does (``ep/saebench_sota.closest_width`` picks 4k, 16k or 65k, and
  ``scripts/compare_sae.pick_release_for_width`` the released SAE nearest that width at the layer).
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import torch
from tqdm.auto import tqdm

# Paper scale: Gemma Scope's canonical 16k-wide residual SAE at layer 20 of Gemma-2-2B (block 20's
# output, which is what ``ep`` calls layer 20). Its model card gives 4B training tokens for the 2^14-wide
# SAEs of Gemma 2 2B PT (huggingface.co/google/gemma-scope, "Tokens" column).
GEMMA_SCOPE = ("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical")
GEMMA_SCOPE_TRAINING_TOKENS = 4_000_000_000


SAEBENCH_WIDTHS = (4096, 16384, 65536)  # the widths SAEBench publishes baselines at (official saebench_sota.WIDTHS)
_WIDTH_TAGS = {"4k": 4096, "16k": 16384, "32k": 32768, "65k": 65536, "131k": 131072, "262k": 262144,
               "524k": 524288, "1m": 1048576}  # Gemma Scope's width names


def closest_width(n_regions: int, widths=SAEBENCH_WIDTHS) -> int:
    """The width nearest ``n_regions`` in log2 (the first of a tie), from ``widths``."""
    n = max(int(n_regions), 1)
    return min(widths, key=lambda w: abs(math.log2(w) - math.log2(n)))


def width_matched_sae_id(release: str, layer: int, n_regions: int) -> str:
    """The canonical ``layer_{layer}/width_*/canonical`` SAE of a sae-lens release whose width is nearest
    ``closest_width(n_regions)`` (the official build passes that width to compare_sae as ``--n-concepts``)."""
    from sae_lens.loading.pretrained_saes_directory import get_pretrained_saes_directory

    ids = {_WIDTH_TAGS[tag]: f"layer_{layer}/width_{tag}/canonical" for tag in _WIDTH_TAGS}
    available = {w: i for w, i in ids.items() if i in get_pretrained_saes_directory()[release].saes_map}
    if not available:
        raise ValueError(f"{release} has no canonical SAE at layer {layer}")
    return available[closest_width(closest_width(n_regions), tuple(available))]


@dataclass
class SAETraining:
    """What training an SAE cost and how well it fits."""

    d_in: int
    width: int
    k: int
    steps: int
    batch_size: int
    tokens_unique: int  # rows of the training set
    tokens_processed: int  # rows seen by the optimiser (steps x batch): the training compute
    epochs: float  # tokens_processed / tokens_unique
    seconds: float
    flops: float  # estimate: 6 x (2 d F) per processed token (dense forward + backward, see sae_flops)
    final_mse: float  # mean per-token squared error over the last 10% of steps (input scale)
    explained_variance: float  # on the training rows, after training
    dead_fraction: float  # features silent for the last quarter of training (sae-lens' dead_feature_window)

    def to_dict(self) -> dict:
        return asdict(self)


def sae_flops(d_in: int, width: int, tokens: int) -> float:
    """Training FLOPs estimate: sae-lens' dense TopK SAE does two d x F matmuls a token (encode and
    decode, 2 d F FLOPs each, so 4 d F forward) and the backward pass costs about twice the forward:
    ~ 12 d F per token. Top-k selection, the auxiliary dead-feature loss and Adam are left out (so this
    is a lower bound)."""
    return 12.0 * d_in * width * tokens


def _batches(acts: torch.Tensor, batch_size: int, seed: int) -> Iterator[torch.Tensor]:
    """Endless [batch, d] batches: each epoch a fresh permutation of the rows (the last partial batch
    of an epoch is dropped, so every batch has ``batch_size`` rows)."""
    g = torch.Generator().manual_seed(seed)
    n = acts.shape[0]
    while True:
        perm = torch.randperm(n, generator=g)
        for s in range(0, n - batch_size + 1, batch_size):
            yield acts[perm[s:s + batch_size]]


def train_topk_sae(
    acts, width: int, k: int = 32, *, steps: int = 300, batch_size: int = 512, lr: float = 5e-4,
    seed: int = 0, device: str = "cpu", progress: bool = True,
):
    """Train a TopK SAE (sae-lens) on acts [N, d] held in memory → (TopKTrainingSAE, SAETraining).

    Inputs are rescaled so the mean norm is sqrt(d) (sae-lens' ``expected_average_only_in``; the scale
    is folded back into the weights at the end, so the returned SAE takes raw activations), and the
    decoder bias starts at the data mean, which matters for residual streams with a large mean.
    """
    from sae_lens import SAETrainer, TopKTrainingSAE, TopKTrainingSAEConfig
    from sae_lens.config import SAETrainerConfig

    x = torch.as_tensor(acts).float().cpu()  # [N, d]
    n, d = x.shape
    if batch_size > n:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training rows")
    if not 0 < k <= width:
        raise ValueError(f"need 0 < k <= width, got k={k}, width={width}")
    torch.manual_seed(seed)
    cfg = TopKTrainingSAEConfig(d_in=d, d_sae=width, k=k, device=device,
                                normalize_activations="expected_average_only_in")
    sae = TopKTrainingSAE(cfg)
    # constant lr, then a linear decay to 0 over the last 20% of steps
    trainer_cfg = SAETrainerConfig(total_training_samples=steps * batch_size, train_batch_size_samples=batch_size,
                                   lr=lr, lr_end=lr, lr_scheduler_name="constant", lr_decay_steps=steps // 5,
                                   device=device, dead_feature_window=max(1, min(1000, steps // 4)),
                                   feature_sampling_window=max(1, steps // 2))
    trainer = SAETrainer(cfg=trainer_cfg, sae=sae, data_provider=iter(()))
    scale = math.sqrt(d) / float(x.norm(dim=1).mean())  # sae-lens' formula, over all rows (no sampling)
    trainer.activation_scaler.scaling_factor = scale
    with torch.no_grad():
        sae.b_dec.copy_(x.mean(0) * scale)

    # SAETrainer.fit() without its progress bar: the same public steps, so we can record the loss
    data, losses = _batches(x, batch_size, seed), []
    start = time.perf_counter()
    with torch.enable_grad():
        for _ in tqdm(range(steps), desc="TopK SAE", disable=not progress):
            trainer.maybe_reset_sparsity()
            out = trainer.step(next(data))
            trainer.n_training_steps += 1
            losses.append(out.losses["mse_loss"].item() / scale**2)  # per token, back on the input scale
    sae.fold_activation_norm_scaling_factor(scale)  # the SAE now takes raw activations
    trainer.activation_scaler.scaling_factor = None
    trainer.set_final_sae_metadata()
    seconds = time.perf_counter() - start
    sae.eval()
    processed = trainer.n_training_samples
    tail = losses[-max(1, len(losses) // 10):]
    record = SAETraining(
        d_in=d, width=width, k=k, steps=trainer.n_training_steps, batch_size=batch_size, tokens_unique=n,
        tokens_processed=processed, epochs=processed / n, seconds=seconds, flops=sae_flops(d, width, processed),
        final_mse=float(np.mean(tail)), explained_variance=explained_variance(sae, x),
        dead_fraction=float(trainer.dead_neurons.float().mean()),
    )
    return sae, record


def load_pretrained(release: str = GEMMA_SCOPE[0], sae_id: str = GEMMA_SCOPE[1], device: str = "cpu"):
    """A released SAE through sae-lens (downloads from the Hugging Face hub on first use)."""
    from sae_lens import SAE

    return SAE.from_pretrained(release, sae_id, device=device)


@torch.no_grad()
def encode(sae, acts, batch_size: int = 2048) -> torch.Tensor:
    """acts [N, d] raw → feature activations [N, F] float32 on the CPU, in batches."""
    x = torch.as_tensor(acts)
    dev, dtype = sae.W_enc.device, sae.W_enc.dtype
    out = [sae.encode(x[s:s + batch_size].to(dev, dtype)).float().cpu() for s in range(0, x.shape[0], batch_size)]
    return torch.cat(out) if out else torch.zeros(0, sae.cfg.d_sae)


@torch.no_grad()
def top1(sae, acts, batch_size: int = 2048) -> np.ndarray:
    """The most active feature of each row → [N] int64 (-1 where no feature fires): the l0 = 1 code."""
    ids = []
    for s in range(0, len(acts), batch_size):
        f = encode(sae, acts[s:s + batch_size], batch_size)  # [b, F]
        val, idx = f.max(dim=1)
        ids.append(torch.where(val > 0, idx, -1))
    return torch.cat(ids).numpy() if ids else np.zeros(0, np.int64)


@torch.no_grad()
def explained_variance(sae, acts, batch_size: int = 2048) -> float:
    """1 - Σ||x - x_hat||² / Σ||x - mean||² over acts [N, d] (1 = perfect reconstruction)."""
    x = torch.as_tensor(acts).float()
    mean = x.mean(0)
    err = tot = 0.0
    for s in range(0, x.shape[0], batch_size):
        xb = x[s:s + batch_size]
        xh = sae.decode(sae.encode(xb.to(sae.W_enc.device, sae.W_enc.dtype))).float().cpu()
        err += float(((xb - xh) ** 2).sum())
        tot += float(((xb - mean) ** 2).sum())
    return 1.0 - err / tot
