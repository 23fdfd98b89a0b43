"""``backdrop verify FILE [FILE...] [--json] [--ledger [LOCATION]] [--map DIR]``: read each image's invisible
watermark, look up and check its signed ledger record, and read its C2PA manifest. ``--ledger`` alone also checks
the home's whole ledger; ``--ledger LOCATION`` (a ``postgresql://`` URL or an SQLite file ending in .sqlite3, .sqlite
or .db) looks the IDs up in that ledger and checks all of it. A value that is neither is taken as one more image.
Each image is read as a whole and, where that finds no mark, window by window, so a marked region pasted into
another picture is found too (as Backdrop Verify does); the report says how much of the image carries the mark.
``--map DIR`` also writes, per file, where in the image the mark reads (``DIR/<name>.watermark-map.png``: white =
marked, black = not; all black when no mark was found), e.g. to see the marked part of a spliced image or a crop.

Exit status: 0 when every file carries a mark whose record is in the ledger with a valid signature
and an intact chain (and, with ``--ledger``, the whole ledger verifies); 1 otherwise (unmarked,
unknown ID, tampered record, missing or unreadable file, a wiped ledger); 2 for usage errors, among them a
--home (or $BACKDROP_HOME) without keys: verify never creates keys.

verify only reads: the ledger is opened read-only and never changed. It warns (on stderr, and under
"warnings" in --json) when the ledger file is readable by other users or holds fewer records than the keys
signed (wiped, emptied or cut short).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ..runtime.errors import BackdropError


def add_verify_parser(subparsers) -> None:
    """Register the ``verify`` subcommand on the ``backdrop`` parser's subparsers."""
    verify = subparsers.add_parser("verify", help="check the invisible watermark, signed provenance record and C2PA "
                                   "manifest of images")
    verify.add_argument("files", nargs="*", type=Path, help="images (PNG, JPEG, WebP, TIFF...) or folders of them")
    verify.add_argument("--json", action="store_true",
                        help='print {"files": [...], "ledger": ...} as JSON instead of text')
    verify.add_argument("--ledger", nargs="?", const="", default=None, metavar="LOCATION",
                        help="also check every record's signature and the whole hash chain; with LOCATION (a "
                             "postgresql://USER@HOST/DB URL or an .sqlite3/.sqlite/.db file) look the IDs up in that "
                             "ledger instead of the home's")
    verify.add_argument("--map", type=Path, default=None, metavar="DIR",
                        help="also write where each image's watermark reads as DIR/<name>.watermark-map.png "
                             "(white = marked); existing files are never overwritten")
    verify.add_argument("--home", type=Path, default=None,
                        help="provenance home with keys/ and ledger.sqlite3 "
                             "(default: $BACKDROP_HOME, else ~/.config/comfyui-backdrop)")


def run_verify(args: argparse.Namespace) -> int:
    from ..runtime.watermark.service import ProvenanceService, Verification
    from .inputs import collect_inputs

    check_ledger, location, paths = _ledger_option(args.ledger, list(args.files))
    if not paths:
        raise BackdropError("no images to verify: give image files or folders")
    # a --home typo is an error, never a new key set
    service = ProvenanceService(args.home, create_keys=False, ledger=location)
    files = collect_inputs(paths)
    if not files:
        raise BackdropError("no images to verify")
    results: list[Verification] = []
    maps: dict[str, str] = {}
    for path in files:
        results.append(_verify_one(service, path))
        if args.map is not None and not results[-1].error:
            maps[results[-1].source] = str(_write_map(results[-1], path, args.map))
    ledger = service.ledger.verify() if check_ledger else None
    warnings = _ledger_warnings(service, ledger)
    failed = [r for r in results if not _verified(r)]
    ok = not failed and (ledger is None or ledger.ok)
    if args.json:
        document = {"files": [{**r.to_json_dict(), **({"map": maps[r.source]} if r.source in maps else {})}
                              for r in results], "ledger": None if ledger is None else {
            "records": ledger.records, "signature": ledger.signature, "chain": ledger.chain,
            "problems": ledger.problems, "ok": ledger.ok, "file_state": ledger.file_state,
            "witnessed_seq": ledger.witnessed_seq, **_source(service)}, "ledger_source": _source(service),
            "warnings": warnings}
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        for result in results:
            print(result.summary())
            if result.source in maps:
                print(f"  map: {maps[result.source]}")
        if ledger is not None:
            state = "" if ledger.file_state == "ok" else f" (file {ledger.file_state})"
            print(f"ledger {service.ledger.location} ({service.ledger.backend}): {ledger.records} record(s){state}; "
                  f"signatures {ledger.signature}; chain {ledger.chain}")
            for problem in ledger.problems:
                print(f"  problem: {problem}")
    for warning in warnings:
        print(f"warning: {warning}", file=sys.stderr)
    if failed:
        print(f"{len(failed)} of {len(results)} file(s) did not verify", file=sys.stderr)
    return 0 if ok else 1


def _ledger_option(value: str | None, files: list[Path]) -> tuple[bool, str | None, list[Path]]:
    """(check the whole ledger, its location or None for the home's, the files) from ``--ledger [LOCATION]``.

    argparse hands ``--ledger photo.png`` the image as its value: only a database URL or an SQLite file name is a
    location; anything else goes back to the files.
    """
    from ..runtime.provenance.ledger_backends import looks_like_ledger

    if value is None:
        return False, None, files
    if value == "":
        return True, None, files
    if looks_like_ledger(value):
        return True, value, files
    return True, None, [*files, Path(value)]


def _source(service) -> dict[str, str]:
    """Which ledger was read, safe to show (a URL without its password)."""
    return {"backend": service.ledger.backend, "location": service.ledger.location}


def _write_map(result, path: Path, folder: Path) -> Path:
    """Write ``result``'s presence mask as an 8-bit gray PNG in ``folder`` (created if needed; never overwrites:
    a taken name gets -1, -2...)."""
    from ..runtime.files import write_bytes_exclusive

    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BackdropError(f"--map: cannot create the folder {folder}: {exc}") from exc
    return write_bytes_exclusive(folder / f"{path.stem}.watermark-map.png", result.presence_png())


def _verify_one(service, path: Path):
    """One file's Verification, with where the mark is (the region search included); a missing or unreadable file
    is reported as not checked, saying which."""
    from ..runtime.watermark.service import Verification

    if not path.exists():
        why = (f"{path} does not exist (a link to a missing file)" if path.is_symlink()
               else f"{path} does not exist")
        return Verification(source=str(path), error=why, message=why)
    if not path.is_file():
        why = f"{path} is not a file"
        return Verification(source=str(path), error=why, message=why)
    try:
        return service.verify_file(path, localise=True)
    except (BackdropError, OSError, ValueError) as exc:
        why = f"unreadable: {exc}"
        return Verification(source=str(path), error=why, message=why)


def _ledger_warnings(service, ledger) -> list[str]:
    """File-mode warnings, and (without --ledger, whose report carries them) a wiped or cut-short ledger."""
    warnings = list(service.ledger.file_warnings() if ledger is None else ledger.warnings)
    if ledger is None:
        warnings.extend(service.ledger.integrity_problems())
    return warnings


def _verified(result) -> bool:
    """Marked, with a record in this ledger whose signature is valid and whose chain is intact."""
    return result.found and result.record is not None and not result.tampered
