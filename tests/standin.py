"""A local stand-in of the upstream services the loaders reach, for tests that go online with no internet.

One small HTTP server on 127.0.0.1 (loopback only, a free port) that serves the offline mirror's files in their
upstream layouts, through the routes the real clients call:

- the Hugging Face hub (point ``huggingface_hub`` and ``datasets`` at it with ``HF_ENDPOINT``; both read it when
  they are imported): ``resolve`` for model and dataset files (HEAD and ranged GET, with the hub's ``ETag``,
  ``X-Repo-Commit`` and ``X-Linked-Size`` headers), and the API routes ``/api/{models,datasets}/{repo}`` (repo info),
  ``.../revision/{rev}``, ``.../paths-info/{rev}`` and ``.../tree/{rev}/{path}``;
- GitHub's raw files under ``/raw`` (point ``ep.data`` at it with ``EP_RAW_URL``).

Repositories served (``StandIn.repos``):
- ``J-RUM/exemplar-partitioning``: the mirror's three official-format Gemma 3 270M builds under their own names;
  under the published Gemma-2-2B names (``gemma-2-2b_L12_p10``, ``gemma-2-2b-it_L12_p10``) the same files stand in
  for the real ones (same format and layout, another model's numbers: enough for the download path);
- ``pyvene/axbench-concept10``: the mirror's Concept10 folders;
- ``wikimedia/wikipedia``: config ``20231101.en`` as one parquet in the upstream layout and schema
  (``id, url, title, text``, one article a row, paragraphs joined by blank lines), made from the mirror's excerpt;
  config ``20231101.bg`` made from the mirror's Russian lines (Cyrillic, standing in for Bulgarian: the mirror has
  none); ``StandIn.add_wikipedia`` serves other texts under a config;
- ``google/gemma-2-2b`` and ``-it``: gated, as on the hub (401 without a token, 403 with one not on the list).

Faults (``StandIn.fault``), injected on the next GET or POST requests whose path contains a given text: ``500``,
``drop`` (the connection closes mid-file), ``truncate`` (the body ends early under a Content-Length that says so),
``corrupt`` (other bytes, same size), ``slow`` (the first byte waits). Every request is logged in ``StandIn.log``.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

COMMIT = "5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e5e"  # the one revision every stand-in repository has
LFS_SUFFIXES = (".pkl", ".parquet", ".safetensors", ".bin")  # stored in LFS on the hub: ETag = sha256
WIKI_FILE = "20231101.en/train-00000-of-00041.parquet"
WIKI_README = """---
configs:
- config_name: 20231101.en
  data_files:
  - split: train
    path: 20231101.en/train-*
