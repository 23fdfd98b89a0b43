"""The issue-14 bad-input battery: every probe against the ``backdrop`` CLI (a subprocess with a timeout) and the
nodes (in this process), as a hostile or careless user would try them. Prints a markdown table probe -> outcome.

    .venv/bin/python benchmarks/bad_inputs.py [--timeout 180] [--only WORD ...] [--keep]

Each row reads:

* ``clear error``: the command or node refused with a message saying what is wrong (CLI: a non-zero exit code,
  one line per failure, no traceback; nodes: a Backdrop error naming the node);
* ``defined result``: it did the documented thing (for example wrote the output under another name);
* ``FAIL: why``: a traceback in stderr, a hang (the timeout ran out), a leftover ``.tmp`` file, an extra ledger
  record, a changed input file, or an outcome that is neither of the above.

Every CLI probe runs in its own temp folder with its own provenance home (``BACKDROP_HOME``) and models folder,
and is checked for tracebacks, hangs, leftover temporary files, changed inputs and ledger records beyond those
of the images actually delivered. Bombs are generated in the temp folder (small on disk). The exit status is 1
when any row fails. Not collected by pytest; the lead reruns it when issue 14 closes.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import shutil
import signal
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as a script: make the shared test helpers (tests.*) importable
    sys.path.insert(0, str(ROOT))

CLEAR, DEFINED = "clear error", "defined result"
TRACEBACK = "Traceback (most recent call last)"
BACKDROP = ROOT / ".venv" / "bin" / "backdrop"


# ---- results ---------------------------------------------------------------------------------------------------------

@dataclass
class Row:
    probe: str
    outcome: str  # clear error | defined result | FAIL: why
    detail: str = ""
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.outcome.startswith("FAIL")


@dataclass
class Cli:
    """One ``backdrop`` run: exit code (None when it hung and was killed), output, time and peak memory."""

    rc: int | None
    out: str
    err: str
    seconds: float
    max_rss_mb: float

    @property
    def text(self) -> str:
        return self.out + "\n" + self.err

    def last_line(self) -> str:
        """The line that says what went wrong, if there is one, else the last line."""
        lines = [line.strip() for line in (self.out + "\n" + self.err).splitlines() if line.strip()]
        for words in (("error:", "FAILED", "not checked:"), ("problem:", "warning:")):
            for line in lines:
                if any(w in line for w in words):
                    return _short(line)
        return _short(lines[-1]) if lines else ""


@dataclass
class Workspace:
    """A probe's own folder, provenance home and models folder; inputs registered to be checked for changes."""

    root: Path
    timeout: float
    inputs: dict[Path, tuple[str, int, int]] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def models(self) -> Path:
        return self.root / "models"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(BACKDROP_HOME=str(self.home), BACKDROP_MODELS_DIR=str(self.models), PYTHONUNBUFFERED="1",
                   HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        return env

    def track(self, *paths: Path) -> None:
        """Remember these inputs: they must be byte-for-byte (and mode and mtime) the same afterwards."""
        for path in paths:
            self.inputs[path] = _fingerprint(path)

    def changed_inputs(self) -> list[str]:
        return [p.name for p, before in self.inputs.items() if _fingerprint(p) != before]

    def leftovers(self) -> list[str]:
        found = []
        for _dirpath, dirnames, filenames in os.walk(self.root):
            found += [n for n in filenames if n.endswith(".tmp")]
            found += [n for n in dirnames if n.startswith((".keys-", ".tmp"))]
        return found

    def records(self) -> int:
        return ledger_records(self.home / "ledger.sqlite3")

    def backdrop(self, *args: str, timeout: float | None = None, interrupt_when: Callable[[], bool] | None = None
                 ) -> Cli:
        return run_backdrop([str(a) for a in args], self.root, self.env(), timeout or self.timeout, interrupt_when)


def run_backdrop(args: list[str], cwd: Path, env: dict[str, str], timeout: float,
                 interrupt_when: Callable[[], bool] | None = None) -> Cli:
    """Run ``backdrop ARGS``; kill it after ``timeout`` s (rc None); SIGINT it once ``interrupt_when()`` is true."""
    command = [str(BACKDROP)] if BACKDROP.exists() else [sys.executable, "-m", "comfyui_backdrop.cli.main"]
    out_path, err_path = cwd / ".stdout.log", cwd / ".stderr.log"
    start = time.monotonic()
    killed, exited = threading.Event(), threading.Event()
    peak = [0.0]  # VmHWM polled while it runs: ru_maxrss would count the parent's pages shared before exec
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        process = subprocess.Popen([*command, *args], cwd=cwd, env=env, stdout=out, stderr=err)

        def watchdog() -> None:
            interrupted = False
            while not exited.wait(0.02):
                peak[0] = max(peak[0], _peak_rss_mb(process.pid))
                if time.monotonic() - start > timeout:  # a hang, interrupted or not
                    killed.set()
                    process.kill()
                    return
                if interrupt_when is not None and not interrupted and interrupt_when():
                    process.send_signal(signal.SIGINT)
                    interrupted = True

        thread = threading.Thread(target=watchdog, daemon=True)
        thread.start()
        _, status, _ = os.wait4(process.pid, 0)
        exited.set()
        process.returncode = os.waitstatus_to_exitcode(status)
        thread.join(timeout=5)
    seconds = time.monotonic() - start
    rc = None if killed.is_set() else process.returncode
    text_out = out_path.read_text(errors="replace")
    text_err = err_path.read_text(errors="replace")
    out_path.unlink()
    err_path.unlink()
    return Cli(rc, text_out, text_err, seconds, peak[0])


def _peak_rss_mb(pid: int) -> float:
    """The process's peak resident memory so far (VmHWM), in MB; 0 once it has exited."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0.0


def judge(ws: Workspace, cli: Cli | None, want: str, mention: tuple[str, ...] = (), problems: list[str] | None = None,
          records: int = 0, detail: str = "") -> tuple[str, str]:
    """The row's outcome: FAIL with every general problem (traceback, hang, leftovers, changed inputs, extra
    records) and the probe's own, else ``want`` when the exit code and message fit it."""
    problems = list(problems or [])
    if cli is not None:
        if cli.rc is None:
            problems.append(f"hang: killed after {ws.timeout:.0f} s")
        if TRACEBACK in cli.err or TRACEBACK in cli.out:
            problems.append("traceback: " + _short(_traceback_tail(cli.err or cli.out)))
    if leftovers := ws.leftovers():
        problems.append(f"leftover temporary files: {', '.join(sorted(leftovers)[:3])}")
    if changed := ws.changed_inputs():
        problems.append(f"input changed: {', '.join(changed)}")
    if (found := ws.records()) != records:
        problems.append(f"{found} ledger record(s), expected {records}")
    if cli is not None and cli.rc is not None and not problems:
        text = cli.text.lower()
        missing = [m for m in mention if m.lower() not in text]
        if want == CLEAR and (cli.rc == 0 or missing):
            problems.append(f"exit {cli.rc}" + (f", message lacks {missing}" if missing else ", no error") +
                            f": {cli.last_line()!r}")
        elif want == DEFINED and (cli.rc != 0 or missing):
            problems.append(f"exit {cli.rc}" + (f", message lacks {missing}" if missing else "") +
                            f": {cli.last_line()!r}")
    if problems:
        return "FAIL: " + "; ".join(problems), detail
    shown = detail or (cli.last_line() if cli is not None else "")
    return want, shown


