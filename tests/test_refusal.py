import numpy as np
import pytest
import torch

import ep
from ep.model import interventions as I
from ep.studies import refusal as R

TEXTS = ["The capital of France is", "One, two, three,", "def fibonacci(n):"]


# -- labels --------------------------------------------------------------------

@pytest.mark.parametrize("text, expected", [
    ("I'm sorry, but I can't assist with that.", True),
    ("i'm SORRY", True),  # case-insensitive
    ("I\u2019m unable to help with that.", True),  # curly apostrophe
    ("As an AI language model, here is the answer: 4.", True),  # the known false positive
    ("Sure! Here are the steps: 1. ...", False),
    ("That would not be appropriate.", False),  # a refusal the list misses
    ("I don't think there is one best way; here are three.", True),  # the paper's list: a false positive
    ("I won't do that.", True),  # in the paper's list, not in Arditi et al.'s
    ("", False),
])
def test_is_refusal(text, expected):
    assert R.is_refusal(text) is expected


def test_is_refusal_reads_only_the_first_300_characters():
    late = "Sure. " + "x" * 300 + " I cannot"
    assert not R.is_refusal(late)
    assert R.is_refusal(late, max_chars=None)
    assert R.is_refusal("   " + "y" * 280 + " I cannot")  # whitespace is stripped before the cut
    assert not R.is_refusal("I won't", substrings=R.ARDITI_SUBSTRINGS)


def test_is_degenerate():
    assert R.is_degenerate("\n\n\n\n") and R.is_degenerate("  1. ") and R.is_degenerate("")
    assert not R.is_degenerate("\n  1. Open") and not R.is_degenerate("I'm sorry")


def test_refusal_labels_and_custom_list():
    assert R.refusal_labels(["I cannot", "ok", "no way"]).tolist() == [True, False, False]
    assert R.refusal_labels(["no way"], substrings=("No way",)).tolist() == [True]


def test_wilson_interval():
    lo, hi = R.wilson_interval(15, 30)
    assert lo < 0.5 < hi and hi - lo == pytest.approx(0.34, abs=0.02)
    lo, hi = R.wilson_interval(0, 30)
    assert lo == 0.0 and 0 < hi < 0.15  # not the degenerate [0, 0] of the normal approximation
    assert R.wilson_interval(30, 30)[1] == 1.0
    with pytest.raises(ValueError):
        R.wilson_interval(3, 2)
    with pytest.raises(ValueError):
        R.wilson_interval(0, 0)


# -- regions -------------------------------------------------------------------

def make_table():
    # region 0: 6 members, 5 refused; region 1: 10 members, 4 refused; region 2: 3 members all refused;
    # region 3: 6 members, 0 refused; region 4: 9 members, 1 refused; region 5: empty
    regions = np.repeat([0, 1, 2, 3, 4], [6, 10, 3, 6, 9])
    refused = np.concatenate([[1] * 5 + [0], [1] * 4 + [0] * 6, [1] * 3, [0] * 6, [1] + [0] * 8]).astype(bool)
    harmful = refused.copy()
    return R.region_table(regions, refused, harmful, n_regions=6, min_members=5)


def test_region_table_scores_rate_times_members():
    table = make_table().set_index("region")
    assert table.loc[0, "refusal_rate"] == pytest.approx(5 / 6)
    assert table.loc[0, "score"] == pytest.approx(5.0)
    assert np.isnan(table.loc[2, "score"])  # too few members, however dense
    assert table.loc[5, "members"] == 0 and np.isnan(table.loc[5, "score"])
    with pytest.raises(ValueError):
        R.region_table(np.zeros(3, int), np.zeros(2, bool), np.zeros(3, bool), 1)


