"""Interpretation tools, imported from the submodules: class activation maps (cam), CAM quality
metrics (metrics), effective receptive fields (erf), pictures (plots), CIFS's channel-activation
analysis (channels)."""
