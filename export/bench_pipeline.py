"""The whole-job benchmark behind ``backdrop bench --pipeline``: one photo through the runtime, split by stage.

Rows: the torch pipeline in fp32 (the baseline and the reference), the torch pipeline cast to bf16 where the
CPU has a bf16 unit (the one-flag alternative any engine must beat), the same pipeline with every part on
OpenVINO engines (text encoder(s), VAE encoder, UNet, VAE decoder) in each precision this CPU runs, and
optionally the DeepCache-style feature cache (``--feature-cache N``, torch UNet) and a few-step scheduler
(``--fast-scheduler lcm|tcd``). Each row's error is the max |image - torch fp32 image| over the output
(images are 0..1); for the feature cache and the few-step scheduler that is the difference against the
full schedule, which is the point of reporting it.

Stages are timed by wrapping the parts' ``forward`` / ``encode`` / ``decode`` for the run: text encode,
VAE encode, UNet x steps, VAE decode, and the rest (scheduler, mask preparation, the product-exact
paste-back and colour match). Masking, captioning, watermarking and saving are not part of this job
(they need SAM and VLM weights, which a random-weight benchmark does not have); ``backdrop run`` reports
those per photo.

Without ``--model`` the pipeline is the family's real architecture (shipped configs) with random weights
and a character-level CLIP vocabulary written to the work folder, so nothing is downloaded.
"""

from __future__ import annotations

import gc
import json
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from .bench import Candidate, Measurement, MemoryProbe, measure, parity

BASELINE = "torch eager fp32"


def write_char_tokenizer(folder: Path) -> Path:
    """A character-level CLIP BPE vocabulary (vocab.json + merges.txt): enough to tokenize prompts offline."""
    chars = "abcdefghijklmnopqrstuvwxyz0123456789,.'-"
    tokens = ["<|startoftext|>", "<|endoftext|>", "!", *[c for c in chars], *[c + "</w>" for c in chars]]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    return folder


