"""Writes workflows/*.json (UI format) and workflows/api/*.json (API format) from one description each.

    .venv/bin/python docs/make_workflows.py          # rewrite the files
    .venv/bin/python docs/make_workflows.py --check  # exit 1 if a file differs from what would be written

Widget values are placed by the node definitions (ours from the node classes, ComfyUI's core nodes from
tests/data/comfyui_core_nodes.json, a snapshot of ComfyUI 0.8.0's /object_info), so the two forms agree.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CORE_SNAPSHOT = REPO / "tests" / "data" / "comfyui_core_nodes.json"

SAM = "sam_vit_b_01ec64.pth"
CAPTIONER = "Florence-2-base"
PIPELINE_MODEL = "checkpoints/sd-v1-5-inpainting.safetensors"
NATIVE_CHECKPOINT = "sd-v1-5-inpainting.safetensors"
LORA = "backdrop_background.safetensors"
FLUX_FILL_FOLDER = "diffusers/FLUX.1-Fill-dev"
FLUX_FILL_UNET = "flux1-fill-dev.safetensors"
FLUX_CLIP_L = "clip_l.safetensors"
FLUX_T5 = "t5xxl_fp16.safetensors"
FLUX_VAE = "ae.safetensors"
PRODUCT_PHOTO = "product.png"
SUSPICIOUS_PHOTO = "suspicious.png"
CATALOG_FOLDER = "catalog"
TRAINING_FOLDER = "product_photos"

COLUMN, ROW = 380, 320


def node(class_type: str, title: str, **inputs) -> dict:
    return {"inputs": inputs, "class_type": class_type, "_meta": {"title": title}}


def link(node_id: int, slot: int = 0) -> list:
    return [str(node_id), slot]


MASK = {"fill_holes": True, "keep": "main", "grow_px": 0, "edge_refine": True, "feather_px": 0.0}
CAPTION = {"task": "canvas_scene", "custom_instruction": "", "max_new_tokens": 64, "num_beams": 3,
           "sampling": False, "temperature": 0.7, "top_p": 0.9, "seed": 0}
STYLE = {"style": "Soft Spring", "composition": "centered", "scene": "", "long_prompt": "trim"}
INPAINT = {"variations": 2, "seed": 42, "steps": 25, "cfg": 7.0, "scheduler": "dpmpp_2m_karras", "strength": 1.0,
           "resolution": 0, "outpaint": "none", "seam_feather": 6, "color_match": 1.0}
MARK = {"account": "studio", "generation_seed": 42, "metadata": "", "if_already_marked": "refuse",
        "if_too_small": "leave unmarked", "strength": 1.0}
SAVE = {"format": "png", "quality": 95, "resolution": "original", "c2pa": True}


def product_background() -> tuple[dict, dict]:
    graph = {
        "1": node("LoadImage", "Product photo", image=PRODUCT_PHOTO),
        "2": node("BackdropSAMLoader", "SAM", sam_model=SAM, device="auto"),
        "3": node("BackdropProductMask", "Product mask", image=link(1), sam=link(2), box="", points="", **MASK),
        "4": node("PreviewImage", "Mask preview", images=link(3, 2)),
        "5": node("BackdropCaptionerLoader", "Captioner (VLM)", model=CAPTIONER, device="auto", dtype="auto",
                  allow_remote_code=False),
        "6": node("BackdropCaption", "Caption product + background", image=link(1), captioner=link(5),
                  product_mask=link(3), **CAPTION),
        "7": node("BackdropStylePrompt", "Style prompt", product_caption=link(6, 0), background_caption=link(6, 1),
                  **STYLE),
        "8": node("BackdropInpaintLoader", "Inpainting model", model=PIPELINE_MODEL, device="auto", dtype="auto"),
        "9": node("BackdropInpaint", "New background (product exact)", pipeline=link(8), image=link(1),
                  product_mask=link(3), positive=link(7, 0), negative=link(7, 1), **INPAINT),
        "10": node("BackdropWatermark", "Watermark + provenance", image=link(9), prompt=link(7, 0),
                   negative_prompt=link(7, 1), product_mask=link(9, 1), **MARK),
        "11": node("BackdropSave", "Save (C2PA)", images=link(10), filename_prefix="backdrop/product", **SAVE),
    }
    layout = {"1": (0, 0), "2": (0, 1.25), "3": (1, 0), "4": (1, 2), "5": (1, 1), "6": (2, 0), "7": (3, 0),
              "8": (3, 1), "9": (4, 0), "10": (5, 0), "11": (6, 0)}
    return graph, layout


def native_ksampler() -> tuple[dict, dict]:
    graph = {
        "1": node("LoadImage", "Product photo", image=PRODUCT_PHOTO),
        "2": node("BackdropProductMask", "Product mask", image=link(1), box="", points="", **MASK),
        "3": node("BackdropCaption", "Caption (no weights)", image=link(1), product_mask=link(2), **CAPTION),
        "4": node("BackdropStylePrompt", "Style prompt", product_caption=link(3, 0), background_caption=link(3, 1),
                  **STYLE),
        "5": node("CheckpointLoaderSimple", "Load Checkpoint", ckpt_name=NATIVE_CHECKPOINT),
        "6": node("CLIPTextEncode", "Positive", text=link(4, 0), clip=link(5, 1)),
        "7": node("CLIPTextEncode", "Negative", text=link(4, 1), clip=link(5, 1)),
        "8": node("VAEEncodeForInpaint", "Encode (background = regenerate)", pixels=link(1), vae=link(5, 2),
                  mask=link(2, 1), grow_mask_by=6),
        "9": node("KSampler", "KSampler", model=link(5), positive=link(6), negative=link(7), latent_image=link(8),
                  seed=42, steps=25, cfg=7.0, sampler_name="dpmpp_2m", scheduler="karras", denoise=1.0),
        "10": node("VAEDecode", "VAE Decode", samples=link(9), vae=link(5, 2)),
        "11": node("BackdropComposite", "Paste the exact product back", generated=link(10), original=link(1),
                   product_mask=link(2), seam_feather=6, color_match=1.0),
        "12": node("BackdropWatermark", "Watermark + provenance", image=link(11), prompt=link(4, 0),
                   negative_prompt=link(4, 1), product_mask=link(2), **MARK),
        "13": node("BackdropSave", "Save (C2PA)", images=link(12), filename_prefix="backdrop/native", **SAVE),
    }
    layout = {"1": (0, 0), "2": (1, 0), "3": (2, 0), "4": (3, 0), "5": (0, 2), "6": (4, 0), "7": (4, 1),
              "8": (4, 2), "9": (5, 0), "10": (6, 0), "11": (7, 0), "12": (8, 0), "13": (9, 0)}
    return graph, layout


def native_flux_fill() -> tuple[dict, dict]:
    """FLUX.1 Fill on ComfyUI's own loaders and KSampler (the layout of ComfyUI's FLUX Fill example: guidance 30,
    cfg 1, euler/normal, DifferentialDiffusion), with Backdrop's mask, prompt, exact composite and watermark."""
    graph = {
        "1": node("LoadImage", "Product photo", image=PRODUCT_PHOTO),
        "2": node("BackdropProductMask", "Product mask", image=link(1), box="", points="", **MASK),
        "3": node("BackdropCaption", "Caption (no weights)", image=link(1), product_mask=link(2), **CAPTION),
        "4": node("BackdropStylePrompt", "Style prompt", product_caption=link(3, 0), background_caption=link(3, 1),
                  **STYLE),
        "5": node("UNETLoader", "Load FLUX.1 Fill", unet_name=FLUX_FILL_UNET, weight_dtype="default"),
        "6": node("DualCLIPLoader", "Load CLIP-L + T5-XXL", clip_name1=FLUX_CLIP_L, clip_name2=FLUX_T5,
                  type="flux", device="default"),
        "7": node("VAELoader", "Load FLUX VAE", vae_name=FLUX_VAE),
        "8": node("CLIPTextEncode", "Positive", text=link(4, 0), clip=link(6)),
        "9": node("CLIPTextEncode", "Negative (unused by FLUX: guidance-distilled)", text="", clip=link(6)),
        "10": node("FluxGuidance", "FLUX guidance", conditioning=link(8), guidance=30.0),
        "11": node("InpaintModelConditioning", "Fill conditioning (background = regenerate)", positive=link(10),
                   negative=link(9), vae=link(7), pixels=link(1), mask=link(2, 1), noise_mask=True),
        "12": node("DifferentialDiffusion", "Differential diffusion", model=link(5)),
        "13": node("KSampler", "KSampler", model=link(12), positive=link(11, 0), negative=link(11, 1),
                   latent_image=link(11, 2), seed=42, steps=28, cfg=1.0, sampler_name="euler", scheduler="normal",
                   denoise=1.0),
        "14": node("VAEDecode", "VAE Decode", samples=link(13), vae=link(7)),
        "15": node("BackdropComposite", "Paste the exact product back", generated=link(14), original=link(1),
                   product_mask=link(2), seam_feather=6, color_match=1.0),
        "16": node("BackdropWatermark", "Watermark + provenance", image=link(15), prompt=link(4, 0),
                   negative_prompt=link(4, 1), product_mask=link(2), **MARK),
        "17": node("BackdropSave", "Save (C2PA)", images=link(16), filename_prefix="backdrop/flux_fill", **SAVE),
    }
    layout = {"1": (0, 0), "2": (1, 0), "3": (2, 0), "4": (3, 0), "5": (0, 2), "6": (0, 2.6), "7": (0, 3.4),
              "8": (4, 0), "9": (4, 1), "10": (5, 0), "11": (5, 1), "12": (1, 2), "13": (6, 0), "14": (7, 0),
              "15": (8, 0), "16": (9, 0), "17": (10, 0)}
    return graph, layout


