"""The paper-scale build as the official code does it: a seeded corpus shuffle, documents read as exactly
``context_length`` activations after BOS (shorter ones skipped), calibration and stream on those documents only."""

import itertools

import pytest

import ep


def test_a_seed_is_a_new_sample_of_the_corpus():
    plain = list(ep.data.corpus(skip=10, max_docs=300))
    a = list(ep.data.corpus(skip=10, max_docs=300, seed=1))
    assert a == list(ep.data.corpus(skip=10, max_docs=300, seed=1)), "a seed is reproducible"
    b = list(ep.data.corpus(skip=10, max_docs=300, seed=2))
    assert len(set(a) & set(b)) < 100, "another seed draws mostly other documents"
    assert len(set(a) - set(plain)) > 200, "a seed draws beyond the first documents"
    head = set(ep.data.corpus(max_docs=10))
    assert not head & set(itertools.islice(ep.data.corpus(skip=10, seed=3), 2000)), "skip holds documents out"
    with pytest.raises(ValueError, match="unknown corpus"):
        next(ep.data.corpus("books"))


@pytest.mark.model
def test_exact_context_reads_the_official_128_after_bos(gemma):
    gemma = gemma[0]  # (model, info)
    texts = ["Short text.", " ".join(["word"] * 40), "Another short one.", " ".join(["river"] * 50)]
    batch = ep.token_activations(gemma, texts, 3, context_length=16, exact_context=True, progress=False)
    assert sorted(set(batch.doc.tolist())) == [1, 3], "documents under 16 tokens are skipped, indices kept"
    assert all(int((batch.doc == d).sum()) == 16 for d in (1, 3)), "16 activations after BOS per document"
    assert (batch.token != gemma.tokenizer.bos_token_id).all()
    plain = ep.token_activations(gemma, texts, 3, context_length=16, progress=False)
    assert int((plain.doc == 1).sum()) == 15, "without it, context_length counts BOS"
    wiki = [t for doc in ep.data.corpus(max_docs=12) for t in (doc, "Too short.")]
    d = ep.build(gemma, wiki, 3, calibration_docs=4, max_tokens=100, context_length=16, exact_context=True,
                 batch_size=2, percentile=10, progress=False)
    assert d.config.exact_context and int(d.counts.sum()) == 100
