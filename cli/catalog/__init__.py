"""Catalog runs on Ray: ``backdrop run PHOTOS... --workers N [--ray-address ADDRESS]``.

* ``options.py``: the command-line options and the frozen :class:`CatalogOptions`.
* ``manifest.py``: the run manifest in the output folder (input hash x settings -> claimed names -> done), which
  makes a run resumable and each photo's files exactly-once.
* ``stages.py``: the Ray actor that runs one or more of the photo steps (prepare, generate, deliver) with its
  models loaded once.
* ``ray_run.py``: the driver: starts or joins Ray, streams the photos through Ray Data's ``map_batches`` actor
  pools, records every outcome in the manifest and shows one progress bar.
* ``workflow_run.py``: the same for ``--workflow W.json``: a workflow run a photo on actors that keep the workflow's
  models loaded, each published as one folder with an atomic rename.

Nothing here is imported by a run without ``--workers``: Ray's start-up cost is paid only by catalog runs.
"""