def flux_fill_headless() -> tuple[dict, dict]:
    """The product_background job on FLUX.1 Fill through diffusers (runs headless: ``backdrop run --workflow``)."""
    graph, layout = product_background()
    graph["8"] = node("BackdropInpaintLoader", "Inpainting model", model=FLUX_FILL_FOLDER, device="auto",
                      dtype="auto")
    graph["9"]["_meta"]["title"] = "New background (FLUX.1 Fill, product exact)"
    graph["9"]["inputs"].update(steps=28, cfg=30.0, scheduler="euler")
    graph["11"]["inputs"]["filename_prefix"] = "backdrop/flux_fill"
    return graph, layout


def catalog_folder() -> tuple[dict, dict]:
    graph = {
        "1": node("BackdropLoadImageFolder", "Catalog folder", folder=CATALOG_FOLDER, start=0, limit=0),
        "2": node("BackdropProductMask", "Product mask", image=link(1), box="", points="", **MASK),
        "3": node("BackdropCaption", "Caption (no weights)", image=link(1), product_mask=link(2), **CAPTION),
        "4": node("BackdropStylePrompt", "Style prompt", product_caption=link(3, 0), background_caption=link(3, 1),
                  **STYLE),
        "5": node("BackdropInpaintLoader", "Inpainting model", model=PIPELINE_MODEL, device="auto", dtype="auto"),
        "6": node("BackdropLoRA", "Studio LoRA", pipeline=link(5), lora_name=LORA, strength=0.8, enabled=True,
                  fuse=False),
        "7": node("BackdropInpaint", "New background (product exact)", pipeline=link(6), image=link(1),
                  product_mask=link(2), positive=link(4, 0), negative=link(4, 1), **{**INPAINT, "variations": 1}),
        "8": node("BackdropWatermark", "Watermark + provenance", image=link(7), prompt=link(4, 0),
                  negative_prompt=link(4, 1), product_mask=link(7, 1), **MARK),
        "9": node("BackdropSave", "Save as <photo name>", images=link(8), filename_prefix=link(1, 1), **SAVE),
    }
    layout = {"1": (0, 0), "2": (1, 0), "3": (2, 0), "4": (3, 0), "5": (2, 1), "6": (3, 1), "7": (4, 0),
              "8": (5, 0), "9": (6, 0)}
    return graph, layout


