"""Every exercise checker passes its own reference and catches each plausible wrong answer it lists."""

import numpy as np
import pytest

from ep import exercises as X

NAMES = sorted(n for n, e in X.EXERCISES.items() if not e.needs_model)
ON_A_MODEL = sorted(n for n, e in X.EXERCISES.items() if e.needs_model)  # nnsight exercises: checked on Gemma 3 270M


def test_at_least_two_per_notebook():
    per = {}
    for ex in X.EXERCISES.values():
        per[ex.notebook] = per.get(ex.notebook, 0) + 1
    assert all(n >= 2 for n in per.values()), per
    assert {"00", "01", "02", "03", "04", "05", "06", "07", "08", "09"} <= set(per)


SLOW_REFERENCES = {"leader_rule", "leader_counts", "mini_build"}  # a Python loop per row


@pytest.mark.parametrize("name", NAMES)
def test_reference_passes(name, capsys):
    assert X.check(name, X.EXERCISES[name].reference, trials=8)
    assert "✓" in capsys.readouterr().out


@pytest.mark.parametrize("name", NAMES)
def test_worked_solution_passes(name):
    """Each notebook's worked solution is an independent implementation: it must agree with the reference."""
    assert X.check(name, X.solution(name), trials=12, quiet=True)


@pytest.mark.parametrize("name", [n for n in NAMES if not X.EXERCISES[n].needs_model])
def test_every_random_input_has_an_answer(name):
    """The reference is defined on every input the generator makes (about 1 draw in 1,700 of theta_by_documents once had
    no batch of two rows, and the notebook's check raised instead of judging)."""
    ex, rng = X.EXERCISES[name], np.random.default_rng(0)
    for _ in range(4000 if name not in SLOW_REFERENCES else 100):
        ex.reference(*ex.inputs(rng))


def test_every_exercise_has_a_worked_solution():
    assert set(X.SOLUTIONS) == set(X.EXERCISES)


@pytest.mark.parametrize("name,mistake", [(n, w) for n in NAMES for w in X.EXERCISES[n].wrong])
def test_wrong_answer_fails_every_call_and_is_named(name, mistake, capsys):
    """Not most calls: every call (the edge cases see to the mistakes random inputs rarely reveal)."""
    wrong = X.EXERCISES[name].wrong[mistake]
    passed = [seed for seed in range(40) if X.check(name, wrong, seed=seed, quiet=True)]
    assert not passed, f"{mistake!r} passed with seeds {passed}"
    X.check(name, wrong)
    out = capsys.readouterr().out
    assert "✗" in out and "seed=" in out and "known mistake: " in out and mistake in out


@pytest.mark.parametrize("name", ON_A_MODEL)
def test_model_exercise_reference_and_solution_pass_and_mistakes_fail(name, gemma, capsys):
    """The nnsight exercises: the worked solution (a learner's trace) agrees with ep's code; each mistake fails every
    call of a few seeds (a model call is slow) and is named."""
    model, _ = gemma
    assert X.check(name, X.EXERCISES[name].reference, trials=1, model=model)
    assert X.check(name, X.solution(name), trials=2, model=model, quiet=True)
    for mistake, wrong in X.EXERCISES[name].wrong.items():
        assert not any(X.check(name, wrong, trials=2, seed=seed, model=model, quiet=True) for seed in range(2)), mistake
        capsys.readouterr()
        X.check(name, wrong, trials=1, model=model)
        out = capsys.readouterr().out
        assert "known mistake: " in out and mistake in out and "model=model" in out


def test_model_exercise_without_the_model_says_how():
    with pytest.raises(TypeError, match="model=model"):
        X.check(ON_A_MODEL[0], X.solution(ON_A_MODEL[0]))


def test_checked_goes_on_with_the_learners_function_or_the_solution(capsys):
    mine = X.solution("assign")
    assert X.checked("assign", mine) is mine
    wrong = X.EXERCISES["assign"].wrong["least similar"]
    assert X.checked("assign", wrong) is X.solution("assign")
    assert "goes on with the worked solution of assign" in capsys.readouterr().out


def test_seed_replays_the_same_inputs(capsys):
    wrong = X.EXERCISES["centred_removal"].wrong["centre dropped"]
    X.check("centred_removal", wrong, seed=123)
    X.check("centred_removal", wrong, seed=123)
    first, second = capsys.readouterr().out.split("✗")[1:]
    assert first == second and "seed=123" in first


def test_the_failing_input_is_shrunk_and_shown(capsys):
    X.check("document_score", X.EXERCISES["document_score"].wrong["sum"], seed=0)
    out = capsys.readouterr().out
    assert "token_scores = np.array([" in out
    shown = out[out.index("np.array([") + 10:out.index("])")]
    assert len(shown.split(",")) == 2, "mean and sum differ already on two scores: the shrinker must get there"


