import json

import pytest

from ep import data


def test_corpus_streams_and_skips():
    first = list(data.corpus(max_docs=5))
    assert len(first) == 5 and all(isinstance(d, str) and d for d in first)
    assert list(data.corpus(skip=2, max_docs=3)) == first[2:5]


@pytest.mark.parametrize("split,n", [("harmful_train", 260), ("harmful_val", 39), ("harmless_val", 500)])
def test_instructions(split, n):
    rows = data.instructions(split)
    assert len(rows) == n and all(isinstance(r, str) and r for r in rows)


def test_instructions_from_a_file(tmp_path):
    path = tmp_path / "mine.json"
    path.write_text('[{"instruction": "a"}, {"instruction": "b"}]')
    assert data.instructions(str(path)) == ["a", "b"]
    with pytest.raises(ValueError, match="unknown split"):
        data.instructions("harmful_test")


def test_axbench_concept10():
    metadata, train, latent = data.axbench_concepts("prod_2b_l20_v1")
    assert len(metadata) == 10 and len(train) == 936
    assert (latent.category == "positive").sum() == 360 and (latent.category == "negative").sum() == 360
    assert {"input", "output", "category", "concept_id"} <= set(latent.columns)


def test_ood_sources():
    langs = data.multilingual_lines()
    assert len(langs) >= 10 and all(len(set(lines)) == len(lines) for lines in langs.values())
    code = list(data.python_source(max_files=3))
    assert len(code) == 3 and all("def " in c or "import" in c for c in code)


def test_missing_mirror_names_the_variable_and_file(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    with pytest.raises(FileNotFoundError, match=r"EP_DATA_DIR.*|refusal/harmful_val.json"):
        data.instructions("harmful_val")
    with pytest.raises(FileNotFoundError) as err:
        list(data.corpus(max_docs=1))
    assert "EP_DATA_DIR" in str(err.value) and "corpus/wiki_excerpt.jsonl" in str(err.value)


# -- the upstream paths, offline: mocked responses in the upstream formats, parsed exactly as the mirror ----------

MIRROR = data.data_dir()


@pytest.fixture
def upstream(monkeypatch):
    """No mirror: every loader goes upstream (here: to the mocks each test installs)."""
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    assert data.data_dir() is None and data.source() == "upstream"


def test_a_missing_mirror_folder_means_upstream(monkeypatch, tmp_path):
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path / "no such folder"))
    assert data.data_dir() is None and data.source() == "upstream"
    monkeypatch.setenv(data.DATA_ENV, str(tmp_path))
    assert data.data_dir() == tmp_path and data.source().startswith("mirror:")


# The upstream paths themselves (Wikipedia, the refusal splits, AxBench, faults on the wire, no internet) run over
# real HTTP against a local stand-in of the upstream services: tests/test_online.py.


def test_the_raw_file_address_comes_from_the_environment(upstream, monkeypatch):
    assert data.refusal_url("harmful_val") == ("https://raw.githubusercontent.com/andyrdt/refusal_direction/9d852fa/"
                                               "dataset/splits/harmful_val.json")
    monkeypatch.setenv(data.RAW_ENV, "http://127.0.0.1:8000/raw/")
    assert data.refusal_url("harmless_val").startswith("http://127.0.0.1:8000/raw/andyrdt/refusal_direction/")


@pytest.mark.skipif(MIRROR is None, reason="compares with the offline mirror")
def test_multilingual_lines_from_the_package_match_the_mirror():
    """chatterbot-corpus itself (the default, offline or online) holds exactly the mirror's lines, by language."""
    from_package = data.multilingual_lines()
    by_lang = {}
    for line in (MIRROR / "ood/multilingual_lines.jsonl").open():
        row = json.loads(line)
        by_lang.setdefault(row["lang"], set()).add(row["text"])
    assert set(from_package) == set(by_lang) == set(data.MULTILINGUAL)
    assert {lang: set(lines) for lang, lines in from_package.items()} == by_lang


def test_multilingual_lines_fall_back_to_the_mirror(monkeypatch):
    def missing():
        raise ModuleNotFoundError("chatterbot-corpus is not installed")
        yield

    monkeypatch.setattr(data, "_chatterbot_lines", missing)
    if MIRROR is not None:
        assert len(data.multilingual_lines()) == 12
    monkeypatch.delenv(data.DATA_ENV, raising=False)
    with pytest.raises(FileNotFoundError, match="chatterbot-corpus"):
        data.multilingual_lines()
