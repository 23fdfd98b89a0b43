"""BackdropWatermark, BackdropVerify and BackdropSave: thin adapters over runtime.watermark.service,
runtime.provenance and runtime.saving."""

from __future__ import annotations

import json
import logging

from ..runtime.errors import InvalidInputError
from . import comfy_bridge
from .comfy_host import HostedNode
from .tensors import mask_tooltip, with_rules

CATEGORY = "Backdrop/provenance"
NO_FILE = "none"
TOO_SMALL_CHOICES = ("leave unmarked", "error")
CODEC_CHOICES = ("v3", "v2", "v1")  # watermark codec versions BackdropWatermark can write
logger = logging.getLogger(__name__)


def _default_codec() -> str:
    """The codec choice of ``runtime.watermark.codec.DEFAULT_VERSION``."""
    from ..runtime.watermark.codec import DEFAULT_VERSION

    return f"v{DEFAULT_VERSION}"


def _remark_choices() -> list[str]:
    from ..runtime.watermark.service import REMARK_POLICIES

    return list(REMARK_POLICIES)


class BackdropWatermark(HostedNode):
    """Hide a watermark ID in every image and write one signed provenance record per image."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "image": ("IMAGE", {"tooltip": "images to mark (any batch size)"}),
                "account": ("STRING", {"default": "", "tooltip": "who made the image (user, team or client)"}),
                "prompt": ("STRING", {"default": "", "multiline": True,
                                      "tooltip": "empty = the text reaching the workflow's sampler"}),
                "negative_prompt": ("STRING", {"default": "", "multiline": True,
                                               "tooltip": "empty = the sampler's negative text"}),
                "generation_seed": ("INT", {"default": -1, "min": -1, "max": 0xFFFFFFFFFFFFFFFF,
                                            "tooltip": "-1 = the seed of the workflow's sampler"}),
                "metadata": ("STRING", {"default": "", "multiline": True,
                                        "tooltip": "notes, or a JSON object (at most 32 levels deep), stored in "
                                                   "the signed record"}),
                "if_already_marked": (_remark_choices(), {"default": "refuse",
                                                          "tooltip": "refuse: stop with the existing ID; keep: "
                                                                     "keep that mark; add-record: keep it and "
                                                                     "add a record to its ID"}),
                "if_too_small": (list(TOO_SMALL_CHOICES), {"default": TOO_SMALL_CHOICES[0],
                                                           "tooltip": "images under the codec's minimum side, "
                                                                      "or with too little area outside the "
                                                                      "protected product, cannot carry a mark"}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.25, "max": 4.0, "step": 0.05,
                                       "tooltip": "1.0 keeps PSNR >= 40 dB; more survives harsher edits"}),
            },
            "optional": {
                "product_mask": ("MASK", {"tooltip": mask_tooltip("1 = keep these pixels bit-exact (the product); "
                                                                  "the mark goes around them")}),
                "codec": (list(CODEC_CHOICES), {"default": _default_codec(),
                                                "tooltip": "watermark codec version (rarely changed): v3 "
                                                           "survives mirrors, quarter turns, thumbnails, small "
                                                           "crops and heavy JPEG/WebP, and resists averaging "
                                                           "across a catalog (40-bit IDs); v2 is the same with "
                                                           "64-bit IDs; v1 is the first codec; Backdrop Verify "
                                                           "reads all three"}),
            },
            "hidden": {"workflow_prompt": "PROMPT"},
        }

    RETURN_TYPES = ("IMAGE", "STRING", "STRING")
    RETURN_NAMES = ("image", "watermark_id", "report")
    OUTPUT_TOOLTIPS = ('the marked images; product pixels are left exact',
                       'the watermark ID of each image, one per line (its key to the signed ledger record)',
                       'what happened to each image (marked, already marked, too small), one per line')
    FUNCTION = "mark"
    CATEGORY = CATEGORY
    DESCRIPTION = with_rules("Embeds an invisible, keyed watermark ID in every image and writes a signed, "
                             "hash-chained ledger record (prompt, seed, model and LoRA hashes, account, time). "
                             "watermark_id has one line per image (empty when unmarked). With product_mask the "
                             "product pixels stay bit-exact. A batch is all or nothing: when one image is refused "
                             "(already marked, with if_already_marked = refuse) no record is written for any.")

    def mark(self, image, account: str, prompt: str, negative_prompt: str, generation_seed: int, metadata: str,
             if_already_marked: str, if_too_small: str, strength: float, product_mask=None, workflow_prompt=None,
             codec: str | None = None):
        """All or nothing: every image is checked and marked first; the records of the whole batch are then
        written in one ledger transaction. A refused or failing image anywhere leaves no record at all."""
        from ..runtime.watermark import MIN_SIDE, ImageTooSmallError
        from ..runtime.watermark.service import AlreadyMarkedError, get_service
        from .tensors import images_to_list, masks_for_batch, stack_images

        node = "BackdropWatermark"
        codec = _default_codec() if codec is None else codec
        if codec not in CODEC_CHOICES:
            raise InvalidInputError(f"{node}: codec must be one of {', '.join(CODEC_CHOICES)}, got {codec!r}")
        version = int(codec[1:])
        images = images_to_list(image, node, "image")
        height, width = images[0].shape[:2]
        too_small = ""
        if min(height, width) < MIN_SIDE:
            too_small = (f"{width}x{height} px is too small to carry a watermark; each side must be at least "
                         f"{MIN_SIDE} px")
            if if_too_small == "error":
                raise ImageTooSmallError(too_small)
        masks = (None if product_mask is None else
                 masks_for_batch(product_mask, len(images), height, width, node, "product_mask"))
        base = _record_content(account, prompt, negative_prompt, generation_seed, metadata, workflow_prompt)
        service = get_service()
        progress = self.host.progress(len(images))
        prepared, unmarked = [], {}  # unmarked: index -> why
        for index, picture in enumerate(images):
            if too_small:
                unmarked[index] = too_small
            else:
                try:
                    prepared.append(service.prepare_mark(picture, base(index, len(images)), remark=if_already_marked,
                                                         strength=strength, policy_input="if_already_marked",
                                                         protect=None if masks is None else masks[index],
                                                         watermark_version=version))
                except ImageTooSmallError as exc:  # too little unprotected area to read the mark back
                    if if_too_small == "error":
                        raise ImageTooSmallError(f"{node}: image {index + 1} of {len(images)}: {exc}") from exc
                    unmarked[index] = str(exc)
                except AlreadyMarkedError as exc:  # refused: nothing of the batch is recorded
                    raise AlreadyMarkedError(f"{node}: image {index + 1} of {len(images)}: {exc}",
                                             exc.existing_payload) from exc
            progress(index + 1, len(images))
        for index, why in unmarked.items():
            logger.warning("BackdropWatermark: image %d left unmarked: %s", index + 1, why)
        with service.recording(prepared) as results:
            marked = iter(results)
            outputs, ids, lines = [], [], []
            for index, picture in enumerate(images):
                if index in unmarked:
                    outputs.append(picture)
                    ids.append("")
                    lines.append(f"image {index + 1}: left unmarked: {unmarked[index]}")
                    continue
                result = next(marked)
                outputs.append(result.image)
                ids.append(result.watermark_id)
                seq = f" (record seq {result.record.seq})" if result.record is not None else ""
                lines.append(f"image {index + 1}: {result.status} {result.watermark_id}{seq}")
            batch = stack_images(outputs)  # delivered: the records commit when this block ends
        return (batch, "\n".join(ids), "\n".join(lines))


class BackdropVerify(HostedNode):
    """Read the watermark of each image (or of a file in the input folder) and check its ledger record."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "file": ([NO_FILE, *cls.host.input_image_names()],
                         {"default": NO_FILE, "tooltip": "an image in ComfyUI's input folder (its C2PA manifest "
                                                         "is checked too)"}),
            },
            "optional": {"image": ("IMAGE", {"tooltip": "images to verify (each one of the batch)"})},
        }

    RETURN_TYPES = ("BOOLEAN", "STRING", "FLOAT", "STRING", "STRING", "STRING", "STRING", "MASK")
    RETURN_NAMES = ("found", "watermark_id", "score", "record", "signature", "chain", "report", "presence")
    OUTPUT_TOOLTIPS = ('whether a watermark was found, per image (a list)',
                       'the watermark ID read, per image',
                       'detection score per image (higher is surer)',
                       'the ledger record as JSON, per image (empty when the ID is not in this ledger)',
                       'signature status of the record, per image',
                       'hash-chain status of the ledger around the record, per image',
                       'a readable summary per image',
                       'where the mark is, per image: 1 = marked, 0 = not (all 0 when none was found); a '
                       'spliced image shows which part carries the mark')
    OUTPUT_IS_LIST = (True,) * 8
    OUTPUT_NODE = True  # a verification is worth running on its own; the reports are shown on the node
    FUNCTION = "verify"
    CATEGORY = CATEGORY
    DESCRIPTION = with_rules("Reads the watermark of each image (or of a file in the input folder) and checks its "
                             "signed ledger record and C2PA manifest. One entry per image (the connected batch "
                             "first, then the chosen file). Unmarked: found is false and the ID empty. signature: "
                             "valid / invalid / untrusted signer / no record; chain: intact / broken / no record. "
                             "record is the ledger record as JSON (watermark_version: the codec that made the "
                             "mark). presence is a MASK of where the mark is, per image (image size; all 0 when "
                             "none was found): for spliced images and partial crops, a marked region down to about "
                             "a tenth of the picture is found and mapped.", masks=False)

    @classmethod
    def IS_CHANGED(cls, **_kwargs):
        return float("nan")  # the ledger can change between runs: always check again

    def verify(self, file: str = NO_FILE, image=None):
        from ..runtime.errors import InvalidInputError
        from ..runtime.watermark.service import get_service
        from .tensors import images_to_list

        if image is None and file == NO_FILE:
            raise InvalidInputError("connect an image or choose a file to verify")
        service = get_service()
        results = []
        if image is not None:
            pictures = images_to_list(image, "BackdropVerify", "image")
            progress = self.host.progress(len(pictures))
            for index, picture in enumerate(pictures):
                results.append(service.verify_image(picture, source=f"image {index + 1}", localise=True))
                progress(index + 1, len(pictures))
        if file != NO_FILE:
            results.append(service.verify_file(self.host.input_image_path(file), localise=True))
        reports = [r.summary() for r in results]
        outputs = ([r.found for r in results], [r.watermark_id for r in results], [float(r.score) for r in results],
                   [json.dumps(r.record, ensure_ascii=False) if r.record else "" for r in results],
                   [r.signature for r in results], [r.chain for r in results], reports,
                   [presence_mask(r) for r in results])
        return {"ui": {"text": reports}, "result": outputs}


