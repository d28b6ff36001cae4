"""Interpretation tools (activation analyses, CAMs, metrics); import from the submodules."""
