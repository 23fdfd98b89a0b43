"""Exit codes shared by every ``backdrop`` command."""

OK = 0
SOME_FAILED = 1  # some inputs failed; the others were processed
USAGE = 2  # bad options, missing models: nothing was processed
INTERRUPTED = 130  # Ctrl-C (128 + SIGINT), as shells report it
