"""Interpretation tools: class activation maps (cam), CAM quality metrics (metrics), effective
receptive fields (erf), pictures (plots)."""
