"""The FastAPI application of ``backdrop serve``: endpoints, authentication, limits. OpenAPI at ``/docs``.

Every ``/v1`` endpoint needs ``Authorization: Bearer <API key>`` and counts against the account's
``requests_per_minute``. A job of another account answers 404, exactly as a job that does not exist. Errors are
JSON ``{"detail": message}``; a refusal by a tier limit adds ``limit`` and ``limit_value`` (and the
``Backdrop-Limit`` header), and ``retry_after`` with ``Retry-After`` when waiting helps.

Nothing is logged but job ids, account ids, statuses and timings: never a key, a prompt or a scene.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import secrets
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import Depends, FastAPI, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field

from .api_keys import hash_api_key, well_formed
from .config import JOB_ID, ServeConfig
from .params import FORMATS, STUDIO, Catalog, JobParams, ParamError, resolution_presets, verify_localise
from .store import (
    FAILED,
    RUNNING,
    SUCCEEDED,
    Account,
    IdempotencyConflict,
    Job,
    LimitExceeded,
    NewJob,
    RateLimiter,
    Store,
    Submission,
    Unauthorized,
)
from .tiers import Tier, TierBook
from .uploads import HttpError, check_photo, receive_form

log = logging.getLogger("backdrop.serve")
CATALOG_TTL_S = 5.0
MAX_IDEMPOTENCY_KEY = 255
MEDIA_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
VERIFY_SLOTS = 2  # verifications at once (each reads and decodes an image: bounded memory and CPU)
DECODE_SLOTS = 2  # photos decoded at once by the submission check
# A thread that wants the GIL waits this long before asking its holder to let go (Python's default: 5 ms). The
# event loop and the thread checking an upload hand the GIL back and forth on every submission; at 5 ms each
# hand-off could add up to 5 ms to a request's answer.
GIL_SWITCH_INTERVAL_S = 0.001


# ---- response models (the OpenAPI schema) ----------------------------------------------------------------

class ImageOut(BaseModel):
    n: int
    url: str = Field(description="GET it with the same API key: the file, with its C2PA manifest inside")
    format: Literal["png", "jpeg", "webp"]
    width: int
    height: int
    bytes: int
    sha256: str


class JobOut(BaseModel):
    id: str
    status: Literal["queued", "running", "succeeded", "failed", "canceled"]
    progress: float = Field(description="0..1: the share of variations finished")
    retryable: bool = Field(description="failed through no fault of the request (e.g. a server restart): submit "
                                        "it again")
    error: str | None
    cancel_requested: bool
    created_at: str
    started_at: str | None
    finished_at: str | None
    params: dict[str, Any]
    images: list[ImageOut]


class ErrorOut(BaseModel):
    detail: str
    limit: str | None = Field(None, description="the tier limit that refused the request")
    limit_value: int | None = None
    retry_after: int | None = Field(None, description="seconds; also the Retry-After header")


class StyleOut(BaseModel):
    name: str
    prompt: str
    negative: str


class StylesOut(BaseModel):
    styles: list[StyleOut]
    compositions: list[str]
    resolutions: dict[str, int | None] = Field(description="preset -> longest side in pixels (null: the photo's); "
                                                           "photos are only ever shrunk")
    formats: list[str]
    tier: dict[str, Any] = Field(description="this account's tier and its limits")


class ModelsOut(BaseModel):
    models: list[str] = Field(description="'studio' is the weight-free backdrop (the default); the others are "
                                          "diffusion checkpoints in this server's models folder")
    loras: list[str]
    default: str


class PresenceOut(BaseModel):
    marked_fraction: float = Field(description="share of the image where the mark reads (0 when none was found)")
    cell_px: int | None = Field(description="side of one map cell in the image's pixels (null: no mark found)")
    z: list[list[float]] | None = Field(description="per cell, how strongly the mark reads (about N(0, 1) where "
                                                    "it is absent); null when no mark was found")
    mask_png: str = Field(description="base64 PNG, 8-bit gray at the image's size: 255 where the mark reads, 0 "
                                      "elsewhere (the `backdrop verify --map` image)")


class VerifyOut(BaseModel):
    found: bool
    watermark_id: str
    score: float
    false_positive_probability: float
    signature: str
    chain: str
    tampered: bool
    owner: Literal["you", "another account"] | None = Field(
        description="whose record this is; the record's details are shown only to its own account")
    record: dict[str, Any] | None
    later_records: list[dict[str, Any]]
    pixels: str
    problems: list[str]
    c2pa: dict[str, Any] | None
    message: str
    presence: PresenceOut | None = Field(None, description="where the mark is; only with localise=true")


ERRORS = {401: {"model": ErrorOut}, 404: {"model": ErrorOut}, 413: {"model": ErrorOut},
          415: {"model": ErrorOut}, 422: {"model": ErrorOut}, 429: {"model": ErrorOut}}


def job_form_schema() -> dict:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["photo"],
        "properties": {
            "photo": {"type": "string", "format": "binary", "description": "the product photo (PNG, JPEG, WebP, "
                                                                             "TIFF, BMP or GIF)"},
            "style": {"type": "string", "default": "Minimal Studio", "description": "a style from GET /v1/styles"},
            "composition": {"type": "string", "default": "centered", "description": "from GET /v1/styles"},
            "scene": {"type": "string", "default": "", "description": "scene/subject text added to the prompt"},
            "variations": {"type": "integer", "default": 1, "minimum": 1, "description": "images; variation k uses "
                                                                                          "seed + k"},
            "seed": {"type": "integer", "default": 0, "minimum": 0},
            "resolution": {"type": "string", "default": "original", "enum": list(resolution_presets())},
            "format": {"type": "string", "default": "png", "enum": list(FORMATS)},
            "model": {"type": "string", "default": STUDIO, "description": "from GET /v1/models"},
            "lora": {"type": "array", "items": {"type": "string"}, "description": "NAME or NAME:STRENGTH from GET "
                                                                                  "/v1/models; repeatable"},
        }}}}}}


def verify_form_schema() -> dict:
    return {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["image"],
        "properties": {"image": {"type": "string", "format": "binary"},
                       "localise": {"type": "boolean", "default": False,
                                    "description": "also map where the mark is (a marked region pasted into "
                                                   "other material is searched for too; slower)"}}}}}}}


# ---- state -----------------------------------------------------------------------------------------------

@dataclass
class Caller:
    account: Account
    tier: Tier


class ServerState:
    """What the endpoints share: settings, store, tiers, the runner and the catalog."""

    def __init__(self, config: ServeConfig, store: Store, tiers: TierBook, runner) -> None:
        self.config, self.store, self.tiers, self.runner = config, store, tiers, runner
        self.data = config.data
        self.rates = RateLimiter()
        self.decoding = threading.BoundedSemaphore(DECODE_SLOTS)
        self.verifying = threading.BoundedSemaphore(VERIFY_SLOTS)
        self._catalog: tuple[float, Catalog] | None = None
        self._catalog_lock = threading.Lock()

    def warm_up(self) -> None:
        """Pay the first request's costs at start-up (imports, decoders, the catalog), not in a client's latency."""
        import cv2
        import numpy as np

        from .uploads import Upload

        self.catalog()
        folder = self.data.tmp / ("warmup_" + secrets.token_hex(4))
        folder.mkdir(mode=0o700)
        try:
            path = folder / "upload"
            path.write_bytes(cv2.imencode(".png", np.full((160, 160, 3), 200, np.uint8))[1].tobytes())
            with contextlib.suppress(HttpError):
                check_photo(Upload(path, path.stat().st_size, ""), "photo", max_bytes=self.config.max_upload_bytes,
                            max_pixels=self.config.max_pixels, decoding=self.decoding)
            _check_output_size(JobParams.from_form({}, self.catalog(), 1), 160, 160,
                               Tier("warmup", 1, 1, 4096, 1, 1))
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def catalog(self) -> Catalog:
        with self._catalog_lock:
            if self._catalog is None or time.monotonic() - self._catalog[0] > CATALOG_TTL_S:
                self._catalog = (time.monotonic(), Catalog.load(self.config.models_dir))
            return self._catalog[1]


def freeze_start_up_objects() -> None:
    """Take what start-up made (modules, the app and its schemas, decoders, the catalog: tens of thousands of
    objects that live as long as the process) out of the cyclic garbage collector's scans (``gc.freeze``).

    Without it each full collection walked all of them while holding the GIL: the event loop and every request
    stopped for 40 to 160 ms (measured in the API process under the load benchmark), which was most of the
    submission p99. Collections now scan only what requests made."""
    import gc

    gc.collect()
    gc.freeze()


def _state(request: Request) -> ServerState:
    return request.app.state.backdrop


_bearer = HTTPBearer(auto_error=False, description="the API key printed by `backdrop accounts create`")


async def authenticated(request: Request,
                        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]) -> Caller:
    """The calling account (401 without a valid key), counted against its requests per minute (429)."""
    unauthorized = HttpError(401, "send a valid API key: Authorization: Bearer <key>",
                             headers={"WWW-Authenticate": "Bearer"})
    if credentials is None or not well_formed(credentials.credentials):
        raise unauthorized
    state = _state(request)
    try:
        account = await _read(state.store, state.store.authenticate, hash_api_key(credentials.credentials))
    except Unauthorized:
        raise unauthorized from None
    tier = state.tiers.get(account.tier)
    if tier is None:
        raise HttpError(403, f"this account's tier {account.tier!r} is not defined in the server's tiers file; ask "
                             "the operator to fix the account or the tiers file")
    try:
        state.rates.admit(account.id, tier.requests_per_minute, time.time())
    except LimitExceeded as exc:
        raise _limit_error(exc) from None
    return Caller(account, tier)


CallerDep = Annotated[Caller, Depends(authenticated)]
IdempotencyKey = Annotated[str | None, Header(alias="Idempotency-Key", description="the same key and request within "
                                              "this account give the same job (replayed: Idempotent-Replayed: true)")]


def _limit_error(exc: LimitExceeded) -> HttpError:
    return HttpError(429, str(exc), limit=exc.limit, value=exc.value, retry_after=exc.retry_after)


# ---- the application -------------------------------------------------------------------------------------

class ServerTiming:
    """ASGI middleware: ``Server-Timing: app;dur=<ms>`` on every answer, from the request reaching the application
    (headers read) to its answer starting. Clients and the load benchmark tell the server's time from the
    network's and their own."""

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()

        async def timed(message) -> None:
            if message["type"] == "http.response.start":
                timing = f"app;dur={(time.perf_counter() - started) * 1000:.1f}".encode()
                message = {**message, "headers": [*message.get("headers", []), (b"server-timing", timing)]}
            await send(message)

        await self.app(scope, receive, timed)


