"""
Labels for regions written by a local chat model, and scored the way SAEBench's autointerp scores them.

1. **Label.** The chat model (by default the embedded ``qwen2.5-coder-0.5b-instruct``, no API key) reads a
   region's top contexts (its exemplar and nearest stored members) with the member token marked ``<<like
   this>>`` and answers with a short label. Three worked example turns (:data:`LABEL_SHOTS`) show it the form of
   an answer: given a list of example labels inside the instruction, a 0.5B model copies the list.
2. **Judge.** Given only a label, the same model decides for held-out contexts whether the marked token fits:
   members of the region (held-out tokens the dictionary assigns to it) and non-members (tokens assigned to its
   nearest regions, and tokens at random). The answer is read from one forward pass: the logit of "Yes" minus
   the logit of "No" for the reply's first token (no sampling). The judge is asked whether *the word* belongs to
   the label's category, after four worked turns (:data:`JUDGE_SHOTS`); the context is left out. Both choices
   were made on a fixed set of obvious (label, word) cases (:data:`OBVIOUS`), never on a dictionary's
   regions. There a 0.5B judge shown the whole context ranked fitting words only a little above unfitting ones,
   with nearly the same margin for every case; asked about the word alone it did much better, and the worked
   turns added a little more.
3. **Score.** Per region, the AUROC of the Yes-No margin against membership: the main score, free of any
   threshold. A small judge's margins are all on one side of 0 (it leans to "Yes"), so a fixed threshold at 0
   would make it say Yes to every context. For a balanced accuracy ((TPR + TNR) / 2: 0.5 is chance whatever the
   mix of members) the judge's Yes threshold is therefore *calibrated without the answers*: the median margin
   over all contexts judged under the same set of labels (one run, one condition). Membership is never used, so
   the threshold cannot be tuned toward the truth; and since the probes are about half members
   (``n_members = n_near + n_random`` by default), "Yes for the better-fitting half" matches their base rate.
   Two baselines are judged on the very same contexts: the label of another sampled region (shuffled), and the
   region's logit-lens tokens as a label (``ep.model.lens``).

Every model answer is cached in a JSON file keyed by model, worked turns and prompt, so a rerun costs nothing (the
model is not even loaded when every answer is cached). The worked turns are the same for every prompt, so the
judge runs them once and keeps their keys and values (a prefix cache): each context then costs only its own
few tokens.
"""

from __future__ import annotations

import copy
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from ..method.device import default_device, default_dtype
from ..method.metrics import auroc
from ..model.generation import greedy
from ..model.loading import load_model, transformers_model

LABEL_INSTRUCTION = (
    "Each line below is a snippet of text with one word marked like <<this>>:\n{snippets}\n\nMarked words: {tokens}\n"
    "What do the marked words have in common? Reply with a short label of one to five words, and nothing else.")
JUDGE_INSTRUCTION = "Category: {label}\nWord: {token}\nDoes the word belong to the category? Answer Yes or No."
SYSTEM = "You are a concise assistant."  # shorter than a template's default system prompt: fewer tokens to run


def _label_shot(contexts: list[tuple[str, str, str]], label: str) -> tuple[str, str]:
    tokens = ", ".join(dict.fromkeys(repr(t) for _, t, _ in contexts))
    return LABEL_INSTRUCTION.format(tokens=tokens, snippets="\n".join(f"- {left}<<{t}>>{right}"
                                                                      for left, t, right in contexts)), label


# Worked turns (instruction, answer) shown before every prompt; the judge's use no category of OBVIOUS.
LABEL_SHOTS = (
    _label_shot([("she wore a ", "red", " dress to"), ("under a clear ", "blue", " sky"),
                 ("painted the door ", "green", " last year")], "colours"),
    _label_shot([("after lunch he ", "walked", " to the shop"), ("the children ", "ran", " across the field"),
                 ("we ", "drove", " home in the rain")], "verbs of motion"),
    _label_shot([("early in ", "the", " morning"), ("and ", "the", " house was empty"),
                 ("she saw ", "the", " dog bark")], "the word 'the'"),
)
JUDGE_SHOTS = tuple((JUDGE_INSTRUCTION.format(label=label, token=repr(word)), answer) for label, word, answer in (
    ("colours", "red", "Yes"), ("colours", "house", "No"), ("numbers", "seven", "Yes"), ("numbers", "walk", "No")))