# ---- input files --------------------------------------------------------------------------------------------------

def product_photo(height: int = 256, width: int = 320, seed: int = 3) -> np.ndarray:
    from tests.fixtures.images import studio_product_photo

    return studio_product_photo(height, width, seed=seed)[0]


def write_png(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rgb).save(path)
    return path


def png_bomb(path: Path, width: int, height: int) -> Path:
    """A valid 8-bit grey PNG of width x height zeros, a few MB on disk, written without ever holding the pixels:
    one deflate chunk of 16 MiB of zeros is compressed once and repeated (each chunk only refers back into itself)."""
    raw = height * (width + 1)  # each row: filter byte 0, then the pixels
    block = 1 << 24
    full, rest = divmod(raw, block)
    compressor = zlib.compressobj(9, zlib.DEFLATED, -15)
    chunk = compressor.compress(bytes(block)) + compressor.flush(zlib.Z_SYNC_FLUSH)
    tail = zlib.compressobj(9, zlib.DEFLATED, -15)
    body = chunk * full + tail.compress(bytes(rest)) + tail.flush(zlib.Z_FINISH)
    adler = ((raw % 65521) << 16) | 1  # adler32 of `raw` zero bytes
    idat = b"\x78\xda" + body + struct.pack(">I", adler)

    def png_chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                     + png_chunk(b"IDAT", idat) + png_chunk(b"IEND", b""))
    return path


