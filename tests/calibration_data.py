"""Synthetic documents of activations, shared by tests/test_calibration.py and benchmarks/official_calibration.py.

Each document has a topic of its own (rows of one document are closer to each other than to the rest), so
batching whole documents gives a different θ from batching shuffled rows, as on real text.
"""

import numpy as np

CASES = {  # name: (documents, min rows, max rows, width)
    "small": (40, 5, 60, 32),       # 16 docs/batch: 3 batches, the last one ragged
    "large": (48, 380, 420, 16),    # ~6,400 rows per 16 documents: > 2**24 pairs, the blocked percentile
}


def synthetic_documents(case: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (acts [N, d] float32, doc [N] int64), documents in stream order."""
    n_docs, lo, hi, d = CASES[case]
    rng = np.random.default_rng(1234)
    common = 4.0 * rng.normal(size=d)                       # the shared component a centre removes
    clusters = rng.normal(size=(12, d))
    acts, doc = [], []
    for i in range(n_docs):
        n = int(rng.integers(lo, hi + 1))
        topic = rng.normal(size=d)
        members = clusters[rng.integers(0, len(clusters), size=n)]
        acts.append(common + topic + members + 0.5 * rng.normal(size=(n, d)))
        doc.append(np.full(n, i))
    return np.concatenate(acts).astype(np.float32), np.concatenate(doc).astype(np.int64)