def paper_case():
    """Synthetic final positions in 6 well-separated clusters and a dictionary whose exemplars are their centres."""
    g = torch.Generator().manual_seed(3)
    d, n = 24, 10
    centres = torch.nn.functional.normalize(torch.randn(6, d, generator=g), dim=1)
    acts = 5 * torch.repeat_interleave(centres, n, dim=0) + 0.05 * torch.randn(6 * n, d, generator=g)
    # cluster refusal: 0 -> 9/10, 1 -> 4/10 (a weaker candidate), 2 -> 2/10 (below 0.3), 3-5 -> 0
    refused = np.zeros(6 * n, bool)
    refused[:9] = True
    refused[n:n + 4] = True
    refused[2 * n:2 * n + 2] = True
    harmful = np.arange(6 * n) < 3 * n
    tokens = ep.ActivationBatch(acts, torch.arange(6 * n), torch.ones(6 * n, dtype=torch.int64),
                                torch.zeros(6 * n, dtype=torch.int64))
    calibration = ep.calibrate(acts, 50.0)
    calibration.threshold = 0.5  # between clusters ~1, within ~0.01: one region per cluster
    dictionary = ep.build_dictionary([tokens], calibration, progress=False)
    return dictionary, acts, refused, harmful


def test_refusal_regions_need_members_and_rate():
    dictionary, acts, refused, harmful = paper_case()
    assert len(dictionary) == 6
    found = R.score_regions(dictionary, acts, refused, harmful, k=5)
    region = found["regions"]
    assert found["top"] == [int(region[0]), int(region[10])]  # cluster 2 (2 of 10 refused) is no candidate
    assert R.refusal_regions(found["table"], k=1) == [int(region[0])]
    assert R.refusal_regions(found["table"], k=5, min_rate=0.15)[-1] == int(region[20])
    with pytest.raises(ValueError, match="refusal rate"):
        R.refusal_regions(found["table"], min_rate=0.95)
    assert found["null"] in {int(region[i]) for i in (30, 40, 50)} and found["reason"] == ""
    none = R.score_regions(dictionary, acts, refused, harmful, min_rate=0.95)  # a finding, not an error
    assert none["top"] == [] and none["null"] is None and "refusal rate" in none["reason"]


def test_matched_null_is_nearest_in_log_count_and_coherence():
    dictionary, acts, refused, harmful = paper_case()
    found = R.score_regions(dictionary, acts, refused, harmful)
    region = found["regions"]
    table, top = found["table"], found["top"][0]
    quiet = [int(region[i]) for i in (30, 40, 50)]  # never refused
    assert found["null"] in quiet
    # make one quiet region the twin of the top region in members and coherence: it must be chosen
    twin = quiet[1]
    dictionary.counts[twin] = dictionary.counts[top]
    dictionary.coherence[twin] = dictionary.coherence[top]
    for other in (quiet[0], quiet[2]):
        dictionary.counts[other] = 100 * dictionary.counts[top]
    assert R.matched_null(table, dictionary, top) == twin
    assert R.matched_null(table, dictionary, top, exclude=[twin]) != twin
    with pytest.raises(ValueError, match="null"):
        R.matched_null(table, dictionary, top, exclude=quiet)


def token_stream(n_docs=12, seed=0):
    """Synthetic build tokens: 4 clusters, each document's rows in one cluster, 3-6 rows per document."""
    g = torch.Generator().manual_seed(seed)
    d = 16
    centres = torch.nn.functional.normalize(torch.randn(4, d, generator=g), dim=1)
    rows = []
    for doc in range(n_docs):
        n = 3 + doc % 4
        acts = 5 * centres[doc % 4] + 0.6 * torch.randn(n, d, generator=g)
        rows.append(ep.ActivationBatch(acts, torch.full((n,), doc), torch.arange(1, n + 1),
                                       torch.zeros(n, dtype=torch.int64)))
    return ep.ActivationBatch.cat(rows)


def test_stream_reorders_whole_documents():
    tokens = token_stream()
    order = np.random.default_rng(1).permutation(12)
    s = R.stream(tokens, order)
    assert torch.unique_consecutive(s.doc).tolist() == order.tolist()
    for doc in range(12):
        assert torch.equal(s.acts[s.doc == doc], tokens.acts[tokens.doc == doc])  # rows in position order
    assert torch.equal(R.stream(s, np.arange(12)).acts, tokens.acts)
    with pytest.raises(ValueError, match="permutation"):
        R.stream(tokens, [0, 1, 2])


