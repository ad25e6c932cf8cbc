"""Tests for ep.studies.sae: a TopK SAE trained with sae-lens on synthetic sparse data, and its helpers."""

import numpy as np
import pytest
import torch

from ep.studies import sae as S


@pytest.fixture(autouse=True)
def one_thread():
    # tiny matrices: threads only add overhead (and stall badly on a busy machine)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _sparse_data(n=3000, d=32, n_features=64, active=3, offset=20.0, seed=0):
    """x = Σ of `active` random unit directions with positive weights, plus a large common offset."""
    g = torch.Generator().manual_seed(seed)
    dirs = torch.randn(n_features, d, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    codes = torch.zeros(n, n_features)
    idx = torch.randint(0, n_features, (n, active), generator=g)
    codes.scatter_(1, idx, torch.rand(n, active, generator=g) * 4 + 1)
    return codes @ dirs + offset * torch.ones(d)


@pytest.fixture(scope="module")
def trained():
    with torch.enable_grad():
        return S.train_topk_sae(_sparse_data(), width=128, k=6, steps=300, batch_size=200, lr=3e-3, progress=False)


def test_training_fits_and_is_counted(trained):
    sae, rec = trained
    x = _sparse_data()
    assert (rec.d_in, rec.width, rec.k, rec.steps, rec.batch_size) == (32, 128, 6, 300, 200)
    assert rec.tokens_unique == 3000 and rec.tokens_processed == 300 * 200
    assert rec.epochs == pytest.approx(20.0)
    assert rec.flops == pytest.approx(12 * 32 * 128 * 300 * 200)
    # the returned SAE takes RAW activations (the input scaling is folded into its weights)
    assert S.explained_variance(sae, x) == pytest.approx(rec.explained_variance, abs=1e-6)
    assert rec.explained_variance > 0.85
    assert rec.final_mse < 0.2 * float(((x - x.mean(0)) ** 2).sum(1).mean())
    assert 0.0 <= rec.dead_fraction < 0.5
    assert set(rec.to_dict()) >= {"tokens_processed", "flops", "explained_variance"}


def test_encode_and_top1(trained):
    sae, _ = trained
    x = _sparse_data(n=50, seed=1)
    f = S.encode(sae, x, batch_size=7)
    assert f.shape == (50, 128) and f.dtype == torch.float32
    assert ((f > 0).sum(1) <= 6).all()  # TopK: at most k active
    top = S.top1(sae, x, batch_size=7)
    assert top.shape == (50,) and top.dtype == np.int64
    expect = torch.where(f.max(1).values > 0, f.argmax(1), -1).numpy()
    np.testing.assert_array_equal(top, expect)
    assert S.top1(sae, torch.zeros(0, 32)).shape == (0,)


def test_batches_are_epochs_of_permutations():
    x = torch.arange(10.0)[:, None]
    it = S._batches(x, 3, seed=0)
    epoch = torch.cat([next(it) for _ in range(3)]).ravel()  # 3 full batches of 3; row 10 dropped
    assert len(set(epoch.tolist())) == 9
    assert next(it).shape == (3, 1)


def test_bad_arguments():
    x = _sparse_data(n=100)
    with pytest.raises(ValueError, match="batch_size"):
        S.train_topk_sae(x, 16, 4, steps=1, batch_size=200)
    with pytest.raises(ValueError, match="k <= width"):
        S.train_topk_sae(x, 16, 32, steps=1, batch_size=10)


def test_flops_formula():
    assert S.sae_flops(640, 4096, 1000) == 12 * 640 * 4096 * 1000
    assert S.GEMMA_SCOPE == ("gemma-scope-2b-pt-res-canonical", "layer_20/width_16k/canonical")


def test_width_matched_in_log_space_as_the_official_code():
    assert S.closest_width(3000) == 4096 and S.closest_width(9000) == 16384 and S.closest_width(50_000) == 65536
    assert S.closest_width(1500, widths=[2 ** i for i in range(6, 21)]) == 2048  # log2 1500 = 10.55
    assert S.width_matched_sae_id("gemma-scope-2b-pt-res-canonical", 12, 3000) == "layer_12/width_16k/canonical"
    assert S.width_matched_sae_id("gemma-scope-2b-pt-res-canonical", 20, 50_000) == "layer_20/width_65k/canonical"
