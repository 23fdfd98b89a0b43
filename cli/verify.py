"""``backdrop verify FILE [FILE...] [--json] [--ledger]``: read each image's invisible watermark, look
up and check its signed ledger record, and read its C2PA manifest.

Exit status: 0 when every file carries a mark whose record is in the ledger with a valid signature
and an intact chain (and, with ``--ledger``, the whole ledger verifies); 1 otherwise (unmarked,
unknown ID, tampered record, unreadable file); 2 for usage errors.
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
    verify.add_argument("files", nargs="+", type=Path, help="images (PNG, JPEG, WebP, TIFF...) or folders of them")
    verify.add_argument("--json", action="store_true",
                        help='print {"files": [...], "ledger": ...} as JSON instead of text')
    verify.add_argument("--ledger", action="store_true",
                        help="also check every record's signature and the whole hash chain")
    verify.add_argument("--home", type=Path, default=None,
                        help="provenance home with keys/ and ledger.sqlite3 "
                             "(default: $BACKDROP_HOME, else ~/.config/comfyui-backdrop)")


def run_verify(args: argparse.Namespace) -> int:
    from ..runtime.watermark.service import ProvenanceService, Verification
    from .inputs import collect_inputs

    service = ProvenanceService(args.home)
    files = collect_inputs(args.files)
    if not files:
        raise BackdropError("no images to verify")
    results: list[Verification] = []
    for path in files:
        try:
            results.append(service.verify_file(path))
        except (BackdropError, OSError, ValueError) as exc:
            results.append(Verification(source=str(path), message=f"unreadable: {exc}"))
    ledger = service.ledger.verify() if args.ledger else None
    failed = [r for r in results if not _verified(r)]
    ok = not failed and (ledger is None or ledger.ok)
    if args.json:
        document = {"files": [r.to_json_dict() for r in results], "ledger": None if ledger is None else {
            "records": ledger.records, "signature": ledger.signature, "chain": ledger.chain,
            "problems": ledger.problems, "ok": ledger.ok}}
        print(json.dumps(document, indent=2, ensure_ascii=False))
    else:
        for result in results:
            print(result.summary())
        if ledger is not None:
            print(f"ledger {service.ledger.path}: {ledger.records} record(s); signatures {ledger.signature}; "
                  f"chain {ledger.chain}")
            for problem in ledger.problems:
                print(f"  problem: {problem}")
    if failed:
        print(f"{len(failed)} of {len(results)} file(s) did not verify", file=sys.stderr)
    return 0 if ok else 1


def _verified(result) -> bool:
    """Marked, with a record in this ledger whose signature is valid and whose chain is intact."""
    return result.found and result.record is not None and not result.tampered