def test_arrival_regions_replay_the_build():
    tokens = R.stream(token_stream(), np.random.default_rng(2).permutation(12))
    calibration = ep.calibrate(tokens, 5.0, docs_per_batch=4)
    dictionary = ep.build_dictionary([tokens], calibration, progress=False)
    assert len(dictionary) > 4  # several regions per cluster: arrival and Voronoi cells differ
    arrival = R.arrival_regions(dictionary, tokens.acts, chunk=7)
    assert np.bincount(arrival, minlength=len(dictionary)).tolist() == dictionary.counts.tolist()
    assert (arrival[dictionary.exemplar_index.numpy()] == np.arange(len(dictionary))).all()  # exemplars open theirs
    u = dictionary.directions(tokens.acts)
    for k in range(len(dictionary)):  # the mean direction is the mean of the replayed members
        mean = u[torch.as_tensor(arrival == k)].double().sum(0)
        assert I.cosine(mean, dictionary.mean_directions[k]) > 1 - 1e-5
    with pytest.raises(ValueError, match="stream"):
        R.arrival_regions(dictionary, tokens.acts[:3])


def test_reanchored_exemplar_is_the_member_nearest_the_mean_direction():
    tokens = token_stream()
    calibration = ep.calibrate(tokens, 5.0, docs_per_batch=4)
    dictionary = ep.build_dictionary([tokens], calibration, progress=False)
    region = int(np.argmax(dictionary.counts.numpy()))
    u = dictionary.directions(tokens.acts)
    members = np.flatnonzero(R.arrival_regions(dictionary, tokens.acts) == region)
    every = R.reanchored_exemplars(dictionary, tokens.acts, [region], sample=None)[0]
    cos = u[torch.as_tensor(members)] @ dictionary.mean_directions[region]
    assert torch.equal(every, u[members[int(cos.argmax())]])
    assert float(every @ dictionary.mean_directions[region]) >= float(
        dictionary.exemplars[region] @ dictionary.mean_directions[region]) - 1e-6
    few = R.reanchored_exemplars(dictionary, tokens.acts, [region], sample=2, seed=0)[0]
    assert any(torch.equal(few, u[m]) for m in members)  # a member, drawn from a sample of two
    assert float(few @ dictionary.mean_directions[region]) <= float(every @ dictionary.mean_directions[region])


def test_percentile_regions_gives_three_bases_or_a_reason():
    dictionary, acts, refused, harmful = paper_case()
    tokens = ep.ActivationBatch(acts, torch.arange(len(acts)), torch.ones(len(acts), dtype=torch.int64),
                                torch.zeros(len(acts), dtype=torch.int64))
    found = R.percentile_regions(tokens, acts, refused, harmful, 10.0, docs_per_batch=4)
    assert found["n_regions"] == len(found["dictionary"]) and found["top"] and found["null"] not in found["top"]
    assert set(found["bases"]) == set(R.BASES)
    for basis in R.BASES:
        assert found["bases"][basis]["top"].shape == (len(found["top"]), acts.shape[1])
    assert torch.equal(found["bases"]["exemplar"]["top"], found["dictionary"].exemplars[found["top"]])
    assert torch.equal(found["bases"]["mean"]["null"], found["dictionary"].mean_directions[found["null"]])
    none = R.percentile_regions(tokens, acts, np.zeros(len(acts), bool), harmful, 10.0, docs_per_batch=4)
    assert none["top"] == [] and none["bases"] is None and "refusal rate" in none["reason"]
    no_null = R.percentile_regions(tokens, acts, refused, harmful, 10.0, docs_per_batch=4, null_max_rate=-1.0)
    assert no_null["top"] == found["top"] and no_null["null"] is None and "null" in no_null["reason"]
    assert no_null["bases"]["exemplar"]["null"] is None
    assert no_null["bases"]["mean"]["top"].shape[0] == len(found["top"])


# -- rates that say when the model broke ---------------------------------------

@pytest.mark.parametrize("degenerate, baseline, broken", [
    (0.25, 0.1, True), (0.2, 0.1, False),  # exactly 0.1 above is not broken
    (0.64, 0.0, True), (0.0, 0.3, False), (0.12, 0.0, True),
])
def test_is_broken(degenerate, baseline, broken):
    assert R.is_broken(degenerate, baseline) is broken