def huge_file(path: Path, size: int) -> Path:
    """A sparse file of ``size`` bytes that starts like a small PNG (nothing is written beyond the header)."""
    write_png(path, product_photo(64, 64))
    with open(path, "r+b") as fh:
        fh.truncate(size)
    return path


def marked_file(ws: Workspace, name: str = "marked.png") -> Path:
    """A watermarked PNG whose record is in the workspace's ledger (made in-process, as a delivered output)."""
    from comfyui_backdrop.runtime.provenance.records import RecordContent
    from comfyui_backdrop.runtime.saving import SaveOptions, save_image
    from comfyui_backdrop.runtime.watermark.service import ProvenanceService

    service = ProvenanceService(ws.home)
    result = service.mark(product_photo(256, 320, seed=11), RecordContent(account="battery", prompt="probe"))
    return save_image(result.image, ws.root / name, SaveOptions(), keys=service.keys,
                      binding=service.provenance_for).path


def ledger_records(path: Path) -> int:
    if not path.exists() or path.stat().st_size == 0:
        return 0
    try:
        con = sqlite3.connect(path.resolve().as_uri() + "?mode=ro", uri=True)
        try:
            return int(con.execute("SELECT COUNT(*) FROM records").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def _fingerprint(path: Path) -> tuple[str, int, int]:
    if path.is_symlink() and not path.exists():
        return f"link->{os.readlink(path)}", 0, 0
    if path.is_dir():
        return "dir", 0, path.stat().st_mode
    stat = path.stat()
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest(), stat.st_mtime_ns, stat.st_mode


def _short(text: str, limit: int = 150) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _traceback_tail(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


# ---- CLI probes --------------------------------------------------------------------------------------------------

def probe_dangling_symlink(ws: Workspace) -> tuple[str, str]:
    good = write_png(ws.root / "good.png", product_photo())
    out = ws.root / "out"
    out.mkdir()
    link = out / "good_minimal-studio.png"
    link.symlink_to("/nonexistent/backdrop-probe")
    ws.track(good, link)
    cli = ws.backdrop("run", "good.png", "--out", "out", "--quiet", timeout=min(ws.timeout, 120))
    problems = []
    if not link.is_symlink() or os.readlink(link) != "/nonexistent/backdrop-probe":
        problems.append("the dangling link at the output name was replaced")
    written = sorted(p.name for p in out.iterdir() if p.is_file() and not p.is_symlink())
    if cli.rc == 0 and not written:
        problems.append("exit 0 but nothing written")
    want = DEFINED if cli.rc == 0 else CLEAR
    return judge(ws, cli, want, problems=problems, detail=f"wrote {', '.join(written)}" if written else "")


def probe_png_bomb_run(ws: Workspace) -> tuple[str, str]:
    bomb = png_bomb(ws.root / "bomb.png", 50_000, 50_000)
    good = write_png(ws.root / "good.png", product_photo())
    ws.track(bomb, good)
    cli = ws.backdrop("run", "bomb.png", "good.png", "--out", "out", "--quiet")
    problems = [] if (ws.root / "out" / "good_minimal-studio.png").is_file() else ["the batch stopped at the bomb"]
    if cli.rc not in (1, None):
        problems.append(f"exit {cli.rc} (expected 1: one input failed, the other written)")
    return judge(ws, cli, CLEAR, mention=("bomb.png", "pixels"), problems=problems,
                 detail=f"{bomb.stat().st_size / 1e6:.1f} MB file; " + _failed_line(cli, "bomb.png"))


def probe_png_bomb_verify(ws: Workspace) -> tuple[str, str]:
    bomb = png_bomb(ws.root / "bomb.png", 50_000, 50_000)
    marked = marked_file(ws)
    ws.track(bomb, marked)
    cli = ws.backdrop("verify", "bomb.png", "marked.png")
    problems = [] if "identical to the marked image" in cli.out else ["the good file was not verified"]
    return judge(ws, cli, CLEAR, mention=("pixels",), problems=problems, records=1)


def probe_16k_bomb_memory(ws: Workspace) -> tuple[str, str]:
    bomb = png_bomb(ws.root / "bomb16k.png", 16_000, 16_000)
    ws.track(bomb)
    cli = ws.backdrop("run", "bomb16k.png", "--out", "out", "--quiet")
    problems = [f"peak RSS {cli.max_rss_mb:.0f} MB: the pixels were decoded"] if cli.max_rss_mb > 2048 else []
    return judge(ws, cli, CLEAR, mention=("pixels",), problems=problems,
                 detail=f"peak RSS {cli.max_rss_mb:.0f} MB, {cli.seconds:.1f} s; " + _failed_line(cli, "bomb16k"))


def probe_exif_orientation(ws: Workspace) -> tuple[str, str]:
    from PIL import Image

    photo = ws.root / "phone.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated 90° clockwise: portrait
    Image.fromarray(product_photo(256, 320)).save(photo, quality=95, exif=exif)
    ws.track(photo)
    cli = ws.backdrop("run", "phone.jpg", "--out", "out", "--quiet")
    outputs = list((ws.root / "out").glob("phone_*.png")) if (ws.root / "out").is_dir() else []
    problems = []
    size = None
    if outputs:
        with Image.open(outputs[0]) as out:
            size = out.size
        if size != (256, 320):
            problems.append(f"output is {size[0]}x{size[1]}: orientation 6 ignored (expected 256x320)")
    elif cli.rc == 0:
        problems.append("no output")
    return judge(ws, cli, DEFINED, problems=problems, detail=f"stored 320x256, written {size[0]}x{size[1]}"
                 if size else "")


def probe_ctrl_c(ws: Workspace) -> tuple[str, str]:
    first = write_png(ws.root / "photos" / "p000.png", product_photo(512, 640))
    for i in range(1, 40):
        shutil.copyfile(first, ws.root / "photos" / f"p{i:03}.png")
    ws.track(*sorted((ws.root / "photos").iterdir()))
    out = ws.root / "out"

    def started() -> bool:
        return out.is_dir() and any(p.suffix == ".png" for p in out.iterdir())

    cli = ws.backdrop("run", "photos", "--out", "out", "--quiet", interrupt_when=started)
    written = sorted(p.name for p in out.iterdir()) if out.is_dir() else []
    problems = []
    if cli.rc != 130:
        problems.append(f"exit {cli.rc}, expected 130")
    if "not run" not in cli.err.lower() and "interrupted" not in cli.err.lower():
        problems.append("no summary of what was not run")
    listed = [name for name in written if name not in cli.out]
    if listed:
        problems.append(f"written but not listed: {', '.join(listed[:3])}")
    if len(written) >= 40:
        problems.append("the run finished before Ctrl-C arrived (probe inconclusive)")
    outcome, _ = judge(ws, cli, CLEAR, problems=problems)
    summary = (cli.err.strip().splitlines() or [""])[-1]
    return outcome, f"{len(written)} of 40 written and listed, exit {cli.rc}; {_short(summary)}"


def probe_huge_file_verify(ws: Workspace) -> tuple[str, str]:
    big = huge_file(ws.root / "huge.png", 1 << 30)
    marked_file(ws)
    ws.track(big)
    cli = ws.backdrop("verify", "huge.png")
    problems = [f"peak RSS {cli.max_rss_mb:.0f} MB: the file was read"] if cli.max_rss_mb > 600 else []
    return judge(ws, cli, CLEAR, mention=("huge.png",), problems=problems, records=1,
                 detail=f"1 GiB file: peak RSS {cli.max_rss_mb:.0f} MB, {cli.seconds:.1f} s; {cli.last_line()}")


def probe_zero_byte_ledger(ws: Workspace) -> tuple[str, str]:
    marked = marked_file(ws)
    ledger = ws.home / "ledger.sqlite3"
    ledger.write_bytes(b"")
    for suffix in ("-wal", "-shm"):
        ledger.with_name(ledger.name + suffix).unlink(missing_ok=True)
    ws.track(marked, ledger)
    cli = ws.backdrop("verify", "marked.png", "--ledger")
    problems = ["reads as intact"] if "chain intact" in cli.out else []
    return judge(ws, cli, CLEAR, mention=("wiped",), problems=problems,
                 detail=_short(next((line for line in cli.out.splitlines() if line.startswith("ledger")), "")))


def probe_verify_read_only(ws: Workspace) -> tuple[str, str]:
    marked = marked_file(ws)
    ledger = ws.home / "ledger.sqlite3"
    ws.track(marked, ledger)
    cli = ws.backdrop("verify", "marked.png", "--ledger")
    return judge(ws, cli, DEFINED, mention=("chain intact",), records=1,
                 detail="ledger bytes and mtime unchanged after verify --ledger")


def probe_out_is_a_file(ws: Workspace) -> tuple[str, str]:
    good = write_png(ws.root / "good.png", product_photo())
    target = ws.root / "notes.txt"
    target.write_text("the user's file")
    ws.track(good, target)
    cli = ws.backdrop("run", "good.png", "--out", "notes.txt", "--watermark", "--quiet")
    problems = [] if cli.rc == 2 else [f"exit {cli.rc}, expected one usage error (2) before any work"]
    return judge(ws, cli, CLEAR, mention=("--out",), problems=problems)


def probe_records_for_failed_saves(ws: Workspace) -> tuple[str, str]:
    good = write_png(ws.root / "good.png", product_photo())
    blocker = ws.root / "blocker"
    blocker.write_text("a file where the output folder's parent should be")
    ws.track(good, blocker)
    cli = ws.backdrop("run", "good.png", "--out", "blocker/out", "--watermark", "--quiet")
    return judge(ws, cli, CLEAR, records=0, detail=f"no record for the unsaved output; {cli.last_line()}")


def probe_pickle_checkpoint(ws: Workspace) -> tuple[str, str]:
    import torch

    marker = ws.root / "PICKLE-EXECUTED"
    (ws.models / "sams").mkdir(parents=True)

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"model": Payload()}, ws.models / "sams" / "evil.pth")
    good = write_png(ws.root / "good.png", product_photo())
    ws.track(good, ws.models / "sams" / "evil.pth")
    cli = ws.backdrop("run", "good.png", "--sam", "evil.pth", "--out", "out", "--quiet")
    problems = ["PICKLE EXECUTED"] if marker.exists() else []
    if "will likely succeed" in cli.text:
        problems.append("relays torch's advice to turn weights_only off")
    return judge(ws, cli, CLEAR, mention=("evil.pth",), problems=problems)


