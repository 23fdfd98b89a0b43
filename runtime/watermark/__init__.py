"""Invisible, keyed, blind watermark codec (weight-free, numpy/opencv)."""
