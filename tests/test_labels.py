"""Tests for ep.studies.labels: prompts, held-out probes, scores, the cache; one test asks the embedded chat model."""

import numpy as np
import pytest
import torch

from ep.method.builder import build_dictionary
from ep.method.calibration import calibrate
from ep.model.activations import ActivationBatch as Batch
from ep.model.loading import transformers_model
from ep.studies import labels as L


@pytest.fixture(scope="module")
def data():
    g = np.random.default_rng(3)
    centres = 3.0 * g.normal(size=(6, 10))
    a = (centres[g.integers(0, 6, 700)] + g.normal(size=(700, 10)) + 2.0).astype(np.float32)
    i = torch.arange(len(a))
    batch = Batch(torch.from_numpy(a[:400]), i[:400] // 20, i[:400] % 20, i[:400] % 50)
    d = build_dictionary([batch], calibrate(a[:400], 10.0, batch_size=200), n_samples=3, progress=False)
    d = d.with_contexts(lambda doc, pos: (f"left{doc}\n", f"tok{doc}_{pos}", " right"))
    held = Batch(torch.from_numpy(a[400:]), i[400:] // 20, i[400:] % 20, i[400:] % 50)
    return d, held


def test_marked_and_clean_label():
    assert L.marked("a\nb ", "c", " d") == "a b <<c>> d"
    assert L.clean_label('\n  Label: "Years in dates".\nmore') == "Years in dates"
    assert L.clean_label("") == "" and L.clean_label("the word 'A'.") == "the word 'A'"


HYPHENS = [("child", "-", "led activity"), ("shared", "-", "attention training"), ("event", "-", "related potentials"),
           ("inflation", "-", "adjusted from 2003"), ("cell", "-", "adhesion system"), ("turn", "-", "taking, and")]


def test_a_reply_with_no_word_is_no_label():
    """The chat model echoes a punctuation mark back ("- -", "'-'": after the quotes go, "-"): no label, so the
    marked words the instruction lists name it."""
    instruction = L.LABEL_INSTRUCTION.format(tokens="'-'", snippets="\n".join(f"- {L.marked(*c)}" for c in HYPHENS))
    assert L.marked_words(instruction) == "'-'" and L.marked_words("no list") == ""
    for reply in ("- -", "'-'", "-\n- -", " "):
        assert L.clean_label(reply) == "" and L.clean_label(reply, "'-'") == "the mark '-'"
    assert L.clean_label("hyphens", "'-'") == "hyphens" and L.clean_label("'1'", "'1'") == "1"


def test_label_instruction(data):
    d, _ = data
    text = L.label_instruction(d, 0, n_contexts=2)
    doc, pos, _ = d.exemplar_context[0].tolist()
    assert f"<<tok{doc}_{pos}>>" in text and text.count("\n- ") <= 2 and f"Marked words: 'tok{doc}_{pos}'" in text


def test_heldout_probes(data):
    d, held = data
    regions = L.sample_regions(d, held, 3, min_heldout=4)
    assigned, _ = d.assign(held.acts)
    assert len(regions) == 3 and all((assigned == k).sum() >= 4 for k in regions)
    lookup = lambda doc, pos: ("L ", f"t{doc}_{pos}", " R")
    probes = L.heldout_probes(d, held, lookup, regions, n_members=3, n_near=2, n_random=2)
    where = {(int(held.doc[i]), int(held.pos[i])): int(assigned[i]) for i in range(len(held))}
    for p in probes:
        doc, pos = map(int, p.text.split("<<t")[1].split(">>")[0].split("_"))
        assert p.member == (where[doc, pos] == p.region) == (p.kind == "member")
        if p.kind == "near":
            assert where[doc, pos] in d.neighbours(p.region, 5)[0]
    kinds = [p.kind for p in probes if p.region == regions[0]]
    assert kinds.count("member") == 3 and kinds.count("random") == 2


def test_balanced_accuracy_and_shuffle():
    member = np.array([1, 1, 1, 0], bool)
    assert L.balanced_accuracy(member, np.ones(4, bool)) == 0.5  # always "yes" is chance, whatever the mix
    assert L.balanced_accuracy(member, member) == 1.0
    assert np.isnan(L.balanced_accuracy(np.ones(3, bool), np.ones(3, bool)))
    labels = {k: f"label {k}" for k in range(5)}
    mixed = L.shuffled(labels, seed=1)
    assert sorted(mixed.values()) == sorted(labels.values()) and all(mixed[k] != labels[k] for k in labels)
    with pytest.raises(ValueError):
        L.shuffled({0: "x"})


class FakeJudge(L.ChatModel):
    """Margin +1 exactly when the label is the marked word, else -1 (+0.5 for the word 'x'); counts what it computes."""

    def __init__(self, cache, dtype=None):
        super().__init__("fake", cache, loader=None, dtype=dtype)
        self.computed = 0

    def yes_margin(self, instructions, progress=True, shots=()):
        def compute(chunk):
            self.computed += len(chunk)
            label_and_word = [t.split("\n")[0].removeprefix("Category: ") + t.split("\n")[1].removeprefix("Word: ")
                              for t in chunk]
            return [1.0 if lw in ("x'x'", "y'y'") else 0.5 if lw.endswith("'x'") else -1.0 for lw in label_and_word]
        return np.array(self._cached("judge", instructions, compute, progress, "judge", shots))


def test_score_and_cache(tmp_path):
    probes = [L.Probe(0, "a <<x>> b", True, "member"), L.Probe(0, "a <<y>> b", False, "near"),
              L.Probe(1, "a <<y>> b", True, "member"), L.Probe(1, "a <<x>> b", False, "random")]
    judge = FakeJudge(L.Cache(tmp_path / "cache.json"))
    right = L.score(judge, probes, {0: "x", 1: "y"})
    assert right[0]["balanced_accuracy"] == right[1]["balanced_accuracy"] == 1.0 and right[0]["auroc"] == 1.0
    assert right[0]["threshold"] == 0.75  # the median margin of the 4 contexts (1, -1, 1, 0.5), not 0
    at_zero = L.score(judge, probes, {0: "x", 1: "y"}, threshold=0.0)
    assert at_zero[1]["balanced_accuracy"] == 0.5 and at_zero[1]["auroc"] == 1.0  # 'x' under 'y' scores +0.5: a Yes
    wrong = L.score(judge, probes, L.shuffled({0: "x", 1: "y"}))
    assert wrong[0]["balanced_accuracy"] == 0.0 and wrong[0]["auroc"] == 0.0
    assert judge.computed == 4  # the same 4 (label, word) pairs: cached
    again = FakeJudge(L.Cache(tmp_path / "cache.json"))  # a rerun reads the file and computes nothing
    assert L.score(again, probes, {0: "x", 1: "y"}) == right and again.computed == 0


def test_answers_are_cached_per_dtype(tmp_path):
    """bf16 and fp32 runs of one model answer differently: a cache filled by one is not read by the other."""
    probes = [L.Probe(0, "a <<x>> b", True, "member"), L.Probe(0, "a <<y>> b", False, "near")]
    cache = L.Cache(tmp_path / "cache.json")
    for dtype, computed in ((torch.float32, 2), (torch.bfloat16, 2), (torch.float32, 0)):
        judge = FakeJudge(cache, dtype)
        L.score(judge, probes, {0: "x"})
        assert judge.computed == computed, dtype


JUDGE_AUROC_BOUND = 0.85  # measured 0.89 (bf16), 0.94 (float32); the earlier prompt, with the context and no worked
#                            turns, 0.65 (bf16), 0.69 (float32): this test fails with it


@pytest.mark.model
def test_the_chat_model_labels_and_judges(tmp_path):
    chat = L.ChatModel(cache=L.Cache(tmp_path / "cache.json"))
    [label] = chat.write([L.LABEL_INSTRUCTION.format(tokens="'1850', '1923', '1812'", snippets="\n".join(
        f"- {L.marked(a, b, c)}" for a, b, c in [("born in ", "1850", " in Paris"), ("until ", "1923", ", when"),
                                                  ("the war of ", "1812", " ended")]))])
    assert label and len(label) < 80 and label not in {answer for _, answer in L.LABEL_SHOTS}, label
    [hyphens] = chat.write([L.LABEL_INSTRUCTION.format(tokens="'-'", snippets="\n".join(
        f"- {L.marked(*c)}" for c in HYPHENS))])  # the model's own reply, "- -", says nothing in words
    assert any(c.isalpha() for c in hyphens) and len(hyphens) < 80, hyphens
    assert L.obvious_auroc(chat) >= JUDGE_AUROC_BOUND
    # the worked turns run once and are reused (a prefix cache): the margins are those of the whole prompts
    tok, hf = chat.model.tokenizer, transformers_model(chat.model)
    questions = [L.judge_instruction(label, text) for label, text, _ in L.OBVIOUS[:4]]
    prefix, turns = L.chat_turns(tok, questions, L.JUDGE_SHOTS)
    assert prefix.count("Category:") == len(L.JUDGE_SHOTS) and all(t.count("Category:") == 1 for t in turns)
    yes, no = (tok.encode(w, add_special_tokens=False)[0] for w in ("Yes", "No"))
    whole = []
    with torch.no_grad():
        for turn in turns:  # one at a time: no padding
            ids = tok(prefix + turn, return_tensors="pt", add_special_tokens=False)["input_ids"]
            logits = hf(input_ids=ids.to(hf.device)).logits[0, -1].float()
            whole.append(float(logits[yes] - logits[no]))
    rounding = 1e-3 if next(hf.parameters()).dtype == torch.float32 else 0.25  # bf16 keeps ~3 significant digits
    assert np.allclose(chat.yes_margin(questions), whole, atol=rounding)


def test_paired_bootstrap():
    a, b = np.array([0.9, 0.8, 0.85, 0.95]), np.array([0.5, 0.4, 0.55, 0.5])
    mean, lo, hi = L.paired_bootstrap(a, b)
    assert mean == pytest.approx(0.3875) and 0 < lo <= mean <= hi
    assert L.paired_bootstrap(b, b)[1:] == (0.0, 0.0)
    assert L.verdict(L.paired_bootstrap(a, b)) is True and L.verdict(L.paired_bootstrap(b, a)) is False
    assert L.verdict(L.paired_bootstrap(np.array([0.6, 0.4]), np.array([0.4, 0.6]))) is None