def probe_home_typo(ws: Workspace) -> tuple[str, str]:
    marked = marked_file(ws)
    ws.track(marked)
    cli = ws.backdrop("verify", "marked.png", "--home", "hoem")
    problems = ["created a key set in the typo folder"] if (ws.root / "hoem").exists() else []
    if "no watermark found" in cli.out:
        problems.append("says 'no watermark found'")
    return judge(ws, cli, CLEAR, mention=("no provenance keys", "hoem"), problems=problems, records=1)


def probe_missing_file(ws: Workspace) -> tuple[str, str]:
    marked_file(ws)
    cli = ws.backdrop("verify", "nope.png")
    problems = ["says 'no watermark found'"] if "no watermark found" in cli.out else []
    return judge(ws, cli, CLEAR, mention=("does not exist",), problems=problems, records=1)


def probe_animated_gif(ws: Workspace) -> tuple[str, str]:
    from PIL import Image

    frames = [Image.fromarray(product_photo(256, 320, seed=s)) for s in (1, 2)]
    gif = ws.root / "anim.gif"
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    ws.track(gif)
    cli = ws.backdrop("run", "anim.gif", "--out", "out", "--quiet")
    if cli.rc == 0:  # flattened: fine only when a stated rule says so
        return judge(ws, cli, DEFINED, mention=("frame",))
    return judge(ws, cli, CLEAR, mention=("anim.gif", "frame"))


