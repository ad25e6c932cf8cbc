"""Data loaders: a text corpus, harmful/harmless instructions, AxBench concepts, OOD text.

Every loader reads from one of two places:
- an **offline mirror**, when the environment variable ``EP_DATA_DIR`` names an existing folder laid out
  like the upstream sources (``corpus/``, ``refusal/``, ``axbench/``, ``ood/``); CI and machines without
  a dataset hub use this;
- otherwise the **upstream originals** (a Wikipedia dump on the Hugging Face hub, the
  ``andyrdt/refusal_direction`` splits on GitHub, ``pyvene/axbench-concept10`` on the hub), streamed.

The Pile (``corpus("pile")``, the official builds' corpus) is upstream only.
Two sources need neither: short lines in twelve languages come from the installed ``chatterbot-corpus``
package (the mirror's copy is only a fallback), and code is the Python standard library's own source.
"""

from __future__ import annotations

import hashlib
import http.client
import itertools
import json
import os
import sysconfig
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

DATA_ENV = "EP_DATA_DIR"
RAW_ENV = "EP_RAW_URL"  # where GitHub's raw files are served: a local stand-in in the tests, else GitHub's own
RAW_URL = "https://raw.githubusercontent.com"
REFUSAL_PATH = "andyrdt/refusal_direction/9d852fa/dataset/splits/{split}.json"
WIKI_DATASET = ("wikimedia/wikipedia", "20231101.en")
AXBENCH_REPO = "pyvene/axbench-concept10"
REFUSAL_SPLITS = ("harmful_train", "harmful_val", "harmless_train", "harmless_val")


MULTILINGUAL = ("german", "spanish", "french", "russian", "chinese", "japanese", "italian", "portuguese", "turkish",
                "ukrainian", "persian", "korean")  # the chatterbot-corpus languages with 75+ usable lines


TIMEOUT_ENV = "EP_HTTP_TIMEOUT"  # seconds a raw-file server may stay silent before the download fails


def data_dir() -> Path | None:
    """The offline mirror named by ``$EP_DATA_DIR`` if that folder exists, else None: use the upstream sources."""
    value = os.environ.get(DATA_ENV)
    path = Path(value).expanduser() if value else None
    return path if path is not None and path.is_dir() else None


def source() -> str:
    """Where the loaders read from now: 'mirror:<folder>' or 'upstream' (part of every cache key)."""
    root = data_dir()
    return f"mirror:{root.resolve()}" if root else "upstream"


def _network_error(e: BaseException) -> bool:
    """URLError, ConnectionError, timeouts and most hub errors are OSErrors; a body cut short is http.client's
    IncompleteRead; the hub client's own HTTP library (httpx, or httpx2 in huggingface_hub 2) raises a
    TransportError instead."""
    return isinstance(e, (OSError, http.client.HTTPException)) or any(
        c.__name__ == "TransportError" and c.__module__.startswith("httpx") for c in type(e).__mro__)


def _trouble(e: BaseException) -> str:
    """What went wrong on the wire, and what to do about it."""
    response = getattr(e, "response", None)
    status = getattr(e, "code", None) if isinstance(e, urllib.error.HTTPError) else getattr(response, "status_code",
                                                                                            None)
    text = f"{type(e).__name__} {e}".lower()
    if isinstance(status, int) and status >= 500:
        return f"the server answered HTTP {status}, an error on its side: try again in a few minutes"
    if isinstance(status, int):
        return f"the server answered HTTP {status}"
    if isinstance(e, (http.client.IncompleteRead, ValueError)) or any(
            w in text for w in ("incomplete", "consistency", "damaged")):
        return "the download was cut short or damaged on the way: run it again"
    if "timed out" in text or "timeout" in text:
        return "no answer in time: check the connection and run it again"
    return "check the internet connection"


def _online(what: str, fetch, instead: str | None = None):
    """Run an upstream fetch; when it fails on the wire, say what went wrong and what to do instead of a raw socket
    error (``instead``: the advice for working offline, when the offline mirror is not the answer)."""
    try:
        return fetch()
    except Exception as e:
        if not _network_error(e):
            raise
        raise _fetch_error(what, e, instead) from e


