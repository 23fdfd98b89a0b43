"""Captions for product photos: a product caption and a *background* caption per image.

A local vision-language model from ``models/LLM`` (``loader.load_captioner``) writes them when one is
given; otherwise ``fallback`` builds them from image statistics, so everything works without weights.
``pipeline.caption_images`` / ``pipeline.caption_for_run`` are the entry points. Importing this package
is cheap: transformers is only imported when a model is loaded.
"""