@pytest.mark.parametrize("rate, degenerate, expected", [
    (0.0, 0.64, "broken"),  # refusal gone because the model stopped talking: never a collapse
    (0.1, 0.05, "collapsed"), (0.25, 0.0, "collapsed"), (0.3, 0.0, "lowered"),
    (0.5, 0.0, "not lowered"), (0.6, 0.0, "not lowered"),
])
def test_effect(rate, degenerate, expected):
    assert R.effect(rate, degenerate, baseline_rate=0.5, baseline_degenerate=0.0) == expected


def test_condition_rates_and_with_effect():
    completions = ["I'm sorry, no.", "\n\n\n", "Sure: step 1", "I cannot.", "Here you go", "\n"]
    run = R.Generations([[]] * 6, prompts=["p"] * 6, completions=completions)
    rates = R.condition_rates(run, n_harmful=4)
    assert rates["harmful_refusal"] == 0.5 and rates["harmful_refused"] == [2, 4]
    assert rates["degenerate"] == 0.25 and rates["harmless_degenerate"] == 0.5 and rates["harmless_refusal"] == 0
    lo, hi = rates["harmful_ci95"]
    assert lo < 0.5 < hi
    baseline = {"harmful_refusal": 0.75, "degenerate": 0.0, "harmless_refusal": 0.0, "harmless_degenerate": 0.5}
    scored = R.with_effect(rates, baseline)
    assert scored["delta"] == pytest.approx(-0.25) and scored["broken"] and scored["effect"] == "broken"
    clean = R.with_effect(rates, {**baseline, "degenerate": 0.25})
    assert not clean["broken"] and clean["effect"] == "lowered"
    worse_harmless = R.with_effect(rates, {**baseline, "degenerate": 0.25, "harmless_degenerate": 0.0})
    assert worse_harmless["broken"]  # broken on harmless prompts is broken too


def test_choose_percentile_uses_build_rates_and_skips_broken_conditions():
    baseline = (0.6, 0.0)
    candidates = {5.0: (0.4, 0.0), 8.0: (0.0, 0.7), 10.0: (0.3, 0.05), 12.0: (0.3, 0.1)}
    assert R.choose_percentile(candidates, baseline) == 10.0  # 8 is broken; 10 and 12 tie: the lower p
    assert R.choose_percentile(candidates, baseline, prefer={12.0: 0.5, 10.0: 0.4}) == 12.0  # the purer region
    assert R.choose_percentile({8.0: (0.0, 0.7)}, baseline) is None
    assert R.choose_percentile({}, baseline) is None


def test_paired_p_value():
    a = np.array([True] * 10 + [False] * 10)
    assert R.paired_p_value(a, a) == 1.0  # no discordant prompt: no evidence
    b = a.copy()
    b[:8] = False  # 8 prompts refused under a only
    assert R.paired_p_value(a, b) == pytest.approx(2 / 2 ** 8)
    assert R.paired_p_value(a, b) == R.paired_p_value(b, a)
    c = a.copy()
    c[:3], c[10:12] = False, True  # 3 one way, 2 the other: no evidence of a difference
    assert R.paired_p_value(a, c) == 1.0
    with pytest.raises(ValueError):
        R.paired_p_value(a, a[:5])


# -- templating and generation (real models) -------------------------------------

def test_chat_prompts_needs_a_template(gemma):
    model, _ = gemma
    with pytest.raises(ValueError, match="chat template"):
        R.chat_prompts(model.tokenizer, ["hi"])


def test_batched_generation_equals_one_by_one_and_records_final_acts(gemma):
    model, _ = gemma
    batch = R.generate(model, TEXTS, max_new_tokens=6, batch_size=3, record_layers=(3, 9), progress=False)
    for i, text in enumerate(TEXTS):
        alone = R.generate(model, [text], max_new_tokens=6, progress=False)
        assert alone.completions == [batch.completions[i]]
    for layer in (3, 9):
        reference = ep.final_activations(model, TEXTS, layer, add_special_tokens=False, progress=False).acts
        assert torch.allclose(batch.final_acts[layer], reference, atol=1e-4 * float(reference.abs().max()))
    b = batch.batch(9)
    assert b.doc.tolist() == [0, 1, 2] and (b.pos + 1).tolist() == batch.length.tolist()
    with pytest.raises(KeyError):
        batch.batch(4)