---
# Wikipedia (local stand-in: a few thousand paragraphs of the offline mirror)
"""


@dataclass
class Repo:
    files: dict[str, Path | bytes]  # path in the repo -> file on disk or bytes
    gated: bool = False

    def data(self, path: str) -> bytes:
        f = self.files[path]
        return f if isinstance(f, bytes) else f.read_bytes()


@dataclass
class Fault:
    where: str  # a text of the request path
    kind: str  # 500 | drop | truncate | corrupt | slow
    times: int  # how many matching requests get it (then the path is served normally)
    seconds: float = 0.0  # for slow


@dataclass
class StandIn:
    mirror: Path
    workdir: Path
    repos: dict[tuple[str, str], Repo] = field(default_factory=dict)  # (models|datasets, repo id) -> Repo
    log: list[tuple[str, str, int]] = field(default_factory=list)  # (method, path, status)
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self):
        hub = self.mirror / "ep_hub"
        ep_files: dict[str, Path | bytes] = {str(p.relative_to(hub)): p for p in hub.glob("gemma-3-270m_L9_p*/*")}
        for name, p in (("gemma-2-2b", 10), ("gemma-2-2b-it", 4)):  # published names, stand-in contents
            for suffix in (".pkl", "_metadata.json"):
                ep_files[f"{name}_L12_p10/{name}_layer12{suffix}"] = hub / f"gemma-3-270m_L9_p{p}" / \
                    f"gemma-3-270m_layer9{suffix}"
        concept10 = self.mirror / "axbench" / "concept10"
        self.repos = {
            ("datasets", "J-RUM/exemplar-partitioning"): Repo(ep_files),
            ("datasets", "pyvene/axbench-concept10"): Repo(
                {str(p.relative_to(concept10)): p for p in concept10.glob("*/*") if p.is_file()}),
            ("datasets", "wikimedia/wikipedia"): Repo({"README.md": WIKI_README.encode(),
                                                       WIKI_FILE: self._wiki_parquet()}),
            **{("models", f"google/{m}"): Repo({"config.json": b'{"model_type": "gemma2"}'}, gated=True)
               for m in ("gemma-2-2b", "gemma-2-2b-it")},
        }
        self.raw = {"andyrdt/refusal_direction/9d852fa/dataset/splits/" + p.name: p
                    for p in (self.mirror / "refusal").glob("*.json")}
        self.add_wikipedia("20231101.bg", self._russian_articles())

    def _wiki_parquet(self) -> Path:
        """The mirror's paragraphs as upstream rows: one article a row, its paragraphs joined by blank lines."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        articles: dict[str, list[str]] = {}
        for line in (self.mirror / "corpus" / "wiki_excerpt.jsonl").open(encoding="utf-8"):
            if line.strip():
                row = json.loads(line)
                articles.setdefault(row["title"], []).append(row["text"])
        titles = list(articles)
        table = pa.table({"id": [str(i + 1) for i in range(len(titles))],
                          "url": [f"https://en.wikipedia.org/wiki/{t.replace(' ', '_')}" for t in titles],
                          "title": titles, "text": ["\n\n".join(articles[t]) for t in titles]})
        path = self.workdir / "wikipedia.parquet"
        pq.write_table(table, path, row_group_size=200)
        return path

    # -- control -----------------------------------------------------------------------------------------

    def start(self) -> StandIn:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def env(self) -> dict[str, str]:
        """The environment that points the clients here (the hub's endpoint and GitHub's raw files)."""
        return {"HF_ENDPOINT": self.url, "EP_RAW_URL": f"{self.url}/raw", "NO_PROXY": "127.0.0.1,localhost",
                "no_proxy": "127.0.0.1,localhost"}

    def add_wikipedia(self, config: str, texts: list[str]) -> None:
        """Serve another Wikipedia config (e.g. ``20231101.bg``): one article a row, made from ``texts``."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = self.workdir / f"wikipedia-{config}.parquet"
        pq.write_table(pa.table({"id": [str(i + 1) for i in range(len(texts))], "url": [""] * len(texts),
                                 "title": [f"article {i + 1}" for i in range(len(texts))], "text": texts}), path)
        repo = self.repos[("datasets", "wikimedia/wikipedia")]
        readme = repo.data("README.md").decode()
        entry = f"- config_name: {config}\n  data_files:\n  - split: train\n    path: {config}/train-*\n"
        if entry not in readme:
            repo.files["README.md"] = readme.replace("---\n# ", entry + "---\n# ", 1).encode()
        repo.files[f"{config}/train-00000-of-00001.parquet"] = path

    def _russian_articles(self, per_article: int = 12) -> list[str]:
        """The mirror's Russian lines, a paragraph of ``per_article`` lines per article: Cyrillic text standing in
        for Bulgarian Wikipedia (the mirror has none)."""
        rows = [json.loads(line) for line in (self.mirror / "ood" / "multilingual_lines.jsonl").open(encoding="utf-8")
                if line.strip()]
        lines = [r["text"] for r in rows if r["lang"] == "russian"]
        return [" ".join(lines[i:i + per_article]) for i in range(0, len(lines), per_article)]

    def fault(self, where: str, kind: str, times: int = 1, seconds: float = 0.0) -> None:
        self.faults.append(Fault(where, kind, times, seconds))

    def requests(self, text: str = "") -> list[tuple[str, str, int]]:
        return [r for r in self.log if text in r[1]]

    def _take_fault(self, path: str) -> Fault | None:
        for f in self.faults:
            if f.where in path and f.times > 0:
                f.times -= 1
                return f
        return None


def _git_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def _entry(repo: Repo, path: str) -> dict:
    """A file's entry as the hub's tree and paths-info routes give it."""
    data = repo.data(path)
    entry = {"type": "file", "oid": _git_sha1(data), "size": len(data), "path": path}
    if path.endswith(LFS_SUFFIXES):
        entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
    return entry


def _handler(standin: StandIn):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):  # quiet: the requests go to standin.log
            pass

        def _send(self, status: int, body: bytes = b"", headers: dict | None = None, head: bool = False):
            standin.log.append((self.command, self.path, status))
            self.send_response(status)
            for k, v in {"Content-Length": str(len(body)), **(headers or {})}.items():
                self.send_header(k, v)
            self.end_headers()
            if not head:
                self.wfile.write(body)

        def _json(self, obj, status: int = 200, headers: dict | None = None):
            self._send(status, json.dumps(obj).encode(), {"Content-Type": "application/json", **(headers or {})},
                       head=self.command == "HEAD")

        def _error(self, status: int, code: str, message: str):
            self._json({"error": message}, status, {"X-Error-Code": code, "X-Error-Message": message})

        def do_HEAD(self):
            self._route()

        def do_GET(self):
            self._route()

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            self.body = self.rfile.read(length) if length else b""
            self._route()

        def _route(self):
            url = urlsplit(self.path)
            path, query = unquote(url.path), parse_qs(url.query)
            fault = standin._take_fault(path) if self.command != "HEAD" else None  # faults hit what carries data
            if fault is not None and fault.kind == "500":
                return self._error(500, "", "Internal Error - We're working hard to fix this as soon as possible!")
            if fault is not None and fault.kind == "slow":
                time.sleep(fault.seconds)
            if path.startswith("/raw/"):
                f = standin.raw.get(path[len("/raw/"):])
                return self._file(f.read_bytes(), None, fault) if f else self._send(404, b"404: Not Found")
            m = re.match(r"^/api/(models|datasets)/(.+?)(?:/(revision|paths-info|tree)/([^/]+)(/.*)?)?$", path)
            if m:
                return self._api(*m.groups(), query)
            m = re.match(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$", path)
            if m:
                return self._resolve("datasets" if m.group(1) else "models", m.group(2), m.group(4), fault)
            self._error(404, "RepoNotFound", f"no route {path}")

        def _repo(self, kind: str, repo_id: str) -> Repo | None:
            repo = standin.repos.get((kind, repo_id))
            if repo is None:
                self._error(401, "RepoNotFound", f"Repository Not Found for url: {self.path}.")
            return repo

        def _api(self, kind, repo_id, route, revision, sub, query):
            repo = self._repo(kind, repo_id)
            if repo is None:
                return
            if route is None or route == "revision":
                return self._json({"id": repo_id, "_id": repo_id, "sha": COMMIT, "private": False,
                                   "gated": "manual" if repo.gated else False, "disabled": False,
                                   "lastModified": "2024-01-01T00:00:00.000Z", "tags": [], "cardData": {},
                                   "siblings": [{"rfilename": p} for p in sorted(repo.files)]})
            if route == "paths-info":
                wanted = parse_qs(self.body.decode()).get("paths", []) if self.body else []
                if self.headers.get("Content-Type", "").startswith("application/json"):
                    wanted = json.loads(self.body).get("paths", [])
                return self._json([_entry(repo, p) for p in wanted if p in repo.files])
            prefix = (sub or "/").strip("/")
            recursive = query.get("recursive", ["false"])[0].lower() == "true"
            below = [p for p in sorted(repo.files) if not prefix or p.startswith(prefix + "/")]
            if prefix and not below:
                return self._error(404, "EntryNotFound", f"{prefix} does not exist on {revision}")
            entries, folders = [], set()
            for p in below:
                rest = p[len(prefix) + 1:] if prefix else p
                if "/" in rest:
                    parts = rest.split("/")
                    for i in range(1, len(parts) if recursive else 2):
                        folders.add("/".join(([prefix] if prefix else []) + parts[:i]))
                    if not recursive:
                        continue
                entries.append(_entry(repo, p))
            entries += [{"type": "directory", "oid": _git_sha1(f.encode()), "size": 0, "path": f}
                        for f in sorted(folders)]
            self._json(entries)

        def _resolve(self, kind, repo_id, filename, fault):
            repo = self._repo(kind, repo_id)
            if repo is None:
                return
            if repo.gated:
                if self.headers.get("Authorization"):
                    return self._error(403, "GatedRepo", f"Access to model {repo_id} is restricted and you are not "
                                       f"in the authorized list. Visit https://huggingface.co/{repo_id} to ask for "
                                       "access.")
                return self._error(401, "GatedRepo", f"Access to model {repo_id} is restricted. You must have access "
                                   "to it and be authenticated to access it. Please log in.")
            if filename not in repo.files:
                return self._error(404, "EntryNotFound", f"{filename} does not exist on {COMMIT}")
            data = repo.data(filename)
            entry = _entry(repo, filename)
            etag = entry["lfs"]["oid"] if "lfs" in entry else entry["oid"]
            self._file(data, {"ETag": f'"{etag}"', "X-Repo-Commit": COMMIT, "X-Linked-Size": str(len(data)),
                              **({"X-Linked-Etag": f'"{etag}"'} if "lfs" in entry else {})}, fault)

        def _file(self, data: bytes, headers: dict | None, fault: Fault | None):
            headers = {"Accept-Ranges": "bytes", "Content-Type": "application/octet-stream", **(headers or {})}
            status, body = 200, data
            r = re.match(r"bytes=(\d+)-(\d*)$", self.headers.get("Range", ""))
            if r:
                start = int(r.group(1))
                end = int(r.group(2)) if r.group(2) else len(data) - 1
                body = data[start:end + 1]
                status, headers["Content-Range"] = 206, f"bytes {start}-{start + len(body) - 1}/{len(data)}"
            head = self.command == "HEAD"
            if fault is None or head:
                return self._send(status, body, headers, head=head)
            if fault.kind == "corrupt":
                return self._send(status, bytes(b ^ 0xFF for b in body[:64]) + body[64:], headers)
            if fault.kind == "truncate":
                return self._send(status, body[: len(body) // 2], headers)
            if fault.kind == "drop":  # promise the whole body, send half, hang up
                standin.log.append((self.command, self.path, -1))
                self.send_response(status)
                for k, v in {"Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                self.connection.shutdown(2)
                return
            self._send(status, body, headers)

    return Handler