def random_pipeline(family: str, seed: int, work: Path) -> Any:
    """A ``LoadedPipeline`` of ``family``'s real architecture (shipped configs), random weights, fp32, CPU."""
    import torch
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    from ..runtime.inpainting.loader import LoadedPipeline
    from ..runtime.inpainting.single_file import CONFIGS_DIR

    def config(part: str, name: str = "config.json") -> dict:
        return json.loads((CONFIGS_DIR / family / part / name).read_text())

    def text_config(part: str) -> CLIPTextConfig:
        return CLIPTextConfig(**{k: v for k, v in config(part).items() if k not in ("architectures",)})

    folder = write_char_tokenizer(work / "tokenizer")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"), pad_token="<|endoftext|>",
                              model_max_length=77)
    torch.manual_seed(seed)
    parts = {"unet": UNet2DConditionModel.from_config(config("unet")).eval(),
             "vae": AutoencoderKL.from_config(config("vae")).eval(),
             "text_encoder": CLIPTextModel(text_config("text_encoder")).eval(), "tokenizer": tokenizer,
             "scheduler": EulerDiscreteScheduler.from_config(config("scheduler", "scheduler_config.json"))}
    if family == "sdxl":
        from diffusers import StableDiffusionXLInpaintPipeline

        parts.update(text_encoder_2=CLIPTextModelWithProjection(text_config("text_encoder_2")).eval(),
                     tokenizer_2=tokenizer)
        pipe = StableDiffusionXLInpaintPipeline(**parts, requires_aesthetics_score=False)
    else:
        from diffusers import StableDiffusionInpaintPipeline

        pipe = StableDiffusionInpaintPipeline(**parts, safety_checker=None, feature_extractor=None,
                                              requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return LoadedPipeline(pipe=pipe, family=family, name=f"random {family}", fingerprint=f"random-{family}-{seed}",
                          device=torch.device("cpu"), dtype=torch.float32)


def synthetic_photo(size: int) -> tuple[Any, Any]:
    """A float32 RGB photo with a smooth background and a product mask over its centre third."""
    import numpy as np

    y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
    image = np.stack([0.4 + 0.3 * x, 0.5 + 0.2 * y, 0.6 - 0.2 * x * y], axis=2).astype(np.float32)
    mask = np.zeros((size, size), np.float32)
    mask[size // 3: 2 * size // 3, size // 3: 2 * size // 3] = 1.0
    image[mask > 0] = (0.8, 0.2, 0.1)
    return image, mask


@contextmanager
def stage_timer(pipe: Any, totals: dict[str, float]) -> Iterator[None]:
    """Add the seconds spent in each part of ``pipe`` to ``totals`` while the block runs."""
    wrapped: list[tuple[Any, str]] = []

    def wrap(owner: Any, method: str, stage: str) -> None:
        original = getattr(owner, method)

        def timed(*args: Any, **kwargs: Any) -> Any:
            started = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                totals[stage] = totals.get(stage, 0.0) + time.perf_counter() - started

        setattr(owner, method, timed)
        wrapped.append((owner, method))

    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            wrap(getattr(pipe, name), "forward", "text encode")
    wrap(pipe.vae, "encode", "VAE encode")
    wrap(pipe.vae, "decode", "VAE decode")
    wrap(pipe.unet, "forward", "UNet")
    try:
        yield
    finally:
        for owner, method in wrapped:
            delattr(owner, method)


def pipeline_rows(handle: Any, family: str, plan: Any, exports: Any) -> list:
    """Measurements of the whole job per row (see the module docstring)."""
    import numpy as np

    from ..runtime.engines.openvino_backend import kernel_note
    from ..runtime.engines.precision import native_support
    from ..runtime.inpainting.generate import InpaintSettings, inpaint_backgrounds

    handle = handle or random_pipeline(family, plan.seed, exports.work)
    image, mask = synthetic_photo(plan.width)
    base = InpaintSettings(prompt="a product on a marble table, soft light", negative_prompt="blurry", steps=plan.steps,
                           cfg=7.0, resolution=plan.width, seed=plan.seed)
    stages: dict[str, dict[str, float]] = {}

    def runner(name: str, target: Any, settings: InpaintSettings) -> Callable[[], Any]:
        def run() -> Any:
            totals: dict[str, float] = {}
            started = time.perf_counter()
            with stage_timer(target.pipe, totals):
                out = inpaint_backgrounds(target, [image], [mask], settings).images[0]
            total = time.perf_counter() - started
            totals[f"UNet x{settings.effective_steps()}"] = totals.pop("UNet", 0.0)
            totals["rest (scheduler, masks, paste-back)"] = total - sum(totals.values())
            stages[name] = totals
            return np.asarray(out)

        return run

    rows: list[tuple[str, Any, InpaintSettings, str]] = [(f"{BASELINE}, {plan.steps} steps", handle, base, "")]
    if "bf16" in plan.precisions and native_support("bf16")[0]:  # the one-flag alternative: torch itself in bf16
        rows.append((f"torch eager bf16, {plan.steps} steps", torch_copy(handle, "bf16"), base,
                     "the whole torch pipeline cast to bf16 (--dtype bf16)"))
    engines = [p for p in plan.precisions if p in ("fp32", "bf16", "int8", "w8a8") and native_support(p)[0]]
    built: dict[str, Any] = {}
    for precision in engines:
        started = time.perf_counter()
        try:
            target, notes = _engine_pipeline(handle, precision, plan, exports)
        except Exception as exc:  # a missing package or an unsupported precision: report it, keep going
            print(f"OpenVINO {precision} whole pipeline: skipped ({exc})", file=sys.stderr)
            continue
        notes = f"export+compile {time.perf_counter() - started:.0f}s{notes}"
        rows.append((f"OpenVINO {precision} whole pipeline, {plan.steps} steps", target, base, notes))
        built[precision] = target
    # the feature cache and few-step rows go on the bf16 engines where this CPU has them (the fast class), else fp32
    fast = next((p for p in ("bf16", "fp32", "int8") if p in built), None)
    best = built.get(fast)
    if plan.feature_cache:
        cached = replace(base, feature_cache=plan.feature_cache)
        note = "DeepCache-style: error is the difference against the full schedule"
        rows.append((f"{BASELINE} + feature cache every {plan.feature_cache}, {plan.steps} steps", handle, cached,
                     note))
        if best is not None:
            rows.append((f"OpenVINO {fast} whole pipeline + feature cache every {plan.feature_cache}, "
                         f"{plan.steps} steps", best, cached, note + " (full and shallow UNet graphs)"))
    if plan.fast_scheduler:
        few = replace(base, scheduler=plan.fast_scheduler, steps=plan.fast_steps)
        where = best or handle
        label = f"OpenVINO {fast} whole pipeline" if best is not None else BASELINE
        rows.append((f"{label}, {plan.fast_scheduler} {plan.fast_steps} steps", where, few,
                     "few-step scheduler: error is the difference against the full schedule (random weights are not "
                     "step-distilled, so the image itself is not meaningful)"))
    probe = MemoryProbe()
    candidates, outputs, first_times = [], {}, {}
    for name, target, settings, notes in rows:
        print(f"pipeline {name}: warm-up and first run", file=sys.stderr, flush=True)
        run = runner(name, target, settings)

        def first(run: Callable[[], Any] = run, target: Any = target, settings: InpaintSettings = settings) -> tuple:
            # a 2-step run first: engines compile their copies for this job's shapes (text encoder, VAE, full and
            # shallow UNet) and torch sets up its kernels, so the timed run is the job as a warm pipeline runs it
            started = time.perf_counter()
            inpaint_backgrounds(target, [image], [mask], replace(settings, steps=min(2, settings.steps)))
            warm = time.perf_counter() - started
            started = time.perf_counter()
            return run(), warm, time.perf_counter() - started

        probed = probe.measure(first)
        out, warm_s, first_times[name] = probed.result
        backend = getattr(target.pipe.unet, "backend", None)
        if backend is not None:  # engines: what the CPU plugin compiled for the shapes that ran
            notes = "; ".join(n for n in (kernel_note(backend, top=2), notes) if n)
        notes = "; ".join(n for n in (notes, f"2-step warm-up {warm_s:.0f}s (untimed)") if n)
        outputs[name] = out
        candidates.append(Candidate(name, run, setup_s=warm_s + first_times[name], notes=notes,
                                    setup_peak_bytes=probed.peak, setup_extra_bytes=probed.extra,
                                    setup_anon_bytes=probed.anonymous))
        gc.collect()
    reference = outputs[candidates[0].name]
    errors = {name: parity(reference, out) for name, out in outputs.items()}
    if plan.rounds >= 3:  # interleaved rounds after the first runs
        results = measure(candidates, None, rounds=plan.rounds // 3, warmup=1, baseline=candidates[0].name,
                          probe_calls=False, on_round=_print_round)
    else:  # a full-size job takes minutes: the first runs (in order, stages timed) are the one round
        results = [_first_run(c, first_times[c.name], first_times[candidates[0].name]) for c in candidates]
    for result in results:
        result.max_abs_error, result.max_rel_error = errors[result.name]
        result.stages = stages.get(result.name, {})
    return results


def torch_copy(handle: Any, precision: str) -> Any:
    """``handle`` with a copy of its pipeline cast to ``precision`` (what ``--dtype bf16`` loads)."""
    import copy
    import dataclasses

    import torch

    dtype = {"bf16": torch.bfloat16, "fp32": torch.float32}[precision]
    pipe = copy.deepcopy(handle.pipe).to(dtype=dtype)
    pipe.set_progress_bar_config(disable=True)
    return dataclasses.replace(handle, pipe=pipe, dtype=dtype)


def _first_run(candidate: Candidate, seconds: float, baseline: float) -> Measurement:
    return Measurement(name=candidate.name, times_s=[seconds], p50_s=seconds, p90_s=seconds,
                       speedup=baseline / seconds, max_abs_error=None, max_rel_error=None, peak_rss_bytes=None,
                       step_extra_bytes=None, cuda_bytes=None, setup_s=candidate.setup_s, notes=candidate.notes,
                       setup_peak_bytes=candidate.setup_peak_bytes, setup_extra_bytes=candidate.setup_extra_bytes)


def _engine_pipeline(handle: Any, precision: str, plan: Any, exports: Any) -> tuple[Any, str]:
    """``handle`` with its UNet, text encoder(s) and VAE on OpenVINO engines in ``precision``."""
    from ..runtime.models import get_locator, models_dir_locator
    from .attach import attach_engine
    from .engine_export import EngineRequest, export_pipeline_engine

    with models_dir_locator(exports.work / "models"):
        locator = get_locator()
        result = export_pipeline_engine(handle, EngineRequest(format="openvino", precision=precision), locator,
                                        components=True)
        gc.collect()
        target = attach_engine(handle, result.path, threads=plan.threads, components=True, locator=locator)
    extra = result.manifest.extra
    return target, f"; calibrated on {extra['calibration']}" if "calibration" in extra else ""


def _print_round(index: int, times: dict[str, float]) -> None:
    print(f"pipeline round {index + 1}: " + ", ".join(f"{k} {v:.1f}s" for k, v in times.items()), file=sys.stderr,
          flush=True)
