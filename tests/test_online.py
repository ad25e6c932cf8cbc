"""The online paths, for real: no mirror, real HTTP to a local stand-in of the upstream services (tests/standin.py).

Each case runs the same call a user runs (``ep.data.*``, ``ep.published.from_hub``, ``load_model``) in a fresh Python
process whose environment points the clients at the stand-in (``HF_ENDPOINT``, ``EP_RAW_URL``) with ``EP_DATA_DIR``
unset and empty caches: nothing is patched. Then the faults a real network has: a server error, a connection that
drops mid-file, a body cut short, bytes damaged on the way, a gated model without a token, a slow answer. Each one
ends in a retry that succeeds or in one error that says what to do, and leaves nothing wrong in a cache: the next
run, with the fault gone, gets the right data.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from standin import StandIn

from ep import data

REPO = Path(__file__).resolve().parents[1]
MIRROR = data.data_dir()
pytestmark = [pytest.mark.skipif(MIRROR is None, reason="the stand-in serves the offline mirror's files"),
              pytest.mark.online]
WIKI = "wikimedia/wikipedia/resolve"
AXBENCH = "axbench-concept10/resolve"
DICT = "gemma-2-2b_L12_p10/gemma-2-2b_layer12.pkl"
REFUSAL = "splits/harmful_val.json"


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    server = StandIn(MIRROR, tmp_path_factory.mktemp("standin")).start()
    yield server
    server.stop()


def online_env(standin: StandIn, home: Path) -> dict[str, str]:
    """This process's environment with no mirror, the stand-in as upstream, no token and empty caches in ``home``."""
    env = {k: v for k, v in os.environ.items() if k not in ("EP_DATA_DIR", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN",
                                                            "HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    return {**env, **standin.env(), "HF_HOME": str(home / "hf"), "HF_DATASETS_CACHE": str(home / "datasets"),
            "EP_CACHE_DIR": str(home / "ep"), "HF_HUB_DISABLE_TELEMETRY": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])}