def train_lora() -> tuple[dict, dict]:
    graph = {
        "1": node("BackdropInpaintLoader", "Base model", model=PIPELINE_MODEL, device="auto", dtype="auto"),
        "2": node("BackdropCaptionerLoader", "Captioner (VLM)", model=CAPTIONER, device="auto", dtype="auto",
                  allow_remote_code=False),
        "3": node("BackdropTrainLoRA", "Train background LoRA", pipeline=link(1), captioner=link(2),
                  dataset=TRAINING_FOLDER, lora_name="backdrop_background", steps=1000, rank=16, learning_rate=1e-4,
                  resolution=512, seed=0, background_weight=1.0, product_weight=0.1, caption_dropout=0.1,
                  checkpoint_every=250, resume=False, curated="", stage2_steps=0, top_k=0),
    }
    layout = {"1": (0, 0), "2": (0, 1), "3": (1, 0)}
    return graph, layout


def engine_export_load() -> tuple[dict, dict]:
    graph = {
        "1": node("BackdropInpaintLoader", "Inpainting model", model=PIPELINE_MODEL, device="auto", dtype="auto"),
        "2": node("BackdropExportEngine", "Export UNet engine (cached)", pipeline=link(1), format="onnx",
                  precision="auto", resolutions="512x512, 768x512", images_per_batch=1,
                  onnx_target="cpu (onnxruntime fused + Winograd)", refittable=False, optimization_level=3),
        "3": node("BackdropLoadEngine", "Use the engine", pipeline=link(1), engine="(engine input)",
                  engine_name=link(2), provider="auto", threads=0),
        "4": node("LoadImage", "Product photo", image=PRODUCT_PHOTO),
        "5": node("BackdropProductMask", "Product mask", image=link(4), box="", points="", **MASK),
        "6": node("BackdropInpaint", "New background (engine UNet)", pipeline=link(3), image=link(4),
                  product_mask=link(5), positive="product photo on a clean studio backdrop, soft light",
                  negative="blurry, lowres, watermark, text", **{**INPAINT, "variations": 1, "resolution": 512}),
        "7": node("BackdropSave", "Save", images=link(6), filename_prefix="backdrop/engine", **SAVE),
    }
    layout = {"1": (0, 0), "2": (1, 0), "3": (2, 0), "4": (0, 2), "5": (1, 2), "6": (3, 0), "7": (4, 0)}
    return graph, layout


