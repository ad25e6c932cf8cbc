"""The method itself, on plain arrays: no model code is imported here.

- ``leader``: leader clustering of unit rows: the definition (a plain reference loop) and the public calls;
  ``_engine``, private: the fast exact engine behind them;
- ``calibration``: the frozen spherical centre and the percentile threshold θ;
- ``dictionary``: the ``Dictionary`` (a Voronoi partition around exemplars) and its file format;
- ``config``: ``BuildConfig``, every setting of a build and its defaults, kept in the dictionary's file;
- ``assignment``: ``Dictionary.assign_texts``'s result (every token of new texts with its region), and the
  hook through which ``ep.model`` gives it an extractor;
- ``batch``: ``ActivationBatch``, rows of activations with their document, position and token;
- ``rows``: the one check of an ``[N, d]`` matrix of rows;
- ``builder``: streaming construction of a dictionary from activation batches;
- ``published``: the paper's published dictionaries, opened without running code from the file;
- ``metrics``: detection metrics (AUROC) shared by the studies;
- ``device``: where to compute, in which float format, and on how many threads;
- ``files``: writes that leave the whole old file or the whole new one, canonical JSON, sha256, the cache folder.
"""