def _streamed(what: str, rows: Iterator) -> Iterator:
    """``rows`` from an upstream stream, a failure on the wire mid-stream raised as _online raises it."""
    try:
        yield from rows
    except Exception as e:
        if not _network_error(e):
            raise
        raise _fetch_error(what, e) from e


def _fetch_error(what: str, e: BaseException, instead: str | None = None) -> ConnectionError:
    instead = instead or f"set {DATA_ENV} to an offline data mirror (a folder laid out like ../shared/data)"
    return ConnectionError(f"could not fetch {what} from upstream ({type(e).__name__}: {e}): {_trouble(e)}. "
                           f"Without internet, {instead}")


def _json_url(url: str, attempts: int = 3, timeout: float | None = None):
    """A JSON file over HTTP, tried again (after 1 s, then 2 s) when the server errs (5xx) or the body arrives
    cut short; the last failure is raised as it is. A server silent for ``timeout`` seconds (default
    ``$EP_HTTP_TIMEOUT``, else 60) is a failure too, raised at once."""
    timeout = float(os.environ.get(TIMEOUT_ENV, 60)) if timeout is None else timeout
    for attempt in range(attempts):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return json.loads(response.read())
        except (urllib.error.HTTPError, http.client.IncompleteRead, ConnectionError, ValueError) as e:
            transient = not isinstance(e, urllib.error.HTTPError) or e.code >= 500
            if not transient or attempt == attempts - 1:
                if isinstance(e, ValueError):  # JSONDecodeError: a body that ends early
                    raise http.client.IncompleteRead(b"", None) from e
                raise
            time.sleep(1 + attempt)


def _checked_snapshot(folder: Path) -> list[Path]:
    """The files of a hub snapshot whose bytes do not match the hash the hub named them by (the cache's blobs are
    named by their sha256 for LFS files, by their git blob sha1 otherwise); those blobs are deleted."""
    damaged = []
    for link in (f for f in folder.rglob("*") if f.is_symlink()):
        blob = link.resolve()
        data = blob.read_bytes()
        want = blob.name
        got = (hashlib.sha256(data).hexdigest() if len(want) == 64 else
               hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest() if len(want) == 40 else want)
        if got != want:
            damaged.append(link)
            blob.unlink()
            link.unlink()
    return damaged


def mirror_file(relative: str) -> Path:
    """A file of the offline mirror, with one clear error when it is missing."""
    root = data_dir()
    path = root / relative if root else None
    if path is None or not path.exists():
        raise FileNotFoundError(
            f"{relative} not found: set {DATA_ENV} to the offline data mirror that holds it "
            f"(now {DATA_ENV}={os.environ.get(DATA_ENV)!r}), e.g. {DATA_ENV}=../shared/data"
        )
    return path


def _jsonl(path: Path) -> Iterator[dict]:
    with path.open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                yield json.loads(line)


def corpus(name: str = "wikipedia", max_docs: int | None = None, skip: int = 0,
           seed: int | None = None, language: str = "en") -> Iterator[str]:
    """A text corpus streamed one document at a time: ``"wikipedia"`` (English paragraphs; the offline default)
    or ``"pile"`` (the official builds' corpus, :func:`pile`; needs internet).

    ``skip`` lets a notebook hold out the first documents (calibration) from the rest (build). ``seed`` draws
    the documents after them in a seeded shuffle (a buffer of 10,000, as the official ``stream_batches``), so
    another seed is another sample of the corpus; None keeps the source's order. ``language``: the Wikipedia of
    another language by its code (``"bg"``: config ``20231101.bg``, the official ``scripts/exp_coverage.py``'s
    second language), streamed from the hub the same way; the mirror holds English only, so another language
    always needs internet.
    """
    if name == "pile":
        docs = itertools.islice(pile(seed=0 if seed is None else seed), skip, None)
        yield from itertools.islice(docs, max_docs)
        return
    if name != "wikipedia":
        raise ValueError(f"unknown corpus {name!r}: 'wikipedia' or 'pile'")
    if seed is not None:
        docs = _shuffled(corpus(skip=skip, language=language), seed, PILE_SHUFFLE_BUFFER)
        yield from itertools.islice(docs, max_docs)
        return
    if data_dir() and language == "en":
        docs = (row["text"] for row in _jsonl(mirror_file("corpus/wiki_excerpt.jsonl")))
    else:
        from datasets import load_dataset

        repo, config = WIKI_DATASET[0], WIKI_DATASET[1].rsplit(".", 1)[0] + f".{language}"  # 20231101.<language>
        what = "the Wikipedia corpus" + ("" if language == "en" else f" ({config})")
        wiki = _online(what, lambda: load_dataset(repo, config, split="train", streaming=True))
        docs = (para for row in _streamed(what, wiki) for para in row["text"].split("\n\n") if len(para) > 200)
    stop = None if max_docs is None else skip + max_docs
    yield from itertools.islice(docs, skip, stop)


