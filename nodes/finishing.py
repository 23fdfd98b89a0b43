"""BackdropRankCandidates, BackdropUpscale: thin adapters over runtime.ranking and runtime.upscaling."""

from __future__ import annotations

from . import comfy_bridge
from .backdrop import style_choices
from .comfy_host import HostedNode
from .tensors import input_source, mask_tooltip, with_rules

CATEGORY = "Backdrop/inpainting"
LANCZOS = "lanczos"
NONE = "none"


def upscale_choices() -> list[str]:
    """Lanczos (no weights) first, then the super-resolution models in models/upscale_models."""
    return [LANCZOS, *comfy_bridge.model_choices("upscale_models")]


def aesthetic_choices() -> list[str]:
    """'none' (defects only) first, then the aesthetic predictors in models/aesthetic."""
    return [NONE, *comfy_bridge.model_choices("aesthetic")]


class BackdropRankCandidates(HostedNode):
    """Rank one photo's generated candidates by measured defects and keep the best."""

    @classmethod
    def INPUT_TYPES(cls):
        names = style_choices()
        return {
            "required": {
                "candidates": ("IMAGE", {"tooltip": "one photo's candidate backgrounds (for example BackdropInpaint "
                                                    "with variations), all with the same product"}),
                "product_mask": ("MASK", {"tooltip": mask_tooltip("1 = product, on the candidates' canvas "
                                                                  "(BackdropInpaint's product_mask)")}),
                "style": (names, {"default": "Minimal Studio" if "Minimal Studio" in names else names[0],
                                  "tooltip": "the style whose palette the colour cast is measured against"}),
                "keep": ("INT", {"default": 1, "min": 1, "max": 64,
                                 "tooltip": "how many of the best to output (all of them when fewer are given)"}),
                "aesthetic_model": (aesthetic_choices(), {
                    "default": NONE,
                    "tooltip": "optional learned aesthetic rating that joins the ranking: the LAION "
                               "improved-aesthetic-predictor in models/aesthetic (none: defects only)"}),
                "clip_vision": (["auto", *comfy_bridge.model_choices("clip_vision")], {
                    "default": "auto",
                    "tooltip": "the CLIP vision encoder in models/clip_vision the predictor was trained on (auto: "
                               "the one whose embeddings fit it)"}),
            }
        }

    RETURN_TYPES = ("IMAGE", "MASK", "STRING")
    RETURN_NAMES = ("best", "product_mask", "scores")
    OUTPUT_TOOLTIPS = ("the best candidates, best first",
                       "the product mask of each kept candidate (1 = product), for BackdropWatermark or "
                       "BackdropUpscale",
                       "JSON: every candidate's rank, index in the input batch, combined score (lower is better) "
                       "and its seam, leakage, cast and clutter scores (and its aesthetic rating, with a predictor)")
    FUNCTION = "rank"
    CATEGORY = CATEGORY
    DESCRIPTION = with_rules("Ranks candidate backgrounds of one product photo by defects that can be measured: a "
                             "visible seam along the product edge, product colour leaked into the background beside "
                             "it, a colour cast against the style's palette, and clutter next to the product. "
                             "Outputs the best ones, best first, and every candidate's scores (see "
                             "docs/upscale-and-ranking.md). With an aesthetic predictor chosen, its learned rating "
                             "joins the defects; otherwise no model weights are used.")

    def rank(self, candidates, product_mask, style: str, keep: int, aesthetic_model: str = NONE,
             clip_vision: str = "auto"):
        import json

        from ..runtime.backdrop.styles import get_style
        from ..runtime.ranking import rank_candidates
        from .tensors import images_to_list, masks_for_batch, stack_images, stack_masks

        node = "BackdropRankCandidates"
        images = images_to_list(candidates, node, "candidates")
        height, width = images[0].shape[:2]
        masks = masks_for_batch(product_mask, len(images), height, width, node, "product_mask")
        ratings = None
        if aesthetic_model != NONE:
            from ..runtime.devices import resolve_device
            from ..runtime.ranking.aesthetic import load_aesthetic_scorer

            scorer = load_aesthetic_scorer(aesthetic_model, None if clip_vision == "auto" else clip_vision,
                                           device=resolve_device("auto", self.host.default_device()))
            ratings = scorer.score(images)
        ranked = rank_candidates(images, masks, get_style(style).palette, aesthetic=ratings)
        best = ranked[:keep]
        scores = json.dumps([r.as_dict() for r in ranked])
        return (stack_images([images[r.index] for r in best]), stack_masks([masks[r.index] for r in best]), scores)


class BackdropUpscale(HostedNode):
    """Upscale generated images to the originals' size and paste the full-resolution product back again."""

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "generated": ("IMAGE", {"tooltip": "images generated at a reduced size; with variations, all of "
                                                   "original 0's first"}),
                "original": ("IMAGE", {"tooltip": "the full-resolution photos: the size delivered, and the product "
                                                  "pasted back"}),
                "product_mask": ("MASK", {"tooltip": mask_tooltip("1 = product, at the originals' size")}),
                "method": (upscale_choices(), {"default": LANCZOS,
                                               "tooltip": "lanczos (no weights) or a super-resolution model in "
                                                          "models/upscale_models (ESRGAN, Real-ESRGAN, SwinIR ..., "
                                                          "read by spandrel)"}),
                "seam_feather": ("INT", {"default": 6, "min": 0, "max": 128,
                                         "tooltip": "blend width outside the product, in pixels"}),
            }
        }

    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("the generated images at the originals' size with the original product pasted back "
                       "pixel-exact",)
    FUNCTION = "upscale"
    CATEGORY = CATEGORY
    DESCRIPTION = with_rules("Super-resolution and the second paste-back: each generated image is upscaled to its "
                             "original's size (a model from models/upscale_models, tiled, or Lanczos without "
                             "weights), then the original product is pasted back at full resolution, so product "
                             "pixels are the original's bit for bit at the delivered size. Generated images must "
                             "have the originals' aspect ratio.")

    def upscale(self, generated, original, product_mask, method: str, seam_feather: int):
        from ..runtime.devices import resolve_device
        from ..runtime.inpainting.masks import masks_like_images, pair_generated_with_originals
        from ..runtime.upscaling import load_upscaler, paste_back, upscale
        from .tensors import images_to_list, stack_images

        node = "BackdropUpscale"
        generated_list = images_to_list(generated, node, "generated")
        originals = images_to_list(original, node, "original")
        masks = masks_like_images(product_mask, originals, input_source(node, "product_mask"))
        model = None if method == LANCZOS else load_upscaler(method, device=resolve_device("auto"))
        pairs = pair_generated_with_originals(generated_list, len(originals))
        progress = self.host.progress(len(pairs))
        outputs = []
        for done, (image, i) in enumerate(pairs, start=1):
            target = originals[i]
            big = upscale(image[..., :target.shape[2]] if image.shape[2] > target.shape[2] else image,
                          target.shape[:2], model)
            outputs.append(paste_back(big, target, masks[i], feather=seam_feather)[..., :3])
            progress(done, len(pairs))
        return (stack_images(outputs),)


NODE_CLASS_MAPPINGS = {
    "BackdropRankCandidates": BackdropRankCandidates,
    "BackdropUpscale": BackdropUpscale,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "BackdropRankCandidates": "Backdrop Rank Candidates",
    "BackdropUpscale": "Backdrop Upscale (paste back)",
}