def probe_transparent_rgba(ws: Workspace) -> tuple[str, str]:
    from PIL import Image

    rgba = np.dstack([product_photo(), np.zeros((256, 320), np.uint8)])
    path = ws.root / "cutout.png"
    Image.fromarray(rgba, "RGBA").save(path)
    ws.track(path)
    cli = ws.backdrop("run", "cutout.png", "--out", "out", "--quiet")
    if cli.rc == 0:  # a result is fine only with a warning that the cut-out is empty
        return judge(ws, cli, DEFINED, mention=("transparent",))
    return judge(ws, cli, CLEAR, mention=("transparent",))


# ---- in-process probes (nodes, model folders) -------------------------------------------------------------------

class NodeProbe:
    """Runs nodes with a headless host whose folders and provenance home are in the workspace."""

    def __init__(self, ws: Workspace):
        from comfyui_backdrop.nodes.comfy_host import HostedNode
        from comfyui_backdrop.runtime.host import HeadlessHost

        self.ws = ws
        (ws.root / "input").mkdir(exist_ok=True)
        (ws.root / "output").mkdir(exist_ok=True)
        self._host_before = HostedNode.__dict__.get("host")
        self._home_before = os.environ.get("BACKDROP_HOME")
        HostedNode.host = HeadlessHost(ws.root / "input", ws.root / "output")
        os.environ["BACKDROP_HOME"] = str(ws.home)

    def close(self) -> None:
        from comfyui_backdrop.nodes.comfy_host import HostedNode

        HostedNode.host = self._host_before
        if self._home_before is None:
            os.environ.pop("BACKDROP_HOME", None)
        else:
            os.environ["BACKDROP_HOME"] = self._home_before