def refusal_url(split: str) -> str:
    """The upstream address of a refusal split: ``$EP_RAW_URL`` (default GitHub's raw files) + the pinned path."""
    return f"{os.environ.get(RAW_ENV, RAW_URL).rstrip('/')}/{REFUSAL_PATH.format(split=split)}"


PILE_DATASET = "monology/pile-uncopyrighted"  # the official build_partitions.stream_batches' corpus
PILE_SHUFFLE_BUFFER = 10_000  # its ds.shuffle(seed=seed, buffer_size=10000)
PILE_MIN_CHARS = 200  # its min_chars: shorter texts are skipped before tokenizing


def pile(seed: int = 0, min_chars: int = PILE_MIN_CHARS) -> Iterator[str]:
    """The Pile (uncopyrighted) as the official ``scripts/build_partitions.py`` streams it (``stream_batches``):
    a seeded shuffle with a buffer of 10,000 documents, texts under ``min_chars`` characters skipped. The
    official stream also keeps only documents of at least 128 tokens and reads their first 128 tokens after BOS:
    that needs the tokenizer, so the extractor does it (``ep.build(..., exact_context=True)``). Upstream only."""
    from datasets import load_dataset

    stream = _online("the Pile", lambda: load_dataset(PILE_DATASET, split="train", streaming=True),
                     instead="use the offline default, ep.data.corpus('wikipedia')")
    stream = stream.shuffle(seed=seed, buffer_size=PILE_SHUFFLE_BUFFER)
    yield from (row["text"] for row in stream if len(row.get("text") or "") >= min_chars)


def _shuffled(docs: Iterator[str], seed: int, buffer_size: int) -> Iterator[str]:
    """A buffered shuffle (the hub's streaming ``shuffle``): fill a buffer, emit a random slot, refill it."""
    import random

    rng, buffer = random.Random(seed), []
    for doc in docs:
        if len(buffer) < buffer_size:
            buffer.append(doc)
            continue
        i = rng.randrange(buffer_size)
        yield buffer[i]
        buffer[i] = doc
    rng.shuffle(buffer)
    yield from buffer


def instructions(split: str) -> list[str]:
    """Harmful or harmless instructions: ``split`` in harmful_train/val, harmless_train/val.

    A path to a JSON file in the same format (a list of ``{"instruction": ...}``) also works, so a
    notebook can be evaluated on another held-out set unchanged.
    """
    if split not in REFUSAL_SPLITS and Path(split).suffix == ".json":
        rows = json.loads(Path(split).read_text(encoding="utf-8"))
    elif split not in REFUSAL_SPLITS:
        raise ValueError(f"unknown split {split!r}: expected one of {REFUSAL_SPLITS} or a .json path")
    elif data_dir():
        rows = json.loads(mirror_file(f"refusal/{split}.json").read_text(encoding="utf-8"))
    else:
        rows = _online(f"the {split} instructions", lambda: _json_url(refusal_url(split)))
    return [row["instruction"] for row in rows]


