"""Zero-shot classification of an OpenCLIP cache with the same model's text tower: ``prompts.py`` (class names ->
prompts, no torch), ``text.py`` (class embeddings, kept on disk with their fingerprint), ``run.py`` (``actrec
zeroshot``: the test list scored, evaluate's metrics and run dir)."""