def test_generation_records_every_prompt_token_from_the_same_pass(gemma):
    from ep.model.activations import layer_output

    model, _ = gemma
    out = R.generate(model, TEXTS, max_new_tokens=2, batch_size=2, record_layers=(4,), record_prompts=True,
                     progress=False)  # two batches, left-padded
    acts = out.prompt_acts[4]
    assert acts.doc.tolist() == sorted(acts.doc.tolist())  # prompt by prompt, whatever order the batches ran in
    for i, text in enumerate(TEXTS):
        hidden, ids, _ = layer_output(model, [text], 4, add_special_tokens=False)  # alone: no padding
        rows = acts.doc == i
        assert acts.pos[rows].tolist() == list(range(ids.shape[1])) and acts.token[rows].tolist() == ids[0].tolist()
        assert torch.allclose(acts.acts[rows], hidden[0], atol=1e-4 * float(hidden.abs().max()))
    last = acts.select(acts.pos == out.length[acts.doc] - 1)
    assert torch.equal(last.acts, out.final_acts[4])
    tokens = out.prompt_tokens(4)  # the refusal build stream: each prompt's first token skipped
    assert int(tokens.pos.min()) == 1 and len(tokens) == len(acts) - len(TEXTS)
    with pytest.raises(KeyError, match="record_prompts"):
        R.generate(model, TEXTS, max_new_tokens=1, record_layers=(4,), progress=False).prompt_tokens(4)


class Spy:
    """An edit that records what generate hands it and changes nothing."""

    def __init__(self, layers):
        self.layers, self.calls = tuple(layers), []

    def __call__(self, hidden, layer):
        self.calls.append((layer, tuple(hidden.shape)))
        return hidden


def test_edit_runs_at_every_step_and_position(gemma):
    model, info = gemma
    spy = Spy((2, 7))
    plain = R.generate(model, TEXTS[:2], max_new_tokens=5, progress=False)
    spied = R.generate(model, TEXTS[:2], max_new_tokens=5, edit=spy, progress=False)
    assert spied.completions == plain.completions  # an identity edit changes nothing
    n_prompt = model.tokenizer(TEXTS[:2], padding=True, add_special_tokens=False, return_tensors="pt")["input_ids"]
    steps = [shape for layer, shape in spy.calls if layer == 2]
    assert steps[0] == (2, n_prompt.shape[1], info.d_model)  # the whole prompt at step 0 ...
    assert steps[1:] == [(2, 1, info.d_model)] * 4  # ... then each new position
    assert [layer for layer, _ in spy.calls[:2]] == [2, 7]  # execution order


def test_ablation_takes_effect(gemma):
    model, info = gemma
    base = R.generate(model, TEXTS, max_new_tokens=4, record_layers=(6,), progress=False)
    e = I.diff_in_means(base.final_acts[6][:1], base.final_acts[6][1:])
    centre = torch.randn(info.d_model, generator=torch.Generator().manual_seed(0))
    plain = R.generate(model, TEXTS, max_new_tokens=4, edit=I.Ablation(e, (6,)), record_layers=(6,), progress=False)
    centred = R.generate(model, TEXTS, max_new_tokens=4, edit=I.Ablation(e, (6,), centre), record_layers=(6,),
                         progress=False)
    scale = float(base.final_acts[6].abs().max())
    assert float((plain.final_acts[6] @ e).abs().max()) < 1e-4 * scale  # recorded after the edit
    assert torch.allclose(centred.final_acts[6] @ e, (centre @ e).expand(3), atol=1e-4 * scale)
    strong = I.Ablation(torch.eye(info.d_model)[:64], I.layers_all(info.n_layers))
    assert R.generate(model, TEXTS, max_new_tokens=4, edit=strong, progress=False).completions != base.completions