# Obvious (label, context, fits?) cases: the judge's prompt was chosen on these, never on a dictionary's regions;
# tests/test_labels.py asserts the judge separates them. A judge that cannot do this cannot score labels.
OBVIOUS = [
    ("years", "It was founded in <<1901>> by", True), ("years", "The <<cat>> sat on the mat", False),
    ("animals", "The <<cat>> sat on the mat", True), ("animals", "It was founded in <<1901>> by", False),
    ("names of cities", "She moved to <<Paris>> in May", True), ("names of cities", "She moved <<to>> Paris", False),
    ("verbs of motion", "The boy <<ran>> home", True), ("verbs of motion", "The <<blue>> car", False),
    ("the word 'the'", "He saw <<the>> dog", True), ("the word 'the'", "He <<saw>> the dog", False),
    ("closing brackets", "f(x<<)>> + 1", True), ("closing brackets", "the <<sun>> rose", False),
    ("years", "In <<1999>>, the", True), ("animals", "a <<dog>> barked", True), ("animals", "a dog <<barked>>", False),
    ("names of cities", "<<London>> is big", True), ("names of cities", "London <<is>> big", False),
    ("body parts", "she broke her <<arm>> skiing", True), ("body parts", "she broke her arm <<skiing>>", False),
    ("school and education", "children go to <<school>> at five", True),
    ("school and education", "the <<river>> flooded", False),
    ("weather", "heavy <<rain>> fell all night", True), ("weather", "heavy rain <<fell>> all night", False),
    ("food", "we ate <<bread>> and cheese", True), ("food", "we <<ate>> bread and cheese", False),
]


def marked(left: str, token: str, right: str) -> str:
    """A context as one line with its token marked <<like this>>."""
    return f"{left}<<{token}>>{right}".replace("\n", " ")


class Cache:
    """A JSON file of model answers keyed by (kind, model and its dtype, prompt); missing file = empty cache."""

    def __init__(self, path: str | Path | None):
        self.path = None if path is None else Path(path)
        self.answers = json.loads(self.path.read_text()) if self.path and self.path.exists() else {}

    @staticmethod
    def key(kind: str, model: str, prompt: str) -> str:
        return hashlib.sha256("\x00".join((kind, model, prompt)).encode()).hexdigest()[:24]

    def save(self) -> None:
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_text(json.dumps(self.answers, indent=0, sort_keys=True))


def chat_turns(tokenizer, instructions: list[str], shots=(), system: str = SYSTEM) -> tuple[str, list[str]]:
    """The worked turns as one prefix (system prompt and ``shots``' (instruction, answer) turns, in the tokenizer's
    own chat template), and each instruction's user turn after it, open for the reply: prefix + turn is the
    whole prompt."""
    head = [{"role": "system", "content": system}]
    for question, answer in shots:
        head += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    prefix = tokenizer.apply_chat_template(head, tokenize=False)
    whole = [tokenizer.apply_chat_template(head + [{"role": "user", "content": t}], tokenize=False,
                                           add_generation_prompt=True) for t in instructions]
    if not all(w.startswith(prefix) for w in whole):
        raise ValueError("this chat template does not write earlier turns as a fixed prefix")
    return prefix, [w[len(prefix):] for w in whole]


