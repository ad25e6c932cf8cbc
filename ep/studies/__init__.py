"""One module per demonstration of the paper (OOD, refusal, base-vs-tuned matching, SAEs, probes,
AxBench). Each builds on ``ep.model``, ``ep.method`` and ``ep.data``; notebooks assemble them.
"""