def node_outcome(call: Callable[[], object], mention: tuple[str, ...]) -> tuple[str, str]:
    """CLEAR when ``call`` raises a Backdrop error mentioning everything in ``mention``; FAIL otherwise."""
    from comfyui_backdrop.runtime.errors import BackdropError

    try:
        call()
    except BackdropError as exc:
        missing = [m for m in mention if m not in str(exc)]
        if missing:
            return f"FAIL: message lacks {missing}", _short(str(exc))
        return CLEAR, _short(str(exc))
    except Exception as exc:  # anything else is what the battery looks for
        return f"FAIL: raw {type(exc).__name__}", _short(str(exc))
    return "FAIL: accepted", ""


def _nodes_taking_masks() -> dict[str, Callable]:
    from comfyui_backdrop.nodes.backdrop import BackdropStudioBackdrop
    from comfyui_backdrop.nodes.captioning import BackdropCaption
    from comfyui_backdrop.nodes.inpainting import BackdropComposite, BackdropInpaint
    from comfyui_backdrop.nodes.watermark import BackdropWatermark

    return {
        "BackdropStudioBackdrop": lambda i, m: BackdropStudioBackdrop().render(i, m, "Minimal Studio", -1.0, -1.0, 0),
        "BackdropWatermark": lambda i, m: BackdropWatermark().mark(
            i, account="a", prompt="p", negative_prompt="", generation_seed=1, metadata="",
            if_already_marked="refuse", if_too_small="leave unmarked", strength=1.0, product_mask=m),
        "BackdropComposite": lambda i, m: BackdropComposite().composite(i, i, m, 4, 0.0),
        "BackdropInpaint": lambda i, m: BackdropInpaint().inpaint(None, i, m, "p", "n", 1, 0, 1, 1.0, "euler", 1.0),
        "BackdropCaption": lambda i, m: BackdropCaption().caption(i, "canvas_scene", "", 16, 1, False, 0.7, 0.9, 0,
                                                                product_mask=m),
    }


def _nodes_taking_images() -> dict[str, Callable]:
    from comfyui_backdrop.nodes.masking import BackdropProductMask
    from comfyui_backdrop.nodes.watermark import BackdropSave, BackdropVerify

    return {
        "BackdropProductMask": lambda i: BackdropProductMask().mask(i, True, "main", 0, False, 0.0),
        "BackdropVerify": lambda i: BackdropVerify().verify(image=i),
        "BackdropSave": lambda i: BackdropSave().save(i, "probe", "png", 95, "original", False),
    }


def node_mask_rule_probe(node: str) -> Callable[[Workspace], tuple[str, str]]:
    def probe(ws: Workspace) -> tuple[str, str]:
        import torch

        host = NodeProbe(ws)
        try:
            (a, b) = (product_photo(256, 320, seed=s) for s in (1, 2))
            images = torch.from_numpy(np.stack([a, b]).astype(np.float32) / 255.0)
            masks = torch.zeros(2, 256, 320)
            masks[:, 64:192, 96:224] = 1.0
            call = _nodes_taking_masks()[node]
            nan_image, nan_mask = images.clone(), masks.clone()
            nan_image[1, 5, 5, 0] = float("nan")
            nan_mask[0, 5, 5] = float("nan")
            checks = {
                "NaN image": node_outcome(lambda: call(nan_image, masks), (node, "image 2 of 2")),
                "NaN mask": node_outcome(lambda: call(images, nan_mask), (node, "mask 1 of 2")),
                "1:1 mask on 5:4 images": node_outcome(lambda: call(images, torch.ones(1, 256, 256)),
                                                        (node, "aspect ratio")),
            }
            failures = [f"{what}: {outcome[6:]} {detail}" for what, (outcome, detail) in checks.items()
                        if outcome != CLEAR]
            if node != "BackdropInpaint":  # Inpaint needs a real pipeline; tests/runtime/test_inpainting covers it
                try:
                    call(images, masks[:, ::2, ::2].contiguous())
                except Exception as exc:
                    failures.append(f"half-size mask of the same aspect refused: {_short(str(exc), 80)}")
            if failures:
                return "FAIL: " + "; ".join(failures), ""
            records = ws.records()
            if node == "BackdropWatermark":
                records -= 2  # the accepted half-size-mask call marks and records its two images
            if records:
                return f"FAIL: {records} ledger record(s) from refused calls", ""
            return CLEAR, "NaN image / NaN mask / other aspect refused naming the node; same aspect resized"
        finally:
            host.close()

    return probe