class ChatModel:
    """The labeller and judge: a chat model loaded on first use (not at all when the cache holds every answer)."""

    def __init__(self, name: str = "qwen2.5-coder-0.5b-instruct", cache: Cache | None = None,
                 loader: Callable = load_model, batch_size: int = 16, dtype: torch.dtype | None = None):
        self.name, self.cache, self.loader, self.batch_size = name, cache or Cache(None), loader, batch_size
        self.dtype = dtype or default_dtype(default_device())  # bf16 and fp32 answer differently: part of the key
        self._model = None
        self._prefixes: dict[str, tuple] = {}  # worked turns' text -> (token count, their keys and values)

    @property
    def model(self):
        if self._model is None:
            self._model = self.loader(self.name, dtype=self.dtype)[0]
        return self._model

    def _cached(self, kind: str, instructions: list[str], compute, progress: bool, desc: str, shots=()) -> list:
        turns = json.dumps(shots)  # the worked turns are part of the prompt, hence of the key
        model = f"{self.name} {str(self.dtype).removeprefix('torch.')}"
        keys = [Cache.key(kind, model, turns + "\x00" + text) for text in instructions]
        first: dict[str, int] = {}  # each distinct prompt once
        for i, k in enumerate(keys):
            first.setdefault(k, i)
        todo = [k for k in first if k not in self.cache.answers]
        for s in tqdm(range(0, len(todo), self.batch_size), desc=desc, disable=not progress or not todo):
            chunk = todo[s:s + self.batch_size]
            for k, answer in zip(chunk, compute([instructions[first[k]] for k in chunk])):
                self.cache.answers[k] = answer
        if todo:
            self.cache.save()
        return [self.cache.answers[k] for k in keys]

    def write(self, instructions: list[str], max_new_tokens: int = 16, progress: bool = True,
              shots=LABEL_SHOTS) -> list[str]:
        """Greedy replies to ``instructions`` after the worked turns ``shots``, cleaned by :func:`clean_label` (the
        marked words an instruction lists name a reply that has no word in it)."""
        def compute(chunk):
            prefix, turns = chat_turns(self.model.tokenizer, chunk, shots)
            out = greedy(self.model, [prefix + t for t in turns], max_new_tokens=max_new_tokens,
                         batch_size=len(chunk), progress=False)
            return [clean_label(t) for t in out.texts(self.model.tokenizer)]
        answers = self._cached("write", instructions, compute, progress, "label", shots)
        return [clean_label(a, marked_words(t)) for a, t in zip(answers, instructions)]  # cached answers too

    def _prefix(self, hf, tok, prefix: str) -> tuple:
        """The worked turns run once: (their token count, their keys and values)."""
        if prefix not in self._prefixes:
            ids = tok(prefix, return_tensors="pt", add_special_tokens=False)["input_ids"].to(hf.device)
            self._prefixes[prefix] = ids.shape[1], hf(input_ids=ids, use_cache=True).past_key_values
        return self._prefixes[prefix]

    @torch.no_grad()
    def yes_margin(self, instructions: list[str], progress: bool = True, shots=JUDGE_SHOTS) -> np.ndarray:
        """logit("Yes") - logit("No") for the first token of the reply to each instruction, after ``shots``."""
        def compute(chunk):
            tok, hf = self.model.tokenizer, transformers_model(self.model)
            yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
            prefix, turns = chat_turns(tok, chunk, shots)
            n_prefix, past = self._prefix(hf, tok, prefix)
            past = copy.deepcopy(past)  # a forward appends to the cache: keep the prefix's own clean
            past.batch_repeat_interleave(len(chunk))
            enc = tok(turns, return_tensors="pt", padding=True, padding_side="right", add_special_tokens=False)
            mask = enc["attention_mask"]  # [b, n]; right padding: a real token never sees a pad (causal)
            positions = n_prefix + torch.arange(mask.shape[1]).expand_as(mask)
            hidden = hf.base_model(input_ids=enc["input_ids"].to(hf.device), past_key_values=past,
                                   attention_mask=torch.cat([torch.ones(len(chunk), n_prefix, dtype=mask.dtype),
                                                             mask], 1).to(hf.device),
                                   position_ids=positions.to(hf.device)).last_hidden_state  # [b, n, d]
            last = hidden[torch.arange(len(chunk)), mask.sum(1) - 1]  # [b, d]: each reply's first position
            logits = hf.get_output_embeddings()(last).float()  # [b, vocab]
            return (logits[:, yes] - logits[:, no]).tolist()
        return np.array(self._cached("judge", instructions, compute, progress, "judge", shots), dtype=np.float64)


