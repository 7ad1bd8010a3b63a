"""Features to and from other tools: ``actrec export`` writes a cache in their layouts, ``actrec import`` builds a
cache from theirs (``layouts.py``: the file layouts; ``exporting.py``; ``importing.py``). No torch: both read and
write arrays only."""
