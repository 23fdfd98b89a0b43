"""Snapshot the core ComfyUI node definitions our workflows use, from a running ComfyUI.

Tests validate workflows/ against this file, so they never need a ComfyUI install. Only the core nodes
we name (plus any non-Backdrop node a workflow under --workflows names) are kept. Combo lists that depend
on the machine (model files, input images) are emptied and marked ``"_dynamic": true`` so the snapshot
is the same on every machine. Standard library only.

    python docs/make_core_node_snapshot.py --url http://127.0.0.1:8188 --out tests/data/comfyui_core_nodes.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CORE_NODES = (
    "LoadImage", "SaveImage", "PreviewImage", "CheckpointLoaderSimple", "CLIPTextEncode", "VAEEncodeForInpaint",
    "VAEEncode", "SetLatentNoiseMask", "InpaintModelConditioning", "KSampler", "VAEDecode", "ImageScale",
    "ImageScaleBy", "LoraLoader", "ImageCompositeMasked", "InvertMask", "EmptyLatentImage",
    "UNETLoader", "DualCLIPLoader", "VAELoader", "FluxGuidance", "DifferentialDiffusion", "LoraLoaderModelOnly",
)  # fmt: skip

# Combos that list files on the machine even when the list happens to be empty at snapshot time.
KNOWN_DYNAMIC = {("LoadImage", "image"), ("CheckpointLoaderSimple", "ckpt_name"), ("LoraLoader", "lora_name"),
                 ("UNETLoader", "unet_name"), ("DualCLIPLoader", "clip_name1"), ("DualCLIPLoader", "clip_name2"),
                 ("VAELoader", "vae_name"), ("LoraLoaderModelOnly", "lora_name")}
UPLOAD_FLAGS = ("image_upload", "video_upload", "audio_upload", "remote")
OWN_PREFIX = "Backdrop"


def get_json(url: str, timeout: float = 60.0):
    with urllib.request.urlopen(url, timeout=timeout) as reply:
        return json.load(reply)


def model_file_names(base: str) -> set[str]:
    """Every file name ComfyUI lists in its model folders (GET /models, /models/<folder>)."""
    names: set[str] = set()
    try:
        folders = get_json(f"{base}/models")
    except OSError:
        return names
    for folder in folders:
        try:
            names.update(get_json(f"{base}/models/{urllib.parse.quote(folder)}"))
        except OSError:
            continue
    return names


def workflow_node_types(folder: Path) -> set[str]:
    """Node types named by UI-format (nodes[].type) and API-format (*.class_type) workflows in a folder."""
    types: set[str] = set()
    for path in sorted(folder.rglob("*.json")) if folder.is_dir() else []:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict) and isinstance(data.get("nodes"), list):
            types.update(n["type"] for n in data["nodes"] if isinstance(n, dict) and "type" in n)
        elif isinstance(data, dict):
            types.update(n["class_type"] for n in data.values() if isinstance(n, dict) and "class_type" in n)
    return types


def _combo_values(spec: list) -> tuple[list | None, dict]:
    """(values, options) of a combo input in either the V1 ([values, opts]) or V3 ("COMBO") form."""
    options = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    if isinstance(spec[0], list):
        return spec[0], options
    if spec[0] == "COMBO" and isinstance(options.get("options"), list):
        return options["options"], options
    return None, options


def stabilise_input(node: str, name: str, spec: list, model_files: set[str]) -> list:
    """The input spec with a machine-dependent combo list replaced by [] and marked _dynamic."""
    values, options = _combo_values(spec)
    if values is None:
        return spec
    dynamic = (
        (node, name) in KNOWN_DYNAMIC
        or any(options.get(flag) for flag in UPLOAD_FLAGS)
        or not values  # a fixed combo is never empty: an empty one lists files that are not there
        or bool(model_files.intersection(v for v in values if isinstance(v, str)))
    )
    if not dynamic:
        return spec
    options = {**options, "_dynamic": True}
    if isinstance(spec[0], list):
        return [[], options]
    return ["COMBO", {**options, "options": []}]


def stabilise_node(node: str, info: dict, model_files: set[str]) -> dict:
    out = dict(info)
    out["input"] = {
        section: {name: stabilise_input(node, name, spec, model_files) for name, spec in inputs.items()}
        if isinstance(inputs, dict) and section != "hidden" else inputs
        for section, inputs in info.get("input", {}).items()
    }  # fmt: skip
    return out


def build_snapshot(base: str, wanted: set[str], from_workflows: set[str] = frozenset()) -> dict:
    """The snapshot of ``wanted`` (must all exist) and ``from_workflows`` (those not in /object_info are
    frontend-only nodes such as Note: listed under _source.frontend_only)."""
    object_info = get_json(f"{base}/object_info", timeout=300)
    missing = sorted(wanted - object_info.keys())
    if missing:
        raise SystemExit(f"ComfyUI at {base} has no node(s) {missing}: is it the right version, with all extras?")
    frontend_only = sorted(from_workflows - object_info.keys())
    wanted = wanted | (from_workflows & object_info.keys())
    stats = get_json(f"{base}/system_stats")["system"]
    model_files = model_file_names(base)
    snapshot: dict = {
        "_source": {
            "comfyui_version": stats.get("comfyui_version"),
            "frontend_version": stats.get("required_frontend_version"),
            "date": datetime.date.today().isoformat(),
            "made_by": "docs/make_core_node_snapshot.py",
            "note": "GET /object_info, core nodes only; combos marked _dynamic list machine files (emptied here)",
            "frontend_only": frontend_only,
        }
    }
    for node in sorted(wanted):
        snapshot[node] = stabilise_node(node, object_info[node], model_files)
    return snapshot


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default="http://127.0.0.1:8188", help="a running ComfyUI")
    parser.add_argument("--out", type=Path, default=ROOT / "tests" / "data" / "comfyui_core_nodes.json")
    parser.add_argument("--workflows", type=Path, default=ROOT / "workflows",
                        help="also keep every non-Backdrop node these workflows name")
    parser.add_argument("--node", action="append", default=[], help="keep this node too (repeatable)")
    args = parser.parse_args(argv)

    from_workflows = {t for t in workflow_node_types(args.workflows) if not t.startswith(OWN_PREFIX)}
    snapshot = build_snapshot(args.url.rstrip("/"), set(CORE_NODES) | set(args.node), from_workflows)
    text = json.dumps(snapshot, indent=1, ensure_ascii=False) + "\n"
    args.out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=args.out.name, suffix=".tmp", dir=args.out.parent)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, args.out)  # a generated file: replacing it (atomically) is the point
    source = snapshot["_source"]
    print(f"wrote {args.out}: {len(snapshot) - 1} nodes from ComfyUI {source['comfyui_version']}"
          + (f"; frontend-only (not in /object_info): {', '.join(source['frontend_only'])}"
             if source["frontend_only"] else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