def node_nan_image_probe(node: str) -> Callable[[Workspace], tuple[str, str]]:
    def probe(ws: Workspace) -> tuple[str, str]:
        import torch

        host = NodeProbe(ws)
        try:
            images = torch.from_numpy(np.stack([product_photo(seed=1)] * 2).astype(np.float32) / 255.0)
            images[1, 5, 5, 0] = float("nan")
            outcome, detail = node_outcome(lambda: _nodes_taking_images()[node](images), (node, "image 2 of 2"))
            if any((ws.root / "output").iterdir()):
                return "FAIL: wrote files for a batch holding NaN", detail
            return outcome, detail
        finally:
            host.close()

    return probe


def probe_watermark_batch_all_or_nothing(ws: Workspace) -> tuple[str, str]:
    import torch

    from comfyui_backdrop.nodes.watermark import BackdropWatermark

    host = NodeProbe(ws)
    try:
        settings = dict(account="a", prompt="p", negative_prompt="", generation_seed=1, metadata="",
                        if_already_marked="refuse", if_too_small="leave unmarked", strength=1.0)
        photos = torch.from_numpy(np.stack([product_photo(seed=1), product_photo(seed=2)]).astype(np.float32) / 255)
        marked, _, _ = BackdropWatermark().mark(photos[:1], **settings)
        before = ws.records()
        outcome, detail = node_outcome(lambda: BackdropWatermark().mark(torch.cat([photos[1:], marked]), **settings),
                                       ("if_already_marked", "image 2 of 2"))
        extra = ws.records() - before
        if extra:
            return f"FAIL: {extra} record(s) written for a refused batch", detail
        return outcome, detail
    finally:
        host.close()


def probe_nested_metadata(ws: Workspace) -> tuple[str, str]:
    import torch

    from comfyui_backdrop.nodes.watermark import BackdropWatermark

    host = NodeProbe(ws)
    try:
        photo = torch.from_numpy(product_photo(seed=1)[None].astype(np.float32) / 255)
        deep = '{"a": ' + "[" * 2000 + "]" * 2000 + "}"
        outcome, detail = node_outcome(lambda: BackdropWatermark().mark(
            photo, account="a", prompt="p", negative_prompt="", generation_seed=1, metadata=deep,
            if_already_marked="refuse", if_too_small="leave unmarked", strength=1.0), ("metadata",))
        if ws.records():
            return "FAIL: a record was written", detail
        return outcome, detail
    finally:
        host.close()


def probe_bomb_in_image_folder(ws: Workspace) -> tuple[str, str]:
    from comfyui_backdrop.nodes.images import BackdropLoadImageFolder

    host = NodeProbe(ws)
    try:
        folder = ws.root / "input" / "catalog"
        folder.mkdir()
        png_bomb(folder / "bomb.png", 50_000, 50_000)
        write_png(folder / "good.png", product_photo())
        ws.track(folder / "bomb.png", folder / "good.png")
        try:
            _, names, report = BackdropLoadImageFolder().load("catalog", 0, 0)
        except Exception as exc:
            return f"FAIL: {type(exc).__name__} instead of skipping the bomb", _short(str(exc))
        if names != ["good"] or "bomb.png" not in report:
            return f"FAIL: loaded {names}, report {report!r}", ""
        problems = ws.changed_inputs()
        if problems:
            return f"FAIL: input changed: {problems}", ""
        return DEFINED, _short(report.replace("\n", "; "))
    finally:
        host.close()


def probe_symlinked_model_folder(ws: Workspace) -> tuple[str, str]:
    from comfyui_backdrop.runtime.models import ModelLocator

    real = ws.root / "shared-models" / "sams"
    real.mkdir(parents=True)
    (real / "tiny_sam.safetensors").write_bytes(b"placeholder")
    (ws.models / "sams").mkdir(parents=True)
    (ws.models / "sams" / "linked").symlink_to(real, target_is_directory=True)
    listed = ModelLocator.from_models_dir(ws.models).list("sams")
    if "linked/tiny_sam.safetensors" not in listed:
        return "FAIL: a symlinked sub-folder is not listed (ComfyUI follows it)", f"listed: {listed}"
    return DEFINED, "models/sams/linked -> elsewhere: linked/tiny_sam.safetensors listed"


