"""Super-resolution models from ``models/upscale_models``, read by spandrel (the loader ComfyUI uses).

spandrel detects the architecture (ESRGAN, Real-ESRGAN compact, SwinIR, HAT, DAT ...) and its hyper-parameters from
the tensors alone. The file is read here, not by spandrel's ``load_from_file``: that reads .pth with its own
restricted unpickler (not ``weights_only``) and .pt as TorchScript. Here it is safetensors, or
``torch.load(weights_only=True)`` for .pth/.pt (the runtime.models.weights rules), handed to spandrel's
``load_from_state_dict``. Names come only from the
folder listing. spandrel is an optional dependency: ``pip install 'comfyui-backdrop[upscale]'``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import InvalidInputError, InvalidModelError
from ..models import MODEL_CACHE, ModelLocator, file_fingerprint, get_locator
from ..models.weights import read_weights_file

FOLDER = "upscale_models"
CACHE_TAG = "upscaler"
SPANDREL_MISSING = ("super-resolution models are read with spandrel: pip install 'comfyui-backdrop[upscale]' "
                    "(or `pip install spandrel`); without it use the Lanczos upscale, which needs no weights")


@dataclass
class Upscaler:
    """A loaded super-resolution model: ``scale`` and ``run`` (one tile in, ``scale`` times larger out)."""

    name: str
    descriptor: Any  # spandrel.ImageModelDescriptor
    device: str

    @property
    def scale(self) -> int:
        return int(self.descriptor.scale)

    @property
    def architecture(self) -> str:
        return str(self.descriptor.architecture.name)

    def run(self, rgb: np.ndarray) -> np.ndarray:
        """float32 [h,w,3] in 0..1 -> float32 [h*scale, w*scale, 3] in 0..1 (padded to the model's size needs)."""
        import torch

        height, width = rgb.shape[:2]
        need = self.descriptor.size_requirements
        multiple, minimum = max(1, int(need.multiple_of)), max(1, int(need.minimum))
        pad_h = max(minimum, -(-height // multiple) * multiple) - height
        pad_w = max(minimum, -(-width // multiple) * multiple) - width
        if need.square:
            side = max(height + pad_h, width + pad_w)
            pad_h, pad_w = side - height, side - width
        tensor = torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))[None]
        if pad_h or pad_w:
            mode = "reflect" if pad_h < height and pad_w < width else "replicate"
            tensor = torch.nn.functional.pad(tensor, (0, pad_w, 0, pad_h), mode=mode)
        dtype = next(iter(self.descriptor.model.parameters())).dtype
        out = self.descriptor(tensor.to(self.device, dtype))
        s = self.scale
        out = out[0, :, :height * s, :width * s].float().clamp(0, 1).cpu().numpy()
        return np.ascontiguousarray(out.transpose(1, 2, 0))


def load_upscaler(name: str, device: str = "cpu", locator: ModelLocator | None = None) -> Upscaler:
    """The super-resolution model ``name`` from ``models/upscale_models``, cached per file and device.

    Raises ``MissingModelError`` (naming the folder) for names not listed there, and ``InvalidModelError`` for
    files spandrel does not recognise, that are not image-to-image super-resolution models, or that hold pickled
    objects besides tensors.
    """
    import torch

    path = (locator or get_locator()).resolve(FOLDER, name)
    dev = str(torch.device(device))
    return MODEL_CACHE.get_or_load((CACHE_TAG, file_fingerprint(path), dev), lambda: _load(path, name, dev))


def _load(path: Path, name: str, device: str) -> Upscaler:
    try:
        from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError
    except ImportError as exc:
        raise InvalidInputError(SPANDREL_MISSING) from exc
    state = _read_tensors(path)  # spandrel unwraps params_ema / state_dict ... itself
    try:
        descriptor = ModelLoader(device=device).load_from_state_dict(state)
    except UnsupportedModelError:
        raise InvalidModelError(f"{name}: spandrel does not recognise this model's architecture; models/{FOLDER} "
                                "holds super-resolution models such as ESRGAN, Real-ESRGAN or SwinIR") from None
    except Exception as exc:  # a known architecture whose tensors do not fit it
        raise InvalidModelError(f"{name} could not be loaded as a super-resolution model "
                                f"({type(exc).__name__}: {exc})") from exc
    if not isinstance(descriptor, ImageModelDescriptor) or descriptor.scale < 1:
        raise InvalidModelError(f"{name} is a {descriptor.architecture.name} model for {descriptor.purpose}, not "
                                "an image-to-image upscaler")
    if descriptor.input_channels != 3 or descriptor.output_channels != 3:
        raise InvalidModelError(f"{name} takes {descriptor.input_channels} and gives {descriptor.output_channels} "
                                "channels; only RGB models are supported")
    descriptor.eval()
    return Upscaler(name=name, descriptor=descriptor, device=device)


def _read_tensors(path: Path) -> dict[str, Any]:
    """The file's tensors (nested dicts kept for spandrel to unwrap): safetensors, else weights-only torch.load."""
    state = read_weights_file(path)
    if not isinstance(state, dict) or not state:
        raise InvalidModelError(f"{path.name} does not hold a dictionary of tensors")
    return state