def clean_label(text: str, marked: str = "") -> str:
    """A reply's first non-empty line, without a 'Label:' prefix, a final full stop or quotes around it all (quotes
    inside stay: "the word 'A'").

    A reply with no letter or digit in it is no label. A small model writes one when the marked words are
    punctuation: asked what ``'-'`` in *child<<->>led*, *event<<->>related* ... have in common, it echoes the mark
    back (``- -``, or ``'-'``, which the quote stripping would leave as ``-``). Given ``marked`` (the marked words
    as the instruction lists them, :func:`marked_words`), such a reply becomes "the mark '-'", which is what it
    says, in the form of the worked turn "the word 'the'"; without them, ""."""
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    line = line.removeprefix("Label:").removeprefix("label:").strip(" *`").rstrip(".").strip()
    while len(line) > 1 and line[0] == line[-1] and line[0] in "\"'":
        line = line[1:-1].strip()
    if any(c.isalnum() for c in line):
        return line
    return f"the mark {marked}" if marked else ""


def marked_words(instruction: str) -> str:
    """The marked words a labelling instruction lists ("'-', ','"), or "" if it lists none."""
    head = "\nMarked words: "
    return instruction.split(head, 1)[1].split("\n", 1)[0].strip() if head in instruction else ""


def label_instruction(dictionary, k: int, n_contexts: int = 8, width: int = 60) -> str:
    """The labelling prompt of region k: its exemplar and nearest stored members, the token marked."""
    r = dictionary.region(k)
    contexts = [c for c in [r.exemplar, *r.nearest] if c.text][:n_contexts]
    if not contexts:
        raise ValueError(f"region {k} keeps no context text (build it with ep.build, or use with_contexts)")
    clip = lambda left, tok, right: marked(left[-width:], tok, right[:width])
    tokens = ", ".join(dict.fromkeys(repr(c.text[1].strip()) for c in contexts))
    return LABEL_INSTRUCTION.format(tokens=tokens, snippets="\n".join(f"- {clip(*c.text)}" for c in contexts))


def lens_label(tokens: list[str], n: int = 5) -> str:
    """Logit-lens tokens as a label: 'tokens such as "a", "b", "c"'."""
    shown = [t.strip() for t in tokens if t.strip()][:n]
    return "tokens such as " + ", ".join(json.dumps(t, ensure_ascii=False) for t in shown)


@dataclass
class Probe:
    """One held-out context shown to the judge."""
    region: int        # the region whose label is judged
    text: str          # the context, token marked
    member: bool       # does the dictionary assign this token to the region?
    kind: str          # "member", "near" (assigned to one of the region's nearest regions) or "random"


def heldout_probes(dictionary, acts, lookup, regions, n_members: int = 4, n_near: int = 2, n_random: int = 2,
                   neighbours: int = 5, seed: int = 0, width: int = 60) -> list[Probe]:
    """
    Held-out contexts for each region in ``regions``: up to ``n_members`` tokens of ``acts`` (an
    ActivationBatch of text the build never saw) assigned to it, ``n_near`` assigned to one of its
    ``neighbours`` nearest regions, and ``n_random`` tokens at random from other regions.
    ``lookup(doc, pos) -> (left, token, right)`` gives the text of a held-out token.
    """
    assigned, _ = dictionary.assign(acts.acts)
    rng = np.random.default_rng(seed)
    pick = lambda pool, n: rng.choice(pool, size=min(n, len(pool)), replace=False) if len(pool) else pool
    probes = []
    for k in regions:
        near_ids, _ = dictionary.neighbours(int(k), neighbours)
        groups = {"member": np.flatnonzero(assigned == k), "near": np.flatnonzero(np.isin(assigned, near_ids)),
                  "random": np.flatnonzero(assigned != k)}
        for kind, n in (("member", n_members), ("near", n_near), ("random", n_random)):
            for i in pick(groups[kind], n):
                left, tok, right = lookup(int(acts.doc[i]), int(acts.pos[i]))
                probes.append(Probe(int(k), marked(left[-width:], tok, right[:width]), kind == "member", kind))
    return probes