def create_app(state: ServerState) -> FastAPI:
    from contextlib import asynccontextmanager

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        await run_in_threadpool(state.warm_up)
        freeze_start_up_objects()
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        state.runner.start()
        try:
            yield
        finally:
            await run_in_threadpool(state.runner.stop)

    app = FastAPI(title="Backdrop API", version="1",
                  description="New backgrounds for product photos, the product pixel-exact. Every delivered image "
                              "carries an invisible watermark whose ID leads to a signed ledger record bound to "
                              "your account, and a C2PA manifest. Authenticate with `Authorization: Bearer <key>`.",
                  lifespan=lifespan)
    app.state.backdrop = state
    app.add_middleware(ServerTiming)

    @app.exception_handler(HttpError)
    async def _http_error(request: Request, exc: HttpError) -> JSONResponse:
        body: dict[str, Any] = {"detail": str(exc)}
        headers = dict(exc.headers)
        if exc.limit is not None:
            body.update(limit=exc.limit, limit_value=exc.value)
            headers["Backdrop-Limit"] = exc.limit
        if exc.retry_after is not None:
            body["retry_after"] = exc.retry_after
            headers["Retry-After"] = str(exc.retry_after)
        return JSONResponse(body, status_code=exc.status, headers=headers)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> dict:
        return {"status": "ok", **state.runner.status()}

    @app.post("/v1/jobs", status_code=202, response_model=JobOut, responses=ERRORS, openapi_extra=job_form_schema(),
              summary="Submit a product photo; answers 202 with the job")
    async def submit_job(request: Request, caller: CallerDep, idempotency_key: IdempotencyKey = None):
        state = _state(request)
        if idempotency_key is not None and not (0 < len(idempotency_key) <= MAX_IDEMPOTENCY_KEY
                                                and idempotency_key.isprintable()):
            raise HttpError(422, f"Idempotency-Key must be 1..{MAX_IDEMPOTENCY_KEY} printable characters")
        job_id = "job_" + secrets.token_hex(12)
        staging = state.data.tmp / job_id
        committed = False
        try:
            form = await receive_form(request, staging, file_field="photo",
                                      max_bytes=state.config.max_upload_bytes)
            submission = await run_in_threadpool(_accept, state, caller, form, job_id, idempotency_key)
            committed = not submission.replayed
        finally:
            if not committed:  # refused, replayed or failed: neither the upload nor the new job's folder stays
                for folder in (staging, state.data.job_dir(job_id)):
                    await run_in_threadpool(shutil.rmtree, folder, True)
        if submission.replayed:
            return JSONResponse(_job_out(submission.job).model_dump(), status_code=202,
                                headers={"Idempotent-Replayed": "true"})
        state.runner.notify()
        log.info("job %s accepted for %s (%d image(s))", job_id, caller.account.id, submission.job.images_reserved)
        return _job_out(submission.job)

    @app.get("/v1/jobs/{job_id}", response_model=JobOut, responses=ERRORS, summary="Status, progress, errors "
                                                                                    "and images of a job")
    async def get_job(job_id: str, request: Request, caller: CallerDep):
        return _job_out(await _own_job(request, job_id, caller))

    @app.get("/v1/jobs/{job_id}/images/{n}", responses={**ERRORS, 200: {"content": {m: {} for m in
                                                                                        MEDIA_TYPES.values()}}},
             response_class=FileResponse, summary="A delivered image, with its C2PA manifest")
    async def get_image(job_id: str, n: int, request: Request, caller: CallerDep):
        state = _state(request)
        job = await _own_job(request, job_id, caller)
        image = next((i for i in job.images if i.n == n), None)
        if image is None:
            raise HttpError(404, f"job {job.id} has no image {n} (status {job.status}, {len(job.images)} image(s) "
                                 "delivered)")
        path = state.data.inside(image.path)
        if not path.is_relative_to(state.data.job_dir(job.id)) or not path.is_file():
            raise HttpError(404, f"image {n} of job {job.id} is no longer on the server")
        return FileResponse(path, media_type=MEDIA_TYPES[image.format], filename=f"{job.id}_{n}"
                            f"{EXTENSIONS[image.format]}", headers={"Cache-Control": "private, max-age=86400"})

    @app.delete("/v1/jobs/{job_id}", response_model=JobOut, responses={**ERRORS, 409: {"model": ErrorOut}},
                summary="Cancel a job (queued: at once; running: after the variation in progress)")
    async def cancel_job(job_id: str, request: Request, caller: CallerDep):
        state = _state(request)
        if not JOB_ID.fullmatch(job_id):
            raise _no_job(job_id)
        job = await run_in_threadpool(state.store.cancel, job_id, caller.account.id, time.time())
        if job is None:
            raise _no_job(job_id)
        if job.status in (SUCCEEDED, FAILED):
            raise HttpError(409, f"job {job.id} already {job.status}; there is nothing to cancel")
        return JSONResponse(_job_out(job).model_dump(), status_code=202 if job.status == RUNNING else 200)

    @app.get("/v1/styles", response_model=StylesOut, responses=ERRORS,
             summary="Styles, compositions, resolutions and formats a job may ask for")
    async def styles(request: Request, caller: CallerDep):
        from ...runtime.backdrop.styles import load_styles

        presets = await run_in_threadpool(load_styles)
        catalog = await run_in_threadpool(_state(request).catalog)
        return StylesOut(styles=[StyleOut(name=p.name, prompt=p.prompt_text, negative=p.negative_text)
                                 for p in presets.values()],
                         compositions=list(catalog.compositions),
                         resolutions={name: edge for name, (_, edge) in resolution_presets().items()},
                         formats=list(FORMATS), tier={"name": caller.tier.name, **caller.tier.limits()})

    @app.get("/v1/models", response_model=ModelsOut, responses=ERRORS,
             summary="Models and LoRAs a job may ask for (from the server's models folder)")
    async def models(request: Request, caller: CallerDep):
        catalog = await run_in_threadpool(_state(request).catalog)
        return ModelsOut(models=list(catalog.models), loras=list(catalog.loras), default=STUDIO)

    @app.post("/v1/verify", response_model=VerifyOut, responses=ERRORS, openapi_extra=verify_form_schema(),
              summary="Read an image's watermark, its ledger record and signature status")
    async def verify(request: Request, caller: CallerDep):
        state = _state(request)
        staging = state.data.tmp / ("verify_" + secrets.token_hex(12))
        try:
            form = await receive_form(request, staging, file_field="image", max_bytes=state.config.max_upload_bytes)
            try:
                localise = verify_localise(form.fields)
            except ParamError as exc:
                raise HttpError(422, str(exc)) from None
            photo = await run_in_threadpool(check_photo, form.upload, "image",
                                            max_bytes=state.config.max_upload_bytes,
                                            max_pixels=state.config.max_pixels, decoding=state.decoding)
            result = await run_in_threadpool(_verify_file, state, photo.path, localise)
        finally:
            await run_in_threadpool(shutil.rmtree, staging, True)
        return _verification_out(result, caller.account.id, localise)

    return app


