"""Tests for ep.show.sphere: the lattice, the projection, the scene's Voronoi cells, the static figure, and the
interactive page drawn and rotated in headless Chromium."""


import numpy as np
import pytest

from ep.show.sphere import _scene, fibonacci_sphere, sphere_figure, sphere_html, to_sphere


def test_lattice_and_projection():
    grid = fibonacci_sphere(2000)
    assert np.allclose(np.linalg.norm(grid, axis=1), 1) and np.abs(grid.mean(axis=0)).max() < 0.01  # even spread
    x = np.random.default_rng(0).normal(size=(30, 16))
    s = to_sphere(x)
    assert s.shape == (30, 3) and np.allclose(np.linalg.norm(s, axis=1), 1)
    assert to_sphere(x[:2]).shape == (2, 3)  # fewer rows than 3 components: zeros fill in


def test_scene_cells_are_voronoi_cells():
    ex = np.eye(3)
    pts = np.array([[0.9, 0.1, 0.0], [0.0, 0.2, 0.9]])
    s = _scene(pts / np.linalg.norm(pts, axis=1, keepdims=True), ex, grid=500)
    assert s["point_cell"] == [0, 2]
    grid, cell = np.array(s["grid"]), np.array(s["grid_cell"])
    assert (cell == np.argmax(grid @ ex.T, axis=1)).all() and set(cell.tolist()) == {0, 1, 2}
    with pytest.raises(ValueError):
        _scene(pts, np.zeros((0, 3)), 10)


def test_static_figure():
    import matplotlib

    matplotlib.use("Agg")
    ax = sphere_figure(fibonacci_sphere(20), np.eye(3), title="toy", grid=200)
    assert ax.get_title() == "toy" and len(ax.collections) == 3


def test_interactive_page_draws_and_rotates(tmp_path, chromium):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    page = tmp_path / "sphere.html"
    page.write_text("<!DOCTYPE html><meta charset='utf-8'><title>s2</title>"
                    + sphere_html(fibonacci_sphere(40), np.eye(3), title="<toy>", element_id="t"))
    assert "<toy>" not in page.read_text()
    chromium.get(page.as_uri())
    pixels = "return Array.from(document.getElementById('canvas-t').getContext('2d')" \
             ".getImageData(0, 0, 420, 420).data).join(',')"
    before = chromium.execute_script(pixels)
    assert any(v != "0" for v in before.split(",")[3::4])  # something was drawn
    ActionChains(chromium).drag_and_drop_by_offset(chromium.find_element(By.ID, "canvas-t"), 80, 30).perform()
    assert chromium.execute_script(pixels) != before  # dragging rotated the sphere
