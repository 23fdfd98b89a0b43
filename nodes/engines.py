"""BackdropExportEngine and BackdropLoadEngine: thin adapters over export/ (UNet -> ONNX / TensorRT / OpenVINO)."""

from __future__ import annotations

from . import comfy_bridge
from .comfy_host import HostedNode

CATEGORY = "Backdrop/engines"
PIPELINE = "BACKDROP_PIPELINE"
ONNX_TARGETS = {"portable (refittable, TensorRT input)": "", "cpu (onnxruntime fused + Winograd)": "cpu",
                "cuda (onnxruntime fused)": "cuda"}


LINKED_ENGINE = "(engine input)"
ENGINE_KINDS = ("onnx", "tensorrt", "openvino")
COMPONENT_PREFIXES = ("unet_shallow_", "text_encoder_", "text_encoder_2_", "vae_encoder_", "vae_decoder_")
COMPONENT_CHOICES = {"unet only": False, "whole pipeline (text encoders, VAE too)": True}


def engine_choices() -> list[str]:
    """``onnx/<file>``, ``tensorrt/<file>`` and ``openvino/<file>`` UNet engines that exist right now, then the
    choice that takes the ``engine_name`` input (so an export -> load workflow validates before its engine
    exists). Text-encoder and VAE engines are found through their UNet engine, so they are not listed."""
    return [f"{kind}/{name}" for kind in ENGINE_KINDS for name in comfy_bridge.model_choices(kind)
            if not name.rpartition("/")[2].startswith(COMPONENT_PREFIXES)] + [LINKED_ENGINE]


def memory_input(what: str, refusal: str) -> tuple:
    """The engine nodes' optional ``memory_gib`` input: how much ``what`` may use."""
    return ("FLOAT", {"default": 0.0, "min": 0.0, "max": 4096.0, "step": 0.5,
                      "tooltip": f"memory {what} may use, GiB; 0 = what the machine has available. What would need "
                                 f"more is refused before it starts ({refusal}), instead of the out-of-memory killer "
                                 "ending ComfyUI"})


def memory_limit(memory_gib: float) -> float | None:
    """``memory_gib`` in bytes (0: None, what the machine has available)."""
    from ..runtime.errors import InvalidInputError

    if not memory_gib >= 0:
        raise InvalidInputError(f"memory_gib must be 0 (what the machine has available) or more, got {memory_gib}")
    return memory_gib * 2**30 if memory_gib > 0 else None


class BackdropExportEngine(HostedNode):
    """Export the pipeline's UNet (with its LoRA stack fused) to ONNX, TensorRT or OpenVINO, or reuse a cached one."""

    # The TensorRT half of this node has never run on a GPU here: ComfyUI shows it as experimental until it has.
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE, {"tooltip": "from Backdrop Inpaint Loader / Backdrop LoRA (the stack is "
                                                   "fused into the engine)"}),
                "format": (["onnx", "tensorrt", "openvino"], {
                    "default": "onnx", "tooltip": "onnx runs on onnxruntime (CPU or GPU); tensorrt needs an NVIDIA "
                                                  "GPU; openvino runs on the CPU (AVX2, AVX-512, AMX)"}),
                "precision": (["auto", "fp32", "fp16", "bf16", "int8", "w8a8"], {
                    "default": "auto", "tooltip": "auto: fp16 for TensorRT, fp32 for ONNX, bf16 for OpenVINO where "
                                                  "the CPU has AMX/AVX512_BF16 (else fp32). int8: OpenVINO only "
                                                  "(int8 weights). w8a8: OpenVINO only, SD UNets: int8 weights and "
                                                  "activations on the int8 units (AMX-INT8/VNNI), calibrated on a "
                                                  "few short runs of this pipeline at export; fastest, least "
                                                  "exact. Precisions the CPU cannot run are refused"}),
                "resolutions": ("STRING", {
                    "default": "512x512", "tooltip": "WxH sizes the engine must cover, comma separated; the first "
                                                     "is the one it is tuned for (multiples of 64)"}),
                "images_per_batch": ("INT", {
                    "default": 1, "min": 1, "max": 16, "tooltip": "largest batch of images per run (the UNet sees "
                                                                  "twice as many with CFG); larger runs are split"}),
                "onnx_target": (list(ONNX_TARGETS), {"default": next(iter(ONNX_TARGETS)),
                                                     "tooltip": "onnx only: what the graph is optimised for"}),
                "refittable": ("BOOLEAN", {
                    "default": False, "tooltip": "TensorRT: allow swapping LoRAs into the engine without a rebuild"}),
                "optimization_level": ("INT", {"default": 3, "min": 0, "max": 5,
                                               "tooltip": "TensorRT builder optimization level"}),
            },
            "optional": {  # appended after the widgets saved workflows already have
                "components": (list(COMPONENT_CHOICES), {
                    "default": next(iter(COMPONENT_CHOICES)),
                    "tooltip": "openvino only: also export the text encoder(s), VAE encoder and VAE decoder, so "
                               "Backdrop Load Engine can run the whole pipeline on engines"}),
                "memory_gib": memory_input("the export", "the error names the need and a lighter precision"),
            },
        }

    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("engine",)
    OUTPUT_TOOLTIPS = ("the engine's name (onnx/<file> or tensorrt/<file>), for BackdropLoadEngine",)
    FUNCTION = "export"
    CATEGORY = CATEGORY
    OUTPUT_NODE = True
    DESCRIPTION = ("Exports the pipeline's UNet (its LoRA stack fused in) to ONNX, a TensorRT engine or an "
                   "OpenVINO IR. Writes models/onnx/*.onnx, models/tensorrt/*.engine or models/openvino/*.xml plus "
                   "a manifest. The same pipeline, LoRA stack, sizes and precision reuse the engine already built.")

    def export(self, pipeline, format: str, precision: str, resolutions: str, images_per_batch: int,
               onnx_target: str, refittable: bool, optimization_level: int,
               components: str = next(iter(COMPONENT_CHOICES)), memory_gib: float = 0.0):
        from ..export.engine_export import EngineRequest, default_precision, export_pipeline_engine
        from ..runtime.engines.profile import ShapeProfile, parse_resolutions
        from ..runtime.engines.spec import UNetSpec
        from ..runtime.errors import InvalidInputError
        from ..runtime.inpainting.loader import require_unet

        profile = None  # a FLUX transformer engine takes any batch and sequence length
        if not pipeline.is_flux:
            require_unet(pipeline, "engine export")
            profile = ShapeProfile.from_resolutions(
                parse_resolutions(resolutions), batch=(1, 2 * images_per_batch, 2 * images_per_batch),
                latent_multiple=UNetSpec.from_unet(pipeline.pipe.unet).latent_multiple)
        if precision == "auto":
            precision = default_precision(format)
        whole = COMPONENT_CHOICES[components]
        if whole and format != "openvino":
            raise InvalidInputError("whole-pipeline engines (text encoders, VAE) are exported for format openvino")
        request = EngineRequest(format=format, precision=precision, profile=profile,
                                optimize_for=ONNX_TARGETS[onnx_target] if format == "onnx" else "",
                                refittable=refittable, optimization_level=optimization_level)
        result = export_pipeline_engine(pipeline, request, comfy_bridge.locator(), components=whole,
                                        progress=self.host.progress(1),
                                        memory_limit=memory_limit(memory_gib))
        return (f"{format}/{result.path.name}",)