@pytest.fixture
def run(standin, tmp_path):
    """run(code) -> the JSON the code printed last (its ``out``), or {"error": type, "message": text}."""
    standin.faults.clear()

    def run(code: str, **extra_env) -> dict:
        script = ("import json, ep\nfrom ep import data\nout = {}\ntry:\n" + textwrap.indent(textwrap.dedent(code),
                  "    ") + "\nexcept Exception as e:\n    out = {'error': type(e).__name__, 'message': str(e)}\n"
                  "print(json.dumps(out), flush=True)\nimport os\nos._exit(0)\n")  # no native threads' exit noise
        done = subprocess.run([sys.executable, "-c", script], env={**online_env(standin, tmp_path), **extra_env},
                              capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr[-3000:]
        return json.loads(done.stdout.strip().splitlines()[-1])

    return run


def mirror_json(relative: str):
    return json.loads((MIRROR / relative).read_text(encoding="utf-8"))


# -- each loader against the stand-in: the upstream data arrives and parses like the mirror -----------------------

def test_refusal_prompts_over_http(run, standin):
    out = run("out = data.instructions('harmful_val')")
    assert out == [row["instruction"] for row in mirror_json("refusal/harmful_val.json")]
    assert standin.requests(REFUSAL)[-1][0] == "GET"


def test_wikipedia_streams_from_the_hub_layout(run, standin):
    out = run("out = list(data.corpus(max_docs=30, skip=5))")
    mirror = [json.loads(line)["text"] for line in (MIRROR / "corpus/wiki_excerpt.jsonl").open(encoding="utf-8")]
    long = [p for p in mirror if len(p) > 200]  # upstream rows are articles: the loader keeps paragraphs > 200
    assert out == long[5:35]
    assert standin.requests("/api/datasets/wikimedia/wikipedia") and standin.requests(WIKI + "/")


def test_wikipedia_in_another_language_through_the_same_path(run, standin):
    """language="bg" reads config 20231101.bg as the official exp_coverage.py does; the mirror (English only) is
    never asked for it, even when EP_DATA_DIR is set."""
    articles = [f"Статия {i}. " + "Това е абзац от българската Уикипедия. " * 8 + "\n\nКратко." for i in range(6)]
    standin.add_wikipedia("20231101.bg", articles)
    out = run("out = list(data.corpus(max_docs=3, skip=1, language='bg'))")
    assert out == [a.split("\n\n")[0] for a in articles[1:4]]  # paragraphs longer than 200 characters
    assert standin.requests(WIKI + "/") and any("20231101.bg" in p for _, p, _ in standin.log)
    english = run("out = list(data.corpus(max_docs=2))")
    assert english and english != out
    with_mirror = run("out = list(data.corpus(max_docs=3, skip=1, language='bg'))", EP_DATA_DIR=str(MIRROR))
    assert with_mirror == out


def test_axbench_concept10_from_the_hub(run, standin):
    out = run("""
        meta, train, latent = data.axbench_concepts('prod_2b_l20_v1')
        out = {'meta': meta, 'train': len(train), 'latent': len(latent), 'cols': list(latent.columns)}
    """)
    import pandas as pd

    folder = MIRROR / "axbench/concept10/prod_2b_l20_v1"
    assert out["meta"] == [json.loads(line) for line in (folder / "generate_metadata.jsonl").open() if line.strip()]
    latent = pd.read_parquet(folder / "inference_latent_eval_data.parquet")
    assert out["latent"] == len(latent) and out["cols"] == list(latent.columns)
    assert out["train"] == len(pd.read_parquet(folder / "generate_train_data.parquet"))


FROM_HUB = """
    d = ep.published.from_hub('gemma-2-2b', 12, 10)
    import pathlib
    cache = ep.method.files.cache_dir() / "published"
    out = {'regions': len(d), 'sha256': d.meta['sha256'], 'model': d.meta['model'],
           'cache': sorted(p.name for p in cache.iterdir()) if cache.exists() else []}
"""


def test_from_hub_downloads_checks_and_converts(run, standin, capsys):
    from ep.method.files import sha256_file

    out = run(FROM_HUB)
    src = MIRROR / "ep_hub/gemma-3-270m_L9_p10/gemma-3-270m_layer9.pkl"  # what the stand-in serves under that name
    assert out["sha256"] == sha256_file(src) and out["regions"] > 0
    assert out["cache"] == [f"{out['sha256']}_schema{ep_schema()}.safetensors"], "only the conversion is kept"
    assert standin.requests("paths-info") and standin.requests(DICT)
    n = len(standin.requests(DICT))
    assert run(FROM_HUB) == out and len(standin.requests(DICT)) == n, "the second open reads the cached conversion"


def ep_schema() -> int:
    from ep.method.dictionary import SCHEMA_VERSION

    return SCHEMA_VERSION


# -- faults on the wire -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["500", "corrupt", "truncate"])
def test_from_hub_fault_then_a_clean_run(run, standin, kind):
    """A server error, damaged bytes or a body cut short: one error that says what to do, nothing kept; the next
    run (fault gone) gets the right dictionary."""
    standin.fault(DICT, kind, times=10)
    bad = run(FROM_HUB)
    assert "error" in bad, bad
    said = {"500": "HTTP 500, a server error on its side: try again", "corrupt": "damaged on the way and was not kept",
            "truncate": "cut short"}[kind]
    assert said in bad["message"] and ("run the same call again" in bad["message"] or kind == "500"), bad["message"]
    standin.faults.clear()
    good = run(FROM_HUB)
    assert good["regions"] > 0 and good["cache"] == [f"{good['sha256']}_schema{ep_schema()}.safetensors"]


def test_from_hub_dropped_connection_resumes(run, standin):
    standin.fault(DICT, "drop", times=1)
    out = run(FROM_HUB)
    assert out.get("regions", 0) > 0, out
    assert [s for m, _, s in standin.requests(DICT) if m == "GET"][-2:] in ([-1, 206], [-1, 200]), "fetched again"


def test_slow_answers_within_the_timeout_succeed(run, standin):
    standin.fault(DICT, "slow", times=1, seconds=3)
    standin.fault(REFUSAL, "slow", times=1, seconds=3)
    assert run(FROM_HUB).get("regions", 0) > 0
    assert len(run("out = data.instructions('harmful_val')")) == 39


def test_an_answer_slower_than_the_timeout_says_what_to_do(run, standin):
    standin.fault(REFUSAL, "slow", times=5, seconds=4)
    out = run("out = data.instructions('harmful_val')", EP_HTTP_TIMEOUT="1")
    assert out["error"] == "ConnectionError" and "no answer in time" in out["message"], out
    assert "EP_DATA_DIR" in out["message"]
    standin.faults.clear()
    assert len(run("out = data.instructions('harmful_val')", EP_HTTP_TIMEOUT="1")) == 39  # nothing left behind


@pytest.mark.parametrize("times,ok", [(1, True), (5, False)])
def test_refusal_server_error_retried_then_explained(run, standin, times, ok):
    standin.fault(REFUSAL, "500", times=times)
    out = run("out = data.instructions('harmful_val')")
    if ok:
        assert isinstance(out, list) and len(out) == 39
    else:
        assert out["error"] == "ConnectionError" and "HTTP 500" in out["message"] and "EP_DATA_DIR" in out["message"]


@pytest.mark.parametrize("kind", ["drop", "truncate"])
def test_refusal_body_cut_short_is_retried(run, standin, kind):
    standin.fault(REFUSAL, kind, times=1)
    assert len(run("out = data.instructions('harmful_val')")) == 39
    standin.fault(REFUSAL, kind, times=5)
    out = run("out = data.instructions('harmful_val')")
    assert out["error"] == "ConnectionError" and "cut short" in out["message"], out


def test_axbench_damaged_download_is_fetched_again(run, standin):
    standin.fault(AXBENCH + "/main/prod_2b_l20_v1/generate_train_data.parquet", "corrupt", times=1)
    standin.fault("prod_2b_l20_v1/inference_latent_eval_data.parquet", "corrupt", times=1)
    import pandas as pd

    folder = MIRROR / "axbench/concept10/prod_2b_l20_v1"
    code = "m, t, l = data.axbench_concepts('prod_2b_l20_v1'); out = [t.to_json(), l.to_json()]"
    assert run(code) == [pd.read_parquet(folder / f).to_json() for f in ("generate_train_data.parquet",
                                                                         "inference_latent_eval_data.parquet")]
    assert [s for m, p, s in standin.requests("generate_train_data.parquet") if m == "GET"] == [200, 200]


@pytest.mark.parametrize("where", ["README.md", ".parquet"])
@pytest.mark.parametrize("kind", ["500", "drop"])
def test_wikipedia_stream_faults_are_retried(run, standin, kind, where):
    standin.fault(WIKI + "/", kind, times=1) if where == "README.md" else standin.fault(where, kind, times=1)
    out = run("out = list(data.corpus(max_docs=3))")
    assert any(s in (500, -1) for _, p, s in standin.requests(where)), "the fault was served"
    if (kind, where) == ("500", "README.md"):  # datasets does not retry a server error on the card: one clear error
        assert out["error"] == "ConnectionError" and "HTTP 500" in out["message"] and "try again" in out["message"]
        out = run("out = list(data.corpus(max_docs=3))")  # and the next run is clean
    assert isinstance(out, list) and len(out) == 3, out


def test_gated_model_without_a_token_says_what_to_do(run, standin):
    out = run("ep.load_model('google/gemma-2-2b')")
    assert out["error"] == "PermissionError" and "HF_TOKEN" in out["message"] and "licence" in out["message"]
    assert standin.requests("/google/gemma-2-2b/resolve/")[-1][2] == 401
    out = run("ep.load_model('google/gemma-2-2b')", HF_TOKEN="hf_not_on_the_list")
    assert out["error"] == "PermissionError" and "HF_TOKEN" in out["message"]
    assert standin.requests("/google/gemma-2-2b/resolve/")[-1][2] == 403


def test_no_internet_and_no_mirror_says_what_to_do(standin, tmp_path):
    """Nothing listens at the address: the one clear error naming EP_DATA_DIR."""
    env = {**online_env(standin, tmp_path), "EP_RAW_URL": "http://127.0.0.1:9/raw", "HF_ENDPOINT": "http://127.0.0.1:9"}
    code = ("from ep import data\nimport ep\nfor f in (lambda: data.instructions('harmful_val'),"
            " lambda: next(data.corpus(max_docs=3)), lambda: ep.published.from_hub('gemma-2-2b', 12, 10)):\n"
            "    try:\n        f()\n    except ConnectionError as e:\n        print(str(e).replace(chr(10), ' '))\n")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 3, done.stdout + done.stderr[-2000:]
    assert all("internet" in line for line in lines)
    assert "EP_DATA_DIR" in lines[0] and "EP_DATA_DIR" in lines[1] and "put the file at" in lines[2]
