"""The application layer: the ``backdrop`` command line (argument parsing, run plans, progress, summaries).

The only package that may import runtime/, export/ and nodes/ together.
"""