def verify_image() -> tuple[dict, dict]:
    graph = {
        "1": node("LoadImage", "Suspicious image", image=SUSPICIOUS_PHOTO),
        "2": node("BackdropVerify", "Verify watermark + provenance", file="none", image=link(1)),
    }
    layout = {"1": (0, 0), "2": (1, 0)}
    return graph, layout


WORKFLOWS = {
    "product_background": (product_background, "Mask (SAM) -> VLM caption -> style prompt -> inpaint with the "
                           "product pixel-exact -> watermark + signed record -> save with C2PA."),
    "native_ksampler": (native_ksampler, "The same job on ComfyUI's own CheckpointLoader / VAEEncodeForInpaint / "
                        "KSampler, with Backdrop's mask, prompt, exact composite and watermark."),
    "native_flux_fill": (native_flux_fill, "FLUX.1 Fill on ComfyUI's own UNETLoader / DualCLIPLoader / "
                         "InpaintModelConditioning / FluxGuidance / KSampler, with Backdrop's mask, prompt, exact "
                         "composite and watermark."),
    "flux_fill_headless": (flux_fill_headless, "Mask (SAM) -> VLM caption -> style prompt -> FLUX.1 Fill (diffusers) "
                           "with the product pixel-exact -> watermark + signed record -> save with C2PA; runs "
                           "headless."),
    "catalog_folder": (catalog_folder, "Every photo of input/catalog through mask -> caption -> prompt -> inpaint "
                       "with the studio LoRA -> watermark -> save under its own name."),
    "train_lora": (train_lora, "Auto-mask and auto-caption input/product_photos, then train a background LoRA "
                   "on all UNet layers into models/loras."),
    "engine_export_load": (engine_export_load, "Export the UNet to ONNX (cached), then inpaint with the engine."),
    "verify_image": (verify_image, "Read the watermark of an image and check its signed provenance record."),
}


def load_specs(host=None) -> dict:
    """Core-node specs from the snapshot plus ours; combo listings read ``host``'s folders when one is given."""
    from comfyui_backdrop.nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS
    from comfyui_backdrop.nodes.comfy_host import bind_host
    from comfyui_backdrop.runtime.workflow.specs import spec_from_object_info, specs_from_classes

    core = json.loads(CORE_SNAPSHOT.read_text(encoding="utf-8"))
    specs = {k: spec_from_object_info(k, v) for k, v in core.items() if not k.startswith("_")}
    classes = NODE_CLASS_MAPPINGS if host is None else bind_host(NODE_CLASS_MAPPINGS, host)
    specs.update(specs_from_classes(classes, NODE_DISPLAY_NAME_MAPPINGS))
    return specs


def with_widget_defaults(graph: dict, specs: dict) -> None:
    """Give every widget a description leaves out its default, as ComfyUI's frontend does when it builds the API
    prompt (so a widget appended to a node later shows up in both forms)."""
    for node in graph.values():
        spec = specs.get(node["class_type"])
        for widget in spec.widgets if spec is not None else ():
            if widget.name not in node["inputs"] and "default" in widget.options:
                node["inputs"][widget.name] = widget.options["default"]


def render() -> dict[Path, str]:
    from comfyui_backdrop.runtime.workflow.ui_format import api_to_ui

    specs = load_specs()
    files: dict[Path, str] = {}
    for name, (build, description) in WORKFLOWS.items():
        graph, layout = build()
        with_widget_defaults(graph, specs)
        positions = {k: (40 + c * COLUMN, 60 + round(r * ROW)) for k, (c, r) in layout.items()}
        bottom = int(max(r for _, r in layout.values())) + 1
        note_id = str(max(int(k) for k in graph) + 1)
        ui = api_to_ui(graph, specs, positions, notes={note_id: ((40, 60 + bottom * ROW), description)})
        ui["extra"]["backdrop"] = {"name": name, "description": description}
        files[REPO / "workflows" / f"{name}.json"] = json.dumps(ui, indent=2) + "\n"
        files[REPO / "workflows" / "api" / f"{name}.json"] = json.dumps(graph, indent=2) + "\n"
    return files


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 when a file is out of date")
    args = parser.parse_args()
    stale = []
    for path, text in render().items():
        if args.check:
            if not path.is_file() or path.read_text(encoding="utf-8") != text:
                stale.append(path)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text, encoding="utf-8")
            print(f"wrote {path.relative_to(REPO)}")
    for path in stale:
        print(f"out of date: {path.relative_to(REPO)} (run python docs/make_workflows.py)")
    return 1 if stale else 0


if __name__ == "__main__":
    raise SystemExit(main())
