"""Run the shipped API-format workflows on a real, running ComfyUI and say what it made of each.

For every workflow: the input images it names are uploaded from --inputs folders (POST /upload/image; a
file of the same name but other content is stored under a new name and the graph follows it, nothing on
the server is overwritten), the graph is queued (POST /prompt), and /history/<id> is polled. Printed per
workflow: accepted or ComfyUI's validation errors (node_errors), executed or the execution error, outputs.

    .venv/bin/python docs/check_workflows_live.py --url http://127.0.0.1:8188 --inputs assets \\
        --set "Load checkpoint.ckpt_name=sd-v1-5-inpainting.safetensors" [workflows/api/x.json ...]

``--set NODE.INPUT=VALUE`` (NODE = node id, title or class type) applies to every workflow that has that
node; it must match at least one. Values are typed from the server's /object_info. Exit status 0 only
when every workflow ran.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from comfyui_backdrop.runtime.errors import InvalidInputError
from comfyui_backdrop.runtime.imaging import image_files
from comfyui_backdrop.runtime.workflow.api_graph import (
    ApiGraph,
    apply_assignments,
    check_api_shape,
    parse_assignment,
    read_workflow_file,
)
from comfyui_backdrop.runtime.workflow.specs import NodeSpec, spec_from_object_info

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class Outcome:
    """What ComfyUI did with one workflow."""

    workflow: str
    accepted: bool = False
    executed: bool = False
    seconds: float = 0.0
    uploads: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    outputs: dict[str, Any] = field(default_factory=dict)


class Server:
    """The few ComfyUI HTTP endpoints the check needs."""

    def __init__(self, url: str):
        self.url = url.rstrip("/")

    def get(self, path: str, timeout: float = 60.0) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as reply:
            return json.load(reply)

    def post_json(self, path: str, payload: Any) -> tuple[int, Any]:
        request = urllib.request.Request(self.url + path, data=json.dumps(payload).encode(),
                                         headers={"Content-Type": "application/json"})
        return self._send(request)

    def upload_image(self, file: Path, subfolder: str) -> dict:
        """POST /upload/image without overwrite: ComfyUI keeps an identical file, renames a different one."""
        boundary = uuid.uuid4().hex
        fields = {"type": "input", "subfolder": subfolder}
        body = b"".join(f'--{boundary}\r\nContent-Disposition: form-data; name="{k}"\r\n\r\n{v}\r\n'.encode()
                        for k, v in fields.items())
        body += (f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{file.name}"\r\n'
                 "Content-Type: application/octet-stream\r\n\r\n").encode() + file.read_bytes()
        body += f"\r\n--{boundary}--\r\n".encode()
        request = urllib.request.Request(self.url + "/upload/image", data=body,
                                         headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
        status, reply = self._send(request)
        if status != 200:
            raise InvalidInputError(f"upload of {file} refused by ComfyUI (HTTP {status}): {reply}")
        return reply

    @staticmethod
    def _send(request: urllib.request.Request) -> tuple[int, Any]:
        try:
            with urllib.request.urlopen(request, timeout=120) as reply:
                return reply.status, json.load(reply)
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace")
            try:
                return exc.code, json.loads(text)
            except json.JSONDecodeError:
                return exc.code, text


def server_specs(object_info: dict) -> dict[str, NodeSpec]:
    return {name: spec_from_object_info(name, info) for name, info in object_info.items()}


def upload_inputs(server: Server, graph: ApiGraph, folders: list[Path]) -> list[str]:
    """Upload every file or folder of images a literal string input names and that an --inputs folder has.

    The graph is updated in place when ComfyUI stored a file under another name. Returns what was sent."""
    sent: list[str] = []
    for node in graph.values():
        for name, value in node["inputs"].items():
            if not isinstance(value, str) or not value.strip() or value.startswith(("/", "..")):
                continue
            local = next((f / value for f in folders if (f / value).exists()), None)
            if local is None:
                continue
            subfolder = str(Path(value).parent) if Path(value).parent != Path(".") else ""
            if local.is_file():
                stored = server.upload_image(local, subfolder)
                node["inputs"][name] = f"{subfolder}/{stored['name']}" if subfolder else stored["name"]
                sent.append(f"{value} -> {node['inputs'][name]}")
            elif local.is_dir():
                images = image_files(local)
                for image in images:
                    server.upload_image(image, value)
                sent.append(f"{value}/ ({len(images)} images)")
    return sent


def node_error_lines(graph: ApiGraph, reply: Any) -> list[str]:
    """ComfyUI's /prompt refusal as readable lines: the top error and each node's errors."""
    if not isinstance(reply, dict):
        return [str(reply)]
    lines = []
    top = reply.get("error")
    if isinstance(top, dict):
        lines.append(f"{top.get('type')}: {top.get('message')} {top.get('details') or ''}".rstrip())
    for node_id, info in (reply.get("node_errors") or {}).items():
        title = graph.get(node_id, {}).get("_meta", {}).get("title") or info.get("class_type")
        for error in info.get("errors", []):
            lines.append(f"node {node_id} ({title}): {error.get('message')}: {error.get('details')}")
    return lines or [json.dumps(reply)[:500]]


def wait_for_history(server: Server, prompt_id: str, timeout: float) -> dict | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        history = server.get(f"/history/{urllib.parse.quote(prompt_id)}")
        if prompt_id in history and history[prompt_id].get("status", {}).get("completed") is not None:
            return history[prompt_id]
        time.sleep(0.5)
    return None


def summarise_outputs(outputs: dict) -> dict[str, Any]:
    """Per output node: saved file names, or the other values it reported (texts, numbers)."""
    summary: dict[str, Any] = {}
    for node_id, output in outputs.items():
        files = [f"{i.get('subfolder') + '/' if i.get('subfolder') else ''}{i['filename']} ({i.get('type')})"
                 for i in output.get("images", []) if isinstance(i, dict) and "filename" in i]
        other = {k: v for k, v in output.items() if k != "images"}
        summary[node_id] = {"files": files, **other} if other else files
    return summary


def run_workflow(server: Server, path: Path, graph: ApiGraph, folders: list[Path], timeout: float) -> Outcome:
    outcome = Outcome(path.name)
    started = time.monotonic()
    try:
        outcome.uploads = upload_inputs(server, graph, folders)
    except (OSError, InvalidInputError) as exc:
        outcome.errors.append(f"upload failed: {exc}")
        return outcome
    status, reply = server.post_json("/prompt", {"prompt": graph, "client_id": uuid.uuid4().hex})
    if status != 200 or not isinstance(reply, dict) or "prompt_id" not in reply:
        outcome.errors = node_error_lines(graph, reply)
        return outcome
    outcome.accepted = True
    entry = wait_for_history(server, reply["prompt_id"], timeout)
    outcome.seconds = time.monotonic() - started
    if entry is None:
        server.post_json("/interrupt", {})
        outcome.errors.append(f"not finished after {timeout:.0f} s: interrupted")
        return outcome
    for event, data in entry.get("status", {}).get("messages", []):
        if event == "execution_error":
            outcome.errors.append(f"node {data.get('node_id')} ({data.get('node_type')}): "
                                  f"{data.get('exception_type')}: {data.get('exception_message', '').strip()}")
        elif event == "execution_interrupted":
            outcome.errors.append(f"interrupted at node {data.get('node_id')} ({data.get('node_type')})")
    outcome.executed = entry.get("status", {}).get("status_str") == "success" and not outcome.errors
    outcome.outputs = summarise_outputs(entry.get("outputs", {}))
    return outcome


def has_node(graph: ApiGraph, ref: str) -> bool:
    """True when ``ref`` is a node id, title or class type of the graph."""
    return ref in graph or any(ref in (n.get("_meta", {}).get("title"), n["class_type"]) for n in graph.values())


def prepared_graphs(paths: list[Path], assignments: list[str], specs: dict[str, NodeSpec]) -> dict[Path, ApiGraph]:
    """Each workflow with the --set assignments whose node it has; an assignment matching none is an error."""
    graphs = {p: check_api_shape(read_workflow_file(p), str(p)) for p in paths}
    for text in assignments:
        node_ref = parse_assignment(text)[0]
        matched = False
        for path, graph in graphs.items():
            if has_node(graph, node_ref):
                graphs[path] = apply_assignments(graph, [text], specs)  # an ambiguous NODE still raises here
                matched = True
        if not matched:
            raise InvalidInputError(f"--set {text!r}: no workflow has a node {node_ref!r}")
    return graphs


def print_outcome(outcome: Outcome) -> None:
    verdict = "RAN" if outcome.executed else ("FAILED" if outcome.accepted else "REFUSED")
    print(f"== {outcome.workflow}: {verdict}" + (f" in {outcome.seconds:.1f} s" if outcome.accepted else ""))
    for upload in outcome.uploads:
        print(f"   uploaded {upload}")
    print("   accepted by /prompt" if outcome.accepted else "   refused by /prompt (validation):")
    for error in outcome.errors:
        print(f"   ! {error}")
    for node_id, output in outcome.outputs.items():
        print(f"   output node {node_id}: {json.dumps(output)[:400]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workflows", nargs="*", type=Path, help="API-format files (default: workflows/api/*.json)")
    parser.add_argument("--url", default="http://127.0.0.1:8188", help="a running ComfyUI")
    parser.add_argument("--inputs", action="append", type=Path, default=[],
                        help="folder holding the images/folders the workflows name (repeatable)")
    parser.add_argument("--set", dest="assignments", action="append", default=[], metavar="NODE.INPUT=VALUE")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds per workflow before interrupting")
    parser.add_argument("--json", type=Path, default=None, help="also write the outcomes to this new file")
    args = parser.parse_args(argv)

    paths = args.workflows or sorted((ROOT / "workflows" / "api").glob("*.json"))
    if not paths:
        print("no API workflows found", file=sys.stderr)
        return 2
    server = Server(args.url)
    try:
        specs = server_specs(server.get("/object_info", timeout=300))
        graphs = prepared_graphs(paths, args.assignments, specs)
    except (OSError, InvalidInputError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    outcomes = []
    for path, graph in graphs.items():
        outcome = run_workflow(server, path, graph, args.inputs, args.timeout)
        print_outcome(outcome)
        outcomes.append(outcome)
    ran = sum(o.executed for o in outcomes)
    print(f"{ran} of {len(outcomes)} workflows ran")
    if args.json is not None:
        with args.json.open("x", encoding="utf-8") as handle:  # never overwrite an earlier report
            json.dump([o.__dict__ for o in outcomes], handle, indent=1)
    return 0 if ran == len(outcomes) else 1


if __name__ == "__main__":
    sys.exit(main())