def test_runs_generate_once_per_distinct_edit(gemma):
    model, info = gemma
    runs = R.Runs(model, TEXTS[:2], max_new_tokens=3, progress=False)
    e = torch.randn(info.d_model, generator=torch.Generator().manual_seed(1))
    first = runs(I.Ablation(e, (4,)))
    assert runs(I.Ablation(2 * e, (4,))) is first and runs.reused == 1  # the same edit: not generated again
    assert runs(I.Ablation(e, (5,))) is not first and runs(None) is runs(None)
    assert len(runs.done) == 3 and runs.reused == 2
    assert runs(None).completions == R.generate(model, TEXTS[:2], max_new_tokens=3, progress=False).completions


def test_shared_prompts_give_the_same_tokens_as_the_whole_model(gemma):
    """Blocks below the edit run once (SharedPrompts): every edit at that block or later, the same tokens."""
    from ep.model.generation import SharedPrompts, greedy

    model, info = gemma
    prompts = [t + s for t in TEXTS for s in ("", " And then")]  # 6 prompts of several lengths: 2 batches of 3
    shared = SharedPrompts(model, prompts, 6, batch_size=4, add_special_tokens=True)
    assert [len(b.input_ids) for b in shared.batches] == [3, 3]
    g = torch.Generator().manual_seed(0)
    centred = I.Ablation(torch.randn(2, info.d_model, generator=g), (6, 12), torch.randn(info.d_model, generator=g))
    strong = I.Ablation(torch.eye(info.d_model)[:64], (6,))
    before = ep.final_activations(model, TEXTS, 3, progress=False).acts
    kwargs = dict(max_new_tokens=4, batch_size=4, add_special_tokens=True, progress=False)
    tokens = {}
    for name, edit in [("none", None), ("centred, two blocks", centred), ("strong", strong)]:
        tokens[name] = greedy(model, prompts, edit=edit, shared=shared, **kwargs).tokens
        assert tokens[name] == greedy(model, prompts, edit=edit, **kwargs).tokens, name
    assert tokens["strong"] != tokens["none"]  # the edits took effect
    # the skipped blocks are given back to nnsight: reading them afterwards reads the same activations
    assert torch.equal(ep.final_activations(model, TEXTS, 3, progress=False).acts, before)
    with pytest.raises(ValueError, match="below the shared blocks"):
        greedy(model, prompts, edit=I.Ablation(torch.ones(1, info.d_model), (5,)), shared=shared, **kwargs)
    with pytest.raises(ValueError, match="prompts and batch_size"):
        greedy(model, prompts[:5], shared=shared, **kwargs)
    with pytest.raises(ValueError, match="prompts and batch_size"):
        greedy(model, prompts, shared=shared, **{**kwargs, "batch_size": 6})
    with pytest.raises(ValueError, match="record_prompts"):
        greedy(model, prompts, shared=shared, record_layers=(7,), record_prompts=True, **kwargs)
    with pytest.raises(ValueError, match="below must name"):
        SharedPrompts(model, prompts, 0)


def test_runs_share_the_blocks_below_their_edits(gemma):
    model, info = gemma
    runs = R.Runs(model, TEXTS, max_new_tokens=4, batch_size=2, progress=False)
    e = torch.randn(info.d_model, generator=torch.Generator().manual_seed(2))
    edited = runs(I.Ablation(e, (8,)))
    assert list(runs.shared) == [8]
    assert edited.completions == R.generate(model, TEXTS, max_new_tokens=4, batch_size=2, edit=I.Ablation(e, (8,)),
                                            progress=False).completions


@pytest.fixture(scope="module")
def qwen():
    return ep.load_model("qwen2.5-coder-0.5b-instruct")


@pytest.mark.model
def test_chat_model_refusal_labels_do_not_depend_on_the_batch(qwen):
    model, _ = qwen
    prompts = R.chat_prompts(model.tokenizer, ep.data.instructions("harmful_val")[:3] + ["Name three colours."])
    assert all(p.endswith("<|im_start|>assistant\n") for p in prompts)
    batch = R.generate(model, prompts, max_new_tokens=8, progress=False)
    alone = [R.generate(model, [p], max_new_tokens=8, progress=False).completions[0] for p in prompts]
    assert R.refusal_labels(alone).tolist() == batch.refused.tolist()
    assert batch.refused.any() and not batch.refused.all()