# ---- helpers ---------------------------------------------------------------------------------------------

def _accept(state: ServerState, caller: Caller, form, job_id: str, idempotency_key: str | None) -> Submission:
    """The blocking part of a submission, in one worker thread: the parameters, the image gate, the tier's size
    limit, the photo moved into its job folder, then the job committed (idempotency and quotas checked in that
    transaction)."""
    if "photo" in form.fields:
        raise HttpError(422, "send the photo as a file (a form part with a filename), not as a text field")
    try:
        params = JobParams.from_form(form.fields, state.catalog(), caller.tier.max_variations)
    except ParamError as exc:
        raise HttpError(422, str(exc), limit=exc.limit, value=exc.value) from None
    photo = check_photo(form.upload, "photo", max_bytes=state.config.max_upload_bytes,
                        max_pixels=state.config.max_pixels, decoding=state.decoding)
    _check_output_size(params, photo.width, photo.height, caller.tier)
    new = NewJob(id=job_id, account_id=caller.account.id, idempotency_key=idempotency_key,
                 fingerprint=params.fingerprint(form.upload.sha256), params=params.to_json(),
                 input_name=photo.path.name, images=params.variations)
    photo.path.parent.rename(state.data.job_dir(job_id))  # the photo is in place before the job exists
    try:
        return state.store.submit(new, caller.tier, time.time())
    except LimitExceeded as exc:
        raise _limit_error(exc) from None
    except IdempotencyConflict as exc:
        raise HttpError(422, str(exc)) from None