def _failed_line(cli: Cli, name: str) -> str:
    return next((_short(line, 110) for line in cli.err.splitlines() if name in line and "FAILED" in line), "")


# ---- the battery ---------------------------------------------------------------------------------------------------

PROBES: list[tuple[str, Callable[[Workspace], tuple[str, str]]]] = [
    ("dangling symlink at an output name (run)", probe_dangling_symlink),
    ("PNG bomb 50000² in a batch (run)", probe_png_bomb_run),
    ("PNG bomb 50000² (verify)", probe_png_bomb_verify),
    ("PNG bomb 50000² in a folder (BackdropLoadImageFolder)", probe_bomb_in_image_folder),
    ("16000² bomb: memory before decoding (run)", probe_16k_bomb_memory),
    ("EXIF orientation 6 (run)", probe_exif_orientation),
    ("Ctrl-C during a batch (run)", probe_ctrl_c),
    ("1 GiB file (verify)", probe_huge_file_verify),
    ("zero-byte ledger that held records (verify --ledger)", probe_zero_byte_ledger),
    ("verify leaves the ledger unchanged (verify --ledger)", probe_verify_read_only),
    ("--out is a file (run --watermark)", probe_out_is_a_file),
    ("no record for an output that failed to save (run --watermark)", probe_records_for_failed_saves),
    ("no record from a refused batch [unmarked, marked] (BackdropWatermark)", probe_watermark_batch_all_or_nothing),
    *[(f"mask aspect / NaN ({node})", node_mask_rule_probe(node)) for node in
      ("BackdropStudioBackdrop", "BackdropWatermark", "BackdropComposite", "BackdropInpaint", "BackdropCaption")],
    *[(f"NaN image ({node})", node_nan_image_probe(node)) for node in
      ("BackdropProductMask", "BackdropVerify", "BackdropSave")],
    ("pickle checkpoint with code (run --sam)", probe_pickle_checkpoint),
    ("metadata JSON nested 2000 deep (BackdropWatermark)", probe_nested_metadata),
    ("--home typo (verify)", probe_home_typo),
    ("missing file (verify)", probe_missing_file),
    ("animated GIF (run)", probe_animated_gif),
    ("fully transparent RGBA cut-out (run)", probe_transparent_rgba),
    ("symlinked model sub-folder (models/sams)", probe_symlinked_model_folder),
]


def run_battery(only: list[str], timeout: float, keep: bool) -> list[Row]:
    rows = []
    base = Path(tempfile.mkdtemp(prefix="backdrop-bad-inputs-"))
    try:
        for index, (name, probe) in enumerate(PROBES, 1):
            if only and not any(word.lower() in name.lower() for word in only):
                continue
            ws = Workspace(base / f"{index:02d}", timeout)
            ws.root.mkdir()
            start = time.monotonic()
            try:
                outcome, detail = probe(ws)
            except Exception as exc:  # a broken probe is a failed row
                outcome, detail = f"FAIL: the probe itself raised {type(exc).__name__}", _short(str(exc))
            rows.append(Row(name, outcome, detail, time.monotonic() - start))
            print(f"[{index:02d}/{len(PROBES)}] {name}: {outcome} ({rows[-1].seconds:.1f} s)", file=sys.stderr,
                  flush=True)
    finally:
        if keep:
            print(f"probe folders kept in {base}", file=sys.stderr)
        else:
            shutil.rmtree(base, ignore_errors=True)
    return rows


def markdown(rows: list[Row]) -> str:
    lines = ["| # | probe | outcome | detail | s |", "|---|---|---|---|---|"]
    for i, row in enumerate(rows, 1):
        cells = [str(i), row.probe, row.outcome, row.detail, f"{row.seconds:.1f}"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    failed = sum(r.failed for r in rows)
    lines.append("")
    lines.append(f"{len(rows) - failed} of {len(rows)} probes read 'clear error' or 'defined result'; {failed} FAIL. "
                 f"CPU: {_cpu_name()}; Python {platform.python_version()}.")
    return "\n".join(lines)


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", nargs="*", default=[], help="run only probes whose name contains one of these words")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds before a CLI run counts as a hang")
    parser.add_argument("--keep", action="store_true", help="keep the probe folders (their path is printed)")
    args = parser.parse_args(argv)
    rows = run_battery(args.only, args.timeout, args.keep)
    print(markdown(rows))
    return 1 if any(r.failed for r in rows) else 0


if __name__ == "__main__":
    raise SystemExit(main())
