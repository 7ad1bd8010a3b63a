"""`actrec serve`: a local web page to look at runs: predict on a video, browse the test errors, compare runs."""