def test_an_unknown_mistake_is_not_given_a_name(capsys):
    assert not X.check("document_score", lambda s: float(np.median(s)) + 1.0, seed=0)
    assert "known mistake" not in capsys.readouterr().out


@pytest.mark.parametrize("name", NAMES)
def test_every_exercise_lists_a_wrong_answer(name):
    assert X.EXERCISES[name].wrong, "a checker that is never shown to fail proves nothing"


def test_unfinished_and_crashing_answers_never_raise(capsys):
    def unfinished(*args):
        raise NotImplementedError

    assert not X.check("leader_rule", unfinished)
    assert "not written yet" in capsys.readouterr().out
    assert not X.check("spherical_centre", lambda a: a[:, 999])
    assert "IndexError" in capsys.readouterr().out
    assert not X.check("hungarian_match", lambda c, t: None)
    assert "✗" in capsys.readouterr().out


def test_must_pass_raises_for_ci():
    with pytest.raises(AssertionError, match="spherical_centre"):
        X.check("spherical_centre", lambda a: a.mean(0), must_pass=True, quiet=True)


def test_message_says_what_differs(capsys):
    X.check("document_score", lambda s: float(np.max(s)))
    out = capsys.readouterr().out
    assert "expected" in out and "got" in out


def test_leader_ties_are_exercised():
    """The >= / > mistake is only visible on exact ties: the generator must produce them."""
    rng = np.random.default_rng(0)
    seen = False
    for _ in range(20):
        u, theta = X.EXERCISES["leader_rule"].inputs(rng)
        d = 1 - u @ u.T
        seen |= bool((d == theta).any())
    assert seen


def test_place_tokens_ties_at_theta_are_exercised():
    """The > / >= mistake at θ is only visible on exact ties: the generator must produce them."""
    rng = np.random.default_rng(0)
    seen = 0
    for _ in range(20):
        acts, centre, exemplars, theta = X.EXERCISES["place_tokens"].inputs(rng)
        u = (acts - centre) / np.linalg.norm(acts - centre, axis=1, keepdims=True)
        seen += bool((1 - (u @ exemplars.T).max(axis=1) == theta).any())
    assert seen >= 5


def test_place_tokens_matches_the_package():
    """Exercise 0.2's reference is Dictionary.assign's region, with -1 where the distance exceeds θ."""
    import torch

    from ep.method.builder import build_dictionary
    from ep.method.calibration import calibrate
    from ep.model.activations import ActivationBatch

    g = np.random.default_rng(2)
    a = (3.0 * g.normal(size=(8, 12))[g.integers(0, 8, 600)] + g.normal(size=(600, 12)) + 5.0).astype(np.float32)
    i = torch.arange(len(a))
    d = build_dictionary([ActivationBatch(torch.from_numpy(a[:400]), i[:400] // 40, i[:400] % 40, i[:400])],
                         calibrate(a[:400], 3.0, batch_size=400), progress=False)
    new = a[400:].astype(np.float64)
    ids, dist = d.assign(a[400:])
    want = np.where(dist > d.threshold, -1, ids)
    got = X._place_tokens(new, d.centre.numpy().astype(np.float64), d.exemplars.numpy().astype(np.float64),
                          d.threshold)
    assert (got == want).all() and (want == -1).any() and (want >= 0).any()


def test_teaching_theta_matches_the_package():
    """The exercise's one-batch θ is the package's percentile threshold over one batch of all rows."""
    import ep

    u = X._unit(np.random.default_rng(1).normal(size=(64, 5)))
    assert X._theta(u, 5.0) == pytest.approx(ep.percentile_threshold(u.astype(np.float32), 5.0, batch_size=64),
                                             abs=1e-5)


def test_notebook_solutions_are_the_worked_solutions():
    """The solution a notebook shows in its dropdown is the one CI runs (fill_solutions) and the tests check."""
    import json
    import re
    from pathlib import Path

    shown = {}
    for path in sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            text = "".join(cell["source"])
            if cell["cell_type"] == "markdown" and "exercise" in cell["metadata"].get("tags", []):
                code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
                name = re.match(r"def (\w+)\(", code).group(1)
                shown[name] = code
                assert code.strip() == X.solution_source(name).strip(), f"{path.name}: {name} differs from ep"
    assert shown, "no exercise found in the notebooks"


def solution_lines() -> int:
    """Lines of code in the worked solutions, signatures included (blank and comment-only lines not counted)."""
    return sum(1 for name in X.SOLUTIONS for line in X.solution_source(name).splitlines()
               if line.strip() and not line.strip().startswith("#"))


def test_the_worked_solutions_are_a_course_not_a_quiz():
    """Learning by building: across the series the learner writes at least 150 lines (the method's parts included)."""
    assert solution_lines() >= 150, solution_lines()
