"""Writing, checking and publishing ONNX files: external data, exclusive names, no partial files.

Protobuf caps a single message at 2 GiB, so a model whose tensors pass ``EXTERNAL_DATA_THRESHOLD``
keeps them in one ``<file>.data`` beside the graph (4 KiB-aligned, so onnxruntime can memory-map it).
Tensors are streamed from the exporter's scattered per-tensor files into that one file without
loading the whole model. Files are written in a private temporary folder and hard-linked into place
under names that are free, so an existing model is never overwritten and no half-written model ever
appears under its final name.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..runtime.errors import InvalidModelError

if TYPE_CHECKING:
    import onnx

PROTOBUF_LIMIT = 2**31
EXTERNAL_DATA_THRESHOLD = PROTOBUF_LIMIT - (64 << 20)  # leave room for the graph itself
ALIGN = 4096
INLINE_LIMIT = 1024  # tensors smaller than this stay inside the graph


def data_file_name(model_name: str) -> str:
    return f"{model_name}.data"


def external_info(tensor: onnx.TensorProto) -> tuple[str, int, int | None]:
    """(location, offset, length or None) of an external tensor, read without onnx's path validation
    (our intermediate files may point at private spill files by absolute path)."""
    entries = {entry.key: entry.value for entry in tensor.external_data}
    length = entries.get("length")
    return entries.get("location", ""), int(entries.get("offset") or 0), int(length) if length else None


def tensor_bytes(model: onnx.ModelProto, base_dir: Path | None = None) -> int:
    """Bytes of all initializers, inline or external (``base_dir`` holds external files without a length)."""
    from onnx.external_data_helper import uses_external_data

    total = 0
    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            total += len(tensor.raw_data)
            continue
        location, offset, length = external_info(tensor)
        if length is None:  # the TorchScript exporter writes one file per tensor and no length
            total += (Path(base_dir or ".") / location).stat().st_size - offset
        else:
            total += length
    return total


def inline_external_tensors(model: onnx.ModelProto, base_dir: Path | None) -> None:
    """Read every external tensor into the graph (relative locations from ``base_dir``)."""
    from onnx import TensorProto
    from onnx.external_data_helper import uses_external_data

    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            payload = _tensor_payload(tensor, base_dir)
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
            tensor.raw_data = payload


def write_model(model: onnx.ModelProto, path: Path, source_dir: Path | None, external: bool) -> list[Path]:
    """Write ``model`` to ``path`` (plus ``<name>.data`` if ``external``); returns the files written.

    ``source_dir`` is where the model's current external tensors live. ``model`` is modified in place.
    """
    import onnx
    from onnx.external_data_helper import uses_external_data

    if not external:
        if any(uses_external_data(t) for t in model.graph.initializer):
            inline_external_tensors(model, source_dir or path.parent)
        if model.ByteSize() >= PROTOBUF_LIMIT:
            raise InvalidModelError(f"{path.name} is over 2 GiB: it must be saved with external data")
        onnx.save_model(model, str(path))
        return [path]
    data_path = path.with_name(data_file_name(path.name))
    with open(data_path, "wb") as out:
        for tensor in model.graph.initializer:
            payload = _tensor_payload(tensor, source_dir)
            if payload is None:
                continue
            out.write(b"\0" * (-out.tell() % ALIGN))
            offset = out.tell()
            out.write(payload)
            _point_to(tensor, data_path.name, offset, len(payload))
    onnx.save_model(model, str(path))
    return [path, data_path]


def _tensor_payload(tensor: onnx.TensorProto, source_dir: Path | None) -> bytes | None:
    from onnx.external_data_helper import uses_external_data

    if uses_external_data(tensor):
        location, offset, length = external_info(tensor)
        with open(Path(source_dir or ".") / location, "rb") as handle:
            handle.seek(offset)
            return handle.read(length) if length is not None else handle.read()
    if tensor.HasField("raw_data") and len(tensor.raw_data) >= INLINE_LIMIT:
        return tensor.raw_data
    return None


def _point_to(tensor: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    from onnx import TensorProto

    tensor.ClearField("raw_data")
    del tensor.external_data[:]
    tensor.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, value


def detach_external_tensors(model: onnx.ModelProto) -> dict[str, list[tuple[str, str]]]:
    """Turn external tensors into data-less placeholders (same name, type and dims) while passes run.

    onnx's shape inference, which the fusions call on the in-memory model, checks that external files
    exist relative to the working directory; placeholders avoid that without loading the data.
    Returns what ``reattach_external_tensors`` needs to point them back at their file.
    """
    from onnx import TensorProto
    from onnx.external_data_helper import uses_external_data

    detached = {}
    for tensor in model.graph.initializer:
        if uses_external_data(tensor):
            detached[tensor.name] = [(entry.key, entry.value) for entry in tensor.external_data]
            del tensor.external_data[:]
            tensor.data_location = TensorProto.DEFAULT
    return detached


def reattach_external_tensors(model: onnx.ModelProto, detached: dict[str, list[tuple[str, str]]]) -> None:
    """Undo ``detach_external_tensors`` for the placeholders still in the graph."""
    from onnx import TensorProto

    for tensor in model.graph.initializer:
        entries = detached.get(tensor.name)
        if entries is None or tensor.HasField("raw_data"):
            continue
        tensor.data_location = TensorProto.EXTERNAL
        for key, value in entries:
            item = tensor.external_data.add()
            item.key, item.value = key, value


def check_model_file(path: Path) -> None:
    """Run the ONNX checker with strict shape inference on the file path (works above 2 GiB)."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise InvalidModelError(f"the exported {path.name} failed the ONNX checker: {exc}") from exc


@contextmanager
def staging_dir(target_dir: Path) -> Iterator[Path]:
    """A private temporary folder on the target's file system (so hard links work), removed afterwards."""
    target_dir.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=".backdrop-export-", dir=target_dir))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def free_name(requested: Path, companions: Sequence[str] = (".data", ".json")) -> Path:
    """``requested``, or ``stem-N.ext``, such that it and ``<name><companion>`` files are all free."""
    n = 0
    while True:
        name = requested.name if n == 0 else f"{requested.stem}-{n}{requested.suffix}"
        candidate = requested.with_name(name)
        if not candidate.exists() and not any(candidate.with_name(name + c).exists() for c in companions):
            return candidate
        n += 1


def publish(staged: Sequence[Path], target_dir: Path) -> list[Path]:
    """Hard-link staged files into ``target_dir`` under the same names (never overwriting).

    Names were chosen with ``free_name`` before staging, because a graph refers to its ``.data`` file
    by name. If any link fails, the links already made are removed.
    """
    made: list[Path] = []
    try:
        for file in staged:
            destination = target_dir / file.name
            os.link(file, destination)
            made.append(destination)
    except FileExistsError as exc:
        for path in made:
            path.unlink(missing_ok=True)
        raise InvalidModelError(f"{exc.filename} appeared while exporting; nothing was overwritten, "
                                "export again") from exc
    return made
