"""Answers from a cache without training: zero-shot classification of an OpenCLIP cache with the same model's text
tower and search by text or example. ``prompts.py`` (class names -> prompts, no torch), ``text.py`` (class
embeddings, kept on disk with their fingerprint), ``run.py`` (``actrec zeroshot``: the test list scored,
evaluate's metrics and run dir), ``search.py`` (``actrec search``: videos and time spans)."""