def presence_mask(result):
    """A verification's presence map (``Verification.presence_mask``) as a ComfyUI MASK [1, H, W]."""
    import torch

    return torch.from_numpy(result.presence_mask()[None].copy())


class BackdropSave(HostedNode):
    """Save PNG, JPEG or WebP with workflow metadata and a signed C2PA manifest; never overwrites."""

    @classmethod
    def INPUT_TYPES(cls):
        from ..runtime.saving import FORMATS, RESOLUTION_PRESETS

        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "images to save"}),
                "filename_prefix": ("STRING", {"default": "Backdrop", "tooltip": "may include subfolders and "
                                                                               "%date/size% fields, as SaveImage"}),
                "format": (list(FORMATS), {"default": "png", "tooltip": "png is lossless: product pixels stay exact"}),
                "quality": ("INT", {"default": 95, "min": 1, "max": 100, "step": 1,
                                    "tooltip": "JPEG/WebP quality (WebP 100 = lossless); PNG is always lossless"}),
                "resolution": (list(RESOLUTION_PRESETS), {"default": "original",
                                                          "tooltip": "only ever shrinks; the watermark survives "
                                                                     "down to half size"}),
                "c2pa": ("BOOLEAN", {"default": True, "tooltip": "embed a signed C2PA manifest bound to the "
                                                                 "image's watermark ID"}),
            },
            "hidden": {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"},
        }

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY
    DESCRIPTION = with_rules("Saves PNG, JPEG or WebP with workflow metadata and a signed C2PA manifest. "
                             "Writes <prefix>_00001_.<ext> in the output folder and never overwrites. PNG keeps the "
                             "workflow in text chunks like SaveImage; JPEG/WebP keep it in EXIF (prompt:/workflow:).",
                             masks=False)

    def save(self, images, filename_prefix: str, format: str, quality: int, resolution: str, c2pa: bool,
             prompt=None, extra_pnginfo=None):
        from ..runtime.saving import SaveOptions, comfy_metadata, comfy_style_path, save_image
        from ..runtime.watermark.service import get_service
        from .tensors import images_to_list

        pictures = images_to_list(images, "BackdropSave", "images")
        metadata = {} if comfy_bridge.metadata_disabled() else comfy_metadata(prompt, extra_pnginfo)
        options = SaveOptions(fmt=format, quality=quality, resolution=resolution, c2pa=c2pa, metadata=metadata)
        service = get_service() if c2pa else None
        output_dir = self.host.output_directory()
        progress = self.host.progress(len(pictures))
        saved_ui = []
        for index, picture in enumerate(pictures):
            path, subfolder = comfy_style_path(output_dir, filename_prefix, format, picture.shape[1],
                                               picture.shape[0], batch_number=index)
            saved = save_image(picture, path, options, keys=service.keys if service else None,
                               binding=service.provenance_for if service else None)
            for note in saved.notes:
                logger.info("BackdropSave %s: %s", saved.path.name, note)
            saved_ui.append({"filename": saved.path.name, "subfolder": subfolder, "type": "output"})
            progress(index + 1, len(pictures))
        return {"ui": {"images": saved_ui}}