def _check_output_size(params: JobParams, width: int, height: int, tier: Tier) -> None:
    from ...runtime.watermark.codec import MIN_SIDE

    out_w, out_h = params.output_size(width, height)
    if max(out_w, out_h) > tier.max_resolution:
        smaller = [name for name, (_, edge) in resolution_presets().items() if edge and edge <= tier.max_resolution]
        raise HttpError(413, f"the images would be {out_w}x{out_h}; the {tier.name} tier delivers at most "
                             f"{tier.max_resolution} px on the longest side. Send a smaller photo or ask for a "
                             f"smaller resolution ({', '.join(smaller) or 'none fits'})",
                        limit="max_resolution", value=tier.max_resolution)
    if min(out_w, out_h) < MIN_SIDE:
        raise HttpError(422, f"the images would be {out_w}x{out_h}; every delivered image carries a watermark, which "
                             f"needs at least {MIN_SIDE} px on each side")


async def _own_job(request: Request, job_id: str, caller: Caller) -> Job:
    if not JOB_ID.fullmatch(job_id):
        raise _no_job(job_id)
    store = _state(request).store
    job = await _read(store, store.job, job_id, caller.account.id)
    if job is None:
        raise _no_job(job_id)
    return job


async def _read(store: Store, read, *args):
    """A short read of the store: on the event loop where the store says its reads never wait
    (``Store.reads_on_event_loop``: SQLite in WAL mode), else in the thread pool. Each request reads its key's
    account and a poll its job; a thread-pool round trip costs more CPU than such a read and a GIL hand-off."""
    if store.reads_on_event_loop:
        return read(*args)
    return await run_in_threadpool(read, *args)


