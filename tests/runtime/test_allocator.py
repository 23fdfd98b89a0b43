"""runtime/allocator.py: what the ``backdrop`` command does to malloc, checked in child processes (the test
process keeps its own allocator)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc malloc settings are Linux's")

CLEAN = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", "BACKDROP_ALLOCATOR", "LD_PRELOAD")}

# Two 30 MiB blocks allocated, written and freed, nine times over. Stock glibc trims the heap top once more than
# twice its (self-raised) mmap threshold is free, so each round faults the pages in again; tuned, it keeps them.
REUSE = """
import ctypes, json, resource, sys
from comfyui_backdrop.runtime.allocator import tune_allocator
state = tune_allocator(sys.argv[1])
libc = ctypes.CDLL(None)
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = (ctypes.c_void_p,)
size = 30 << 20
def round_():
    blocks = [libc.malloc(size) for _ in range(2)]
    for block in blocks:
        ctypes.memset(block, 1, size)
    for block in blocks:
        libc.free(block)
round_()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    round_()
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before, "state": state.to_dict()}))
"""


def _child(code: str, *args: str, env: dict | None = None) -> dict:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], env=env or CLEAN,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def _glibc() -> bool:
    import ctypes

    try:
        ctypes.CDLL(None).gnu_get_libc_version  # noqa: B018
    except AttributeError:
        return False
    return True


@pytest.mark.skipif(not _glibc(), reason="malloc is not glibc's")
def test_tuned_malloc_reuses_freed_blocks_that_stock_malloc_gives_back():
    stock = _child(REUSE, "stock")
    tuned = _child(REUSE, "tuned")
    pages = 8 * 2 * (30 << 20) // 4096  # what faulting every block in again costs, in 4 KiB pages
    assert stock["state"]["policy"] == "stock" and stock["faults"] > pages // 2
    assert tuned["state"]["policy"] == "tuned" and tuned["state"]["mmap_threshold"] == 32 << 20
    assert tuned["faults"] < pages // 20


@pytest.mark.skipif(not _glibc(), reason="malloc is not glibc's")
def test_the_command_tunes_its_process_and_children_while_main_alone_does_not():
    code = """
    import json, os, sys
    from comfyui_backdrop.cli import main as cli
    from comfyui_backdrop.runtime.allocator import allocator_state
    sys.argv = ["backdrop", "styles"]
    if os.environ.get("VIA") == "entry":
        code = cli.entry()
    else:
        code = cli.main(["styles"])
    print(json.dumps({"code": code, "tunables": os.environ.get("GLIBC_TUNABLES"),
                      "policy": allocator_state().policy}))
    """
    via_entry = _child(code, env={**CLEAN, "VIA": "entry"})
    assert via_entry["code"] == 0 and via_entry["policy"] == "tuned"
    assert via_entry["tunables"] == "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=134217728"
    via_main = _child(code)
    assert via_main["code"] == 0 and via_main["tunables"] is None
    assert via_main["policy"].startswith("stock")


@pytest.mark.skipif(not _glibc(), reason="malloc is not glibc's")
def test_what_the_user_set_wins_and_stock_or_another_malloc_changes_nothing():
    code = """
    import json, os
    from comfyui_backdrop.runtime.allocator import tune_allocator
    state = tune_allocator()
    print(json.dumps({"state": state.to_dict(), "line": state.describe(),
                      "tunables": os.environ.get("GLIBC_TUNABLES")}))
    """
    own = _child(code, env={**CLEAN, "GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"})
    assert own["state"]["mmap_threshold"] == 1 << 20 and own["state"]["trim_threshold"] == 128 << 20
    assert own["tunables"] == "glibc.malloc.mmap_threshold=1048576:glibc.malloc.trim_threshold=134217728"
    assert own["line"].endswith("tuned (mmap threshold 1 MiB, trim 128 MiB)")
    stock = _child(code, env={**CLEAN, "BACKDROP_ALLOCATOR": "stock"})
    assert stock["state"]["policy"] == "stock" and stock["tunables"] is None and stock["line"].endswith(", stock")
    preload = next((str(p) for pattern in ("libjemalloc.so*", "libtcmalloc*.so*")
                    for p in sorted(Path("/usr/lib").glob(f"*/{pattern}"))), None)
    if preload:  # another malloc in the process: nothing is tuned
        other = _child(code, env={**CLEAN, "LD_PRELOAD": preload})
        assert other["tunables"] is None and other["state"]["malloc"].endswith("(preloaded)")
        assert other["state"]["policy"].startswith("not tuned:")


def test_a_bad_policy_is_refused_by_the_command():
    entry = "from comfyui_backdrop.cli.main import entry; raise SystemExit(entry())"
    done = subprocess.run([sys.executable, "-c", entry], env={**CLEAN, "BACKDROP_ALLOCATOR": "fast"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "BACKDROP_ALLOCATOR='fast': use one of tuned, stock" in done.stderr


# Eight embeds of one 512 px photo after two warm-up calls, with nothing but numpy and the codec in the process
# (how much stock glibc faults depends on the picture's content: a photo does, noise or a flat sweep barely).
WATERMARK = """
import json, os, resource, sys
import numpy as np
from comfyui_backdrop.runtime.allocator import allocator_state, tune_allocator
from comfyui_backdrop.runtime.watermark import embed
picture = np.load(sys.argv[1])
if os.environ.get("THEN_EXPORT"):
    embed(picture, 7, b"allocator-test-key-0000")
    tune_allocator()  # what the backdrop command does: exports what the codec set
for _ in range(2):
    embed(picture, 7, b"allocator-test-key-0000")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(8):
    embed(picture, 7, b"allocator-test-key-0000")
print(json.dumps({"faults": resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before,
                  "policy": allocator_state().policy, "tunables": os.environ.get("GLIBC_TUNABLES")}))
"""


@pytest.mark.skipif(not _glibc(), reason="malloc is not glibc's")
def test_the_watermark_codec_tunes_its_process_without_exporting_and_stops_refaulting_its_heap(tmp_path):
    import cv2

    from tests.fixtures.watermark_images import skimage_photo

    photo = tmp_path / "astronaut.npy"
    np.save(photo, cv2.resize(skimage_photo("astronaut"), (512, 512), interpolation=cv2.INTER_AREA))
    tuned = _child(WATERMARK, str(photo))
    stock = _child(WATERMARK, str(photo), env={**CLEAN, "BACKDROP_ALLOCATOR": "stock"})
    assert tuned["policy"] == "tuned" and tuned["tunables"] is None  # this process only
    assert stock["policy"] == "stock"
    assert stock["faults"] > 8 * 256  # stock glibc faults its heap in again: > 1 MiB a call
    assert tuned["faults"] < stock["faults"] / 4
    exported = _child(WATERMARK, str(photo), env={**CLEAN, "THEN_EXPORT": "1"})
    assert exported["tunables"] == "glibc.malloc.mmap_threshold=33554432:glibc.malloc.trim_threshold=134217728"


def test_a_bad_policy_is_an_error_from_the_watermark_codec():
    code = ("import numpy as np\nfrom comfyui_backdrop.runtime.watermark import embed\n"
            "embed(np.zeros((256, 256, 3), np.uint8), 7, b'allocator-test-key-0000')")
    done = subprocess.run([sys.executable, "-c", code], env={**CLEAN, "BACKDROP_ALLOCATOR": "fast"},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1 and "InvalidInputError" in done.stderr
    assert "BACKDROP_ALLOCATOR='fast': use one of tuned, stock" in done.stderr