class BackdropLoadEngine(HostedNode):
    """Make the pipeline sample with an exported engine instead of its torch UNet."""

    # The TensorRT half of this node has never run on a GPU here: ComfyUI shows it as experimental until it has.
    EXPERIMENTAL = True

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "pipeline": (PIPELINE, {"tooltip": "the pipeline the engine was exported from"}),
                "engine": (engine_choices(), {"tooltip": "an engine in models/onnx, models/tensorrt or "
                                                         "models/openvino"}),
                "provider": (["auto", "cpu", "cuda", "tensorrt"], {
                    "default": "auto", "tooltip": "onnxruntime provider for ONNX files (TensorRT engines run on "
                                                  "TensorRT, OpenVINO engines on the CPU)"}),
                "threads": ("INT", {"default": 0, "min": 0, "max": 256, "tooltip": "CPU threads; 0 = all cores"}),
            },
            "optional": {
                "components": (list(COMPONENT_CHOICES), {
                    "default": next(iter(COMPONENT_CHOICES)),
                    "tooltip": "whole pipeline: the text encoder(s) and VAE run on their OpenVINO engines too "
                               "(exported with components 'whole pipeline'); the paste-back stays exact"}),
                "engine_name": ("STRING", {"forceInput": True, "tooltip": "an engine name from Backdrop Export "
                                                                          "Engine; used when engine is "
                                                                          f"'{LINKED_ENGINE}'"}),
                "memory_gib": memory_input("loading a CPU engine (and its first step)", "the error names the need"),
            },
        }

    RETURN_TYPES = (PIPELINE,)
    RETURN_NAMES = ("pipeline",)
    OUTPUT_TOOLTIPS = ("the pipeline with its UNet running on the engine",)
    FUNCTION = "load"
    CATEGORY = CATEGORY
    DESCRIPTION = ("Makes the pipeline sample with an exported ONNX, TensorRT or OpenVINO engine instead of its torch "
                   "UNet (and, for OpenVINO, optionally runs the text encoders and VAE on engines too). "
                   "The engine must come from this pipeline's model. A different LoRA stack is refit into "
                   "refittable engines by weight name; otherwise export an engine for that stack.")

    @classmethod
    def VALIDATE_INPUTS(cls, engine):
        return True if engine == LINKED_ENGINE else comfy_bridge.check_prefixed_model_name(engine, ENGINE_KINDS)

    def load(self, pipeline, engine: str, provider: str, threads: int, components: str = next(iter(COMPONENT_CHOICES)),
             engine_name: str | None = None, memory_gib: float = 0.0):
        from ..export.attach import attach_engine
        from ..runtime.errors import InvalidInputError

        if engine == LINKED_ENGINE:
            if not engine_name:
                raise InvalidInputError(f"engine is {LINKED_ENGINE!r}: connect Backdrop Export Engine's engine "
                                        "output to engine_name, or choose an engine file")
            engine = engine_name
        kind, _, name = engine.partition("/")
        if kind not in ENGINE_KINDS or not name:
            raise InvalidInputError(f"engine {engine!r} must be onnx/<file>, tensorrt/<file> or openvino/<file>")
        path = comfy_bridge.locator().resolve(kind, name)
        return (attach_engine(pipeline, path, provider=provider, threads=threads or None,
                              components=COMPONENT_CHOICES[components], locator=comfy_bridge.locator(),
                              memory_limit=memory_limit(memory_gib)),)


NODE_CLASS_MAPPINGS = {"BackdropExportEngine": BackdropExportEngine, "BackdropLoadEngine": BackdropLoadEngine}
NODE_DISPLAY_NAME_MAPPINGS = {
    "BackdropExportEngine": "Backdrop Export Engine",
    "BackdropLoadEngine": "Backdrop Load Engine",
}