def _no_job(job_id: str) -> HttpError:
    return HttpError(404, f"no job {job_id[:40]!r} for this account")


def _iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return _dt.datetime.fromtimestamp(timestamp, _dt.timezone.utc).isoformat(timespec="milliseconds")


def _job_out(job: Job) -> JobOut:
    return JobOut(id=job.id, status=job.status, progress=round(job.progress, 4), retryable=job.retryable,
                  error=job.error, cancel_requested=job.cancel_requested, created_at=_iso(job.created_at),
                  started_at=_iso(job.started_at), finished_at=_iso(job.finished_at), params=job.params,
                  images=[ImageOut(n=i.n, url=f"/v1/jobs/{job.id}/images/{i.n}", format=i.format, width=i.width,
                                   height=i.height, bytes=i.bytes, sha256=i.sha256) for i in job.images])


def _verify_file(state: ServerState, path, localise: bool = False):
    from ...runtime.watermark.service import get_service

    with state.verifying:
        service = get_service(state.data.root, ledger=state.config.ledger_location)
        return service.verify_file(path, localise=localise)


def _presence_out(result, presence: dict[str, Any] | None) -> PresenceOut:
    """``localise=true``'s answer from a Verification and its JSON ``presence`` (None: no mark found)."""
    import base64

    mask_png = base64.b64encode(result.presence_png()).decode("ascii")
    if presence is None:
        return PresenceOut(marked_fraction=0.0, cell_px=None, z=None, mask_png=mask_png)
    return PresenceOut(**presence, mask_png=mask_png)


def _verification_out(result, account_id: str, localise: bool = False) -> VerifyOut:
    data = result.to_json_dict()
    record = data.get("record")
    owner = None if record is None else ("you" if record.get("account") == account_id else "another account")
    mine = owner == "you"
    return VerifyOut(found=data["found"], watermark_id=data["watermark_id"], score=data["score"],
                     false_positive_probability=data["false_positive_probability"], signature=data["signature"],
                     chain=data["chain"], tampered=data["tampered"], owner=owner,
                     record=record if mine else None, later_records=data["later_records"] if mine else [],
                     pixels=data["pixels"] if mine else "", problems=data["problems"] if mine else [],
                     c2pa=data.get("c2pa"), message=data["message"],
                     presence=_presence_out(result, data["presence"]) if localise else None)

