"""Steering with exemplars: add a region's direction during generation, and move one token between regions.

An exemplar is an observed activation, so its centred direction is a direction the model actually uses at that
layer. Steering adds it to the residual stream (:class:`Steer`, an edit for ``ep.studies.refusal.generate``);
strengths are in units of the typical centred activation norm at that layer, so "1.0" means "as large as a
typical token's own deviation from the centre". What steering did is measured, not eyeballed:

- concept presence in the steered text by an *independent reader* (:class:`Reader`): a logistic probe trained
  on labelled texts at another layer, reading the unsteered model's activations of the generated tokens;
- fluency as the perplexity of the generated tokens under the unsteered model (:func:`perplexity`).

Partition steering (:func:`toward_exemplar`, :func:`next_token_distribution`) rotates one token's centred
direction from its own region toward another exemplar, keeping its norm, and reads the next-token distribution.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression

from ..model.activations import decoder_layers


@dataclass
class Steer:
    """Add ``strength * unit * direction`` to the output of block ``layer`` at every position and step."""

    direction: torch.Tensor  # [d] unit
    strength: float          # in units of `unit`
    unit: float              # typical centred activation norm at this layer
    layer: int

    def __post_init__(self) -> None:
        self.direction = self.direction.float() / self.direction.float().norm()
        self.layers = (self.layer,)

    def __call__(self, hidden: torch.Tensor, layer: int) -> torch.Tensor:
        return hidden + (self.strength * self.unit * self.direction).to(hidden.device, hidden.dtype)


SPANISH = set("de la que el en y los se del las por un para con una su al es lo como más pero sus le ya o este sí "
              "porque esta entre cuando muy sin sobre también me hasta hay donde quien desde todo nos durante todos "
              "uno les ni contra otros ese eso ante ellos e esto mí antes algunos qué unos yo otro otras otra él tanto "
              "esa estos mucho quienes nada muchos cual poco ella estar estas algunas algo nosotros mi mis tú te ti tu "
              "tus ellas nosotras vosotros vosotras os mío mía míos mías tuyo tuya tuyos tuyas suyo suya".split())
CODE_MARKERS = ("def ", "return", "import ", "self.", "==", "()", "):", " = ", "[", "{", "#", "    ")


def marker_score(text: str, concept: str) -> float:
    """A transparent scorer in the official script's spirit: the share of words that are Spanish function words,
    or code-syntax markers per 100 characters."""
    if concept == "spanish":
        words = [w.strip(".,;:!?¡¿\"'()").lower() for w in text.split()]
        return sum(w in SPANISH for w in words) / max(1, len(words))
    if concept == "code":
        return 100 * sum(text.count(m) for m in CODE_MARKERS) / max(1, len(text))
    raise ValueError(f"no marker scorer for {concept!r} (spanish, code)")


def typical_norm(acts: torch.Tensor, centre: torch.Tensor) -> float:
    """Median ||x − c|| over rows of acts [N, d]: the unit of steering strength."""
    return float((acts.float() - centre.float()).norm(dim=1).median())


class Reader:
    """An independent concept reader: a logistic probe on token activations at its own layer.

    Trained on the tokens of positive and negative texts; a text's concept score is the mean probability over
    its tokens. It never sees the steering direction, only labelled text."""

    def __init__(self, pos: torch.Tensor, neg: torch.Tensor, c: float = 1.0, seed: int = 0):
        x = torch.cat([pos, neg]).double().numpy()                            # [Np + Nn, d]
        y = np.r_[np.ones(len(pos)), np.zeros(len(neg))]
        self.mean, self.scale = x.mean(0), x.std(0) + 1e-6
        self.probe = LogisticRegression(C=c, max_iter=2000, random_state=seed).fit((x - self.mean) / self.scale, y)

    def token_scores(self, acts: torch.Tensor) -> np.ndarray:
        """[N, d] -> [N] probability that each token belongs to a concept text."""
        return self.probe.predict_proba((acts.double().numpy() - self.mean) / self.scale)[:, 1]

    def text_scores(self, acts: torch.Tensor, doc: torch.Tensor, n_texts: int) -> np.ndarray:
        """Mean token probability per text: acts [N, d], doc [N] text index -> [n_texts] (NaN for an empty text)."""
        s, d = self.token_scores(acts), doc.numpy()
        total, count = np.bincount(d, weights=s, minlength=n_texts), np.bincount(d, minlength=n_texts)
        with np.errstate(invalid="ignore"):
            return total / count


@torch.no_grad()
def perplexity(model, prompts: Sequence[str], completions: Sequence[str]) -> np.ndarray:
    """Perplexity of each completion's tokens given its prompt, under the (unsteered) model. -> [n]"""
    tok = model.tokenizer
    out = np.full(len(prompts), np.nan)
    for i, (prompt, completion) in enumerate(zip(prompts, completions)):
        p = tok(prompt, add_special_tokens=False)["input_ids"]
        c = tok(completion, add_special_tokens=False)["input_ids"]
        if not c:
            continue
        ids = torch.tensor([p + c])
        with model.trace(ids):
            logits = model.lm_head.output.save()
        logp = torch.log_softmax(logits[0, len(p) - 1:-1].float(), dim=-1)    # [len(c), vocab]
        out[i] = float(torch.exp(-logp[torch.arange(len(c)), torch.tensor(c)].mean()))
    return out


def toward_exemplar(x: torch.Tensor, centre: torch.Tensor, target: torch.Tensor, amount: float) -> torch.Tensor:
    """Rotate x's centred direction toward the unit ``target`` by ``amount`` in [0, 1], keeping ||x − c||.

    amount 0 returns x; 1 puts x exactly on the target exemplar's ray (at its own distance from the centre)."""
    v = x.float() - centre.float()
    u = v / v.norm()
    w = (1 - amount) * u + amount * target.float()
    return centre.float() + v.norm() * w / w.norm()


@torch.no_grad()
def next_token_distribution(model, text: str, layer: int,
                            edit: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """Next-token probabilities after ``text`` [vocab]; ``edit`` maps the last position's activation [d] at
    ``layer`` to its replacement (None: unedited)."""
    ids = model.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    block = decoder_layers(model)[layer]
    with model.trace(ids):
        if edit is not None:
            hidden = block.output
            hidden[0, -1] = edit(hidden[0, -1])
        logits = model.lm_head.output.save()
    return torch.softmax(logits[0, -1].float(), dim=-1)
