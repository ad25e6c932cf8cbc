"""Model access: loading by name, chat formats, activation extraction, interventions, and the
one-call pipeline from a model and texts to a dictionary. Built on ``ep.method`` and ``ep.data``.
"""
