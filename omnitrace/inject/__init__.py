"""Fault injection and the matrix runner: signals by role, a GPU memory hog, HTTP load, the
per-row scenario driver and `omnitrace matrix run`. docs/matrix-run.md is the user's guide."""