def balanced_accuracy(member: np.ndarray, says_yes: np.ndarray) -> float:
    """(true-positive rate + true-negative rate) / 2; NaN without both classes."""
    member, says_yes = np.asarray(member, bool), np.asarray(says_yes, bool)
    if member.all() or not member.any():
        return float("nan")
    return float((says_yes[member].mean() + (~says_yes[~member]).mean()) / 2)


def marked_token(text: str) -> str:
    """The marked token of a context, quoted: ``'a <<cat>> sat'`` -> ``"'cat'"``."""
    return repr(text.split("<<", 1)[1].rsplit(">>", 1)[0].strip())


def judge_instruction(label: str, text: str) -> str:
    """The judge's question for one context (``text``, its token marked) under ``label``."""
    return JUDGE_INSTRUCTION.format(label=label, token=marked_token(text))


def score(judge: ChatModel, probes: list[Probe], labels: dict[int, str], progress: bool = True,
          threshold: float | None = None) -> dict[int, dict]:
    """Judge every probe against its region's label in ``labels``: {region: {"auroc", "balanced_accuracy",
    "yes_rate", "threshold", "margins"}}. The judge says Yes when its margin is above ``threshold``; None: the
    median margin over all of ``probes`` (calibrated on the judge's answers, never on membership)."""
    margins = judge.yes_margin([judge_instruction(labels[p.region], p.text) for p in probes], progress=progress)
    cut = float(np.median(margins)) if threshold is None else float(threshold)
    out = {}
    for k in dict.fromkeys(p.region for p in probes):
        idx = [i for i, p in enumerate(probes) if p.region == k]
        member, margin = np.array([probes[i].member for i in idx]), margins[idx]
        both = member.any() and not member.all()
        out[k] = {"auroc": auroc(member, margin) if both else float("nan"),
                  "balanced_accuracy": balanced_accuracy(member, margin > cut),
                  "yes_rate": float((margin > cut).mean()), "threshold": cut, "margins": margin.tolist()}
    return out


def obvious_auroc(judge: ChatModel, shots=JUDGE_SHOTS) -> float:
    """The judge's AUROC on :data:`OBVIOUS`: how well it tells fitting from unfitting words when the label is right."""
    margins = judge.yes_margin([judge_instruction(label, text) for label, text, _ in OBVIOUS], progress=False,
                               shots=shots)
    return auroc(np.array([fits for *_, fits in OBVIOUS]), margins)


def shuffled(labels: dict[int, str], seed: int = 0) -> dict[int, str]:
    """Each region gets another region's label (a random derangement of the sampled regions' labels)."""
    ids = list(labels)
    if len(ids) < 2:
        raise ValueError("shuffling needs at least two labelled regions")
    rng = np.random.default_rng(seed)
    while True:
        perm = rng.permutation(len(ids))
        if not (perm == np.arange(len(ids))).any():
            return {k: labels[ids[j]] for k, j in zip(ids, perm)}


def sample_regions(dictionary, acts, n: int, min_heldout: int = 2, seed: int = 0) -> np.ndarray:
    """``n`` regions at random among those with at least ``min_heldout`` held-out members in ``acts``
    (a region with no held-out member cannot be scored); sorted ids."""
    assigned, _ = dictionary.assign(acts.acts)
    counts = np.bincount(assigned, minlength=len(dictionary))
    eligible = np.flatnonzero(counts >= min_heldout)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(eligible, size=min(n, len(eligible)), replace=False))


def paired_bootstrap(a: np.ndarray, b: np.ndarray, n: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over regions (NaN pairs dropped) and its 95% bootstrap interval, resampling regions."""
    diff = np.asarray(a, float) - np.asarray(b, float)
    diff = diff[~np.isnan(diff)]
    if not len(diff):
        return float("nan"), float("nan"), float("nan")
    means = np.random.default_rng(seed).choice(diff, size=(n, len(diff))).mean(axis=1)
    return float(diff.mean()), float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def verdict(interval: tuple[float, float, float]) -> bool | None:
    """True if the interval lies above 0, False if below, None if it holds 0 (too few regions to tell)."""
    _, lo, hi = interval
    return True if lo > 0 else False if hi < 0 else None