def _record_content(account: str, prompt: str, negative_prompt: str, seed: int, metadata: str, workflow_prompt):
    """A factory (index, count) -> RecordContent: explicit inputs win over facts read from the workflow."""
    from ..runtime.provenance.file_hashes import hash_model_files
    from ..runtime.provenance.records import RecordContent
    from ..runtime.provenance.workflow_facts import workflow_facts

    facts = workflow_facts(workflow_prompt)
    models, loras = hash_model_files(comfy_bridge.model_file_path,
                                     {name: (kind, name) for name, kind in facts.models.items()}, facts.loras)
    extra = _parse_metadata(metadata)
    if isinstance(workflow_prompt, dict) and workflow_prompt:
        import hashlib

        graph = json.dumps(workflow_prompt, sort_keys=True, separators=(",", ":"), default=str).encode("utf-8")
        extra.setdefault("workflow_sha256", hashlib.sha256(graph).hexdigest())
    if facts.loras:
        extra.setdefault("lora_strengths", facts.loras)
    if seed < 0 and len(facts.seeds) > 1:
        extra.setdefault("workflow_seeds", [str(s) for s in facts.seeds])
    record_seed = seed if seed >= 0 else (facts.seeds[0] if len(facts.seeds) == 1 else None)

    def content(index: int, count: int) -> RecordContent:
        data = {**extra, "batch_index": index, "batch_size": count} if count > 1 else dict(extra)
        return RecordContent(account=account, prompt=prompt or "\n".join(facts.positive),
                             negative_prompt=negative_prompt or "\n".join(facts.negative), seed=record_seed,
                             models=models, loras=loras, metadata=data)

    return content


def _parse_metadata(text: str) -> dict:
    """The metadata input: a JSON object as it is, anything else kept as notes. JSON nested deeper than a record
    takes is an error (never a RecursionError)."""
    from ..runtime.provenance.records import check_metadata_depth

    text = (text or "").strip()
    if not text:
        return {}
    try:
        value = json.loads(text)
    except RecursionError:
        raise InvalidInputError("BackdropWatermark: metadata is JSON nested too deeply to read; records take at most "
                                "32 levels. Flatten it (for example store the deep part as a string)") from None
    except ValueError:
        return {"notes": text}
    if not isinstance(value, dict):
        return {"notes": text}
    check_metadata_depth(value, "BackdropWatermark: metadata")
    return value


NODE_CLASS_MAPPINGS = {
    "BackdropWatermark": BackdropWatermark,
    "BackdropVerify": BackdropVerify,
    "BackdropSave": BackdropSave,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "BackdropWatermark": "Backdrop Watermark",
    "BackdropVerify": "Backdrop Verify",
    "BackdropSave": "Backdrop Save (C2PA)",
}