def axbench_concepts(variant: str = "prod_2b_l20_v1"):
    """AxBench Concept10: ``(metadata, train, latent_eval)`` as (list of dicts, DataFrame, DataFrame).

    ``variant`` names the Concept10 folder (``prod_2b_l20_v1``, ``prod_9b_l20_v1``) or is a path to
    any folder holding the same three files.
    """
    import pandas as pd

    if Path(variant).is_dir():
        folder = Path(variant)
    elif data_dir():
        folder = mirror_file(f"axbench/concept10/{variant}")
    else:
        from huggingface_hub import snapshot_download

        def fetch() -> Path:
            snapshot = Path(snapshot_download(AXBENCH_REPO, repo_type="dataset", allow_patterns=f"{variant}/*"))
            damaged = _checked_snapshot(snapshot)
            if damaged:  # fetched again once: the bad blobs are gone, so the hub client downloads them anew
                snapshot = Path(snapshot_download(AXBENCH_REPO, repo_type="dataset", allow_patterns=f"{variant}/*"))
                if damaged := _checked_snapshot(snapshot):
                    raise OSError(f"{[str(f) for f in damaged]} arrived damaged twice (their hash differs from the "
                                     "hub's record) and were removed from the cache")
            return snapshot

        folder = _online("AxBench Concept10", fetch) / variant
    files = ["generate_metadata.jsonl", "generate_train_data.parquet", "inference_latent_eval_data.parquet"]
    missing = [name for name in files if not (folder / name).exists()]
    if missing:
        raise FileNotFoundError(f"{folder} lacks {missing}: is {DATA_ENV} pointing at the data mirror?")
    metadata = list(_jsonl(folder / files[0]))
    return metadata, pd.read_parquet(folder / files[1]), pd.read_parquet(folder / files[2])


def multilingual_lines(exclude: tuple[str, ...] = ("english",)) -> dict[str, list[str]]:
    """Short conversational lines (longer than 15 characters) in twelve languages, duplicates removed.

    Read from the installed ``chatterbot-corpus`` package (its files in name order); without it, from the
    mirror's ``ood/multilingual_lines.jsonl`` (the same lines, made from chatterbot-corpus 1.3.3)."""
    try:
        rows = list(_chatterbot_lines())
    except ModuleNotFoundError as e:
        if not data_dir():
            raise FileNotFoundError("multilingual lines need the chatterbot-corpus package (pip install chatterbot-"
                                    f"corpus) or {DATA_ENV} naming a mirror with ood/multilingual_lines.jsonl") from e
        rows = _jsonl(mirror_file("ood/multilingual_lines.jsonl"))
    by_lang: dict[str, dict[str, None]] = {}
    for row in rows:
        if row["lang"] not in exclude:
            by_lang.setdefault(row["lang"], {})[row["text"]] = None  # an ordered set
    return {lang: list(lines) for lang, lines in sorted(by_lang.items())}


def _chatterbot_lines() -> Iterator[dict]:
    """{'lang', 'text'} rows from the installed chatterbot-corpus package (ModuleNotFoundError without it)."""
    import importlib.metadata

    import yaml

    try:
        files = importlib.metadata.files("chatterbot-corpus") or []
    except importlib.metadata.PackageNotFoundError as e:
        raise ModuleNotFoundError("chatterbot-corpus is not installed") from e
    ymls = sorted((f for f in files if f.suffix == ".yml" and f.parts[-2] in MULTILINGUAL), key=str)
    for lang in MULTILINGUAL:
        for f in (f for f in ymls if f.parts[-2] == lang):
            for conversation in yaml.safe_load(f.locate().read_text(encoding="utf-8")).get("conversations") or []:
                yield from ({"lang": lang, "text": t} for t in conversation if isinstance(t, str) and len(t) > 15)


def python_source(max_files: int | None = None, min_chars: int = 500) -> Iterator[str]:
    """Code as OOD text: the Python standard library's own source files, in a fixed order."""
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    paths = sorted(p for p in stdlib.glob("*.py") if p.stat().st_size >= min_chars)
    yield from (p.read_text(encoding="utf-8", errors="replace") for p in paths[:max_files])
