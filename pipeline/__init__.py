"""actrec: action recognition in video as a two-stage feature-caching pipeline."""

__version__ = "0.1.0"
