import pytest
import torch

from ep.model import interventions as I

D = 16


def unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm()


@pytest.fixture
def x():
    return torch.randn(3, 5, D, generator=torch.Generator().manual_seed(0)) * 4 + 1  # [batch, pos, d]


def test_plain_removal_zeroes_the_component(x):
    e = unit(torch.randn(D))
    y = I.project_out(x, I.orthonormal(e))
    assert torch.allclose(y @ e, torch.zeros(3, 5), atol=1e-5)
    # the rest is untouched: y = x - (x·e)e exactly
    assert torch.allclose(y, x - (x @ e)[..., None] * e, atol=1e-5)


def test_centred_removal_is_the_readme_formula(x):
    e, c = unit(torch.randn(D)), torch.randn(D) * 3
    y = I.project_out(x, I.orthonormal(e), c)
    readme = c + (x - c) - ((x - c) @ e)[..., None] * e
    assert torch.allclose(y, readme, atol=1e-5)
    # along e every activation lands on the centre's value, not on 0
    assert torch.allclose(y @ e, torch.full((3, 5), float(c @ e)), atol=1e-4)
    assert not torch.allclose(y, I.project_out(x, I.orthonormal(e)), atol=1e-3)


def test_centre_orthogonal_to_e_makes_both_removals_equal(x):
    e = unit(torch.randn(D))
    c = torch.randn(D)
    c = c - (c @ e) * e
    assert torch.allclose(I.project_out(x, I.orthonormal(e), c), I.project_out(x, I.orthonormal(e)), atol=1e-4)


def test_several_directions_remove_their_span(x):
    v = torch.randn(3, D)
    y = I.project_out(x, I.orthonormal(v))
    assert torch.allclose(y @ v.T, torch.zeros(3, 5, 3), atol=1e-4)
    # idempotent
    assert torch.allclose(I.project_out(y, I.orthonormal(v)), y, atol=1e-4)


def test_orthonormal_drops_dependent_directions():
    v = torch.randn(2, D)
    q = I.orthonormal(torch.stack([v[0], v[1], v[0] + 2 * v[1]]))
    assert q.shape == (2, D)
    assert torch.allclose(q @ q.T, torch.eye(2), atol=1e-5)
    with pytest.raises(ValueError, match="zero"):
        I.orthonormal(torch.zeros(2, D))
    with pytest.raises(ValueError, match="NaN"):
        I.orthonormal(torch.full((D,), float("nan")))


def test_ablation_keeps_dtype_and_layers():
    e = unit(torch.randn(D))
    ab = I.Ablation(e * 7, (5, 2, 5), centre=torch.zeros(D))
    assert ab.layers == (2, 5)
    h = torch.randn(2, 4, D, dtype=torch.bfloat16)
    out = ab(h, 2)
    assert out.dtype == torch.bfloat16 and out.shape == h.shape
    assert float((out.float() @ e).abs().max()) < 0.1  # bf16 rounding only
    with pytest.raises(ValueError, match="width"):
        I.Ablation(e, (1,), centre=torch.zeros(D + 1))
    with pytest.raises(ValueError, match="layer"):
        I.Ablation(e, ())


def test_per_layer_applies_each_ablation_at_its_own_layer():
    e1, e2 = unit(torch.randn(D)), unit(torch.randn(D))
    edit = I.PerLayer([I.Ablation(e1, (3,)), I.Ablation(e2, (1,))])
    assert edit.layers == (1, 3)
    h = torch.randn(2, 4, D)
    assert torch.allclose(edit(h, 3) @ e1, torch.zeros(2, 4), atol=1e-5)
    assert torch.allclose(edit(h, 1) @ e2, torch.zeros(2, 4), atol=1e-5)
    assert not torch.allclose(edit(h, 1) @ e1, torch.zeros(2, 4), atol=1e-3)  # layer 1 keeps e1
    with pytest.raises(ValueError, match="layer 3"):
        I.PerLayer([I.Ablation(e1, (3,)), I.Ablation(e2, (3, 4))])
    with pytest.raises(ValueError, match="at least one"):
        I.PerLayer([])


def test_diff_in_means():
    g = torch.Generator().manual_seed(1)
    axis = unit(torch.randn(D, generator=g))
    pos = torch.randn(200, D, generator=g) + 5 * axis
    neg = torch.randn(200, D, generator=g) - 5 * axis
    d = I.diff_in_means(pos, neg)
    assert abs(float(d.norm()) - 1) < 1e-5
    assert I.cosine(d, axis) > 0.95
    assert I.cosine(I.diff_in_means(neg, pos), axis) < -0.95
    with pytest.raises(ValueError):
        I.diff_in_means(pos, neg[:, :3])
    with pytest.raises(ValueError, match="equal"):
        I.diff_in_means(pos, pos)


def test_cosines_and_projections():
    e = torch.zeros(D)
    e[0] = 1.0
    v = torch.zeros(D)
    v[0], v[1] = 1.0, 1.0
    assert I.cosine(e, v) == pytest.approx(2**-0.5)
    assert I.subspace_cosine(torch.eye(D)[:2], v) == pytest.approx(1.0)
    assert I.subspace_cosine(torch.eye(D)[2:4], v) == pytest.approx(0.0, abs=1e-7)
    assert I.projections(torch.stack([v, 2 * v]), 3 * e).tolist() == [1.0, 2.0]


def test_ablation_key_names_equal_edits():
    e, c = unit(torch.randn(D)), torch.randn(D)
    a = I.Ablation(e, (3,), c)
    assert a.key() == I.Ablation(e.clone() * 2, (3,), c.clone()).key()  # same span, same centre
    assert a.key() != I.Ablation(e, (3,)).key() != I.Ablation(e, (4,), c).key()
    assert a.key() != I.Ablation(-unit(torch.randn(D)), (3,), c).key()
    assert {a.key(): 1}[I.Ablation(e, (3,), c).key()] == 1  # hashable
