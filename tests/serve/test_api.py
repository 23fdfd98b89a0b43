"""`backdrop serve` end to end: the real server process on a loopback port, called with httpx."""

from __future__ import annotations

import base64
import io
import struct
import zlib

import cv2
import numpy as np
import pytest

from tests.serve.server_process import decode, png_bytes, wait_for

PHOTO = png_bytes(160, 192, seed=3)


def submit(client, photo: bytes = PHOTO, headers=None, filename="bottle.png", **fields):
    return client.post("/v1/jobs", files={"photo": (filename, photo, "image/png")},
                       data={k: v for k, v in fields.items()}, headers=headers or {})


@pytest.fixture()
def alice(server):
    with server.client(server.accounts["alice"]["api_key"]) as client:
        yield client


def test_a_job_runs_and_its_image_carries_watermark_record_and_c2pa(server, alice):
    from comfyui_backdrop.runtime.provenance.c2pa_manifest import read_manifest
    from comfyui_backdrop.runtime.provenance.keys import load_keys

    answer = submit(alice, style="Soft Spring", scene="a marble counter", seed="5")
    assert answer.status_code == 202, answer.text
    job = answer.json()
    assert job["status"] == "queued" and job["id"].startswith("job_") and job["images"] == []
    done = wait_for(alice, job["id"])
    assert done["status"] == "succeeded" and done["progress"] == 1.0 and done["error"] is None
    assert done["params"]["style"] == "Soft Spring" and done["params"]["seed"] == 5
    (image,) = done["images"]
    assert (image["width"], image["height"], image["format"]) == (192, 160, "png")
    fetched = alice.get(image["url"])
    assert fetched.status_code == 200 and fetched.headers["content-type"] == "image/png"
    assert len(fetched.content) == image["bytes"]
    manifest = read_manifest(fetched.content, "png", keys=load_keys(server.data))
    assert manifest.present and manifest.watermark_ids and manifest.watermark_versions == [3], manifest.summary
    verified = alice.post("/v1/verify", files={"image": ("x.png", fetched.content, "image/png")}).json()
    assert verified["found"] and verified["owner"] == "you" and verified["signature"] == "valid"
    assert verified["watermark_id"] in manifest.watermark_ids
    assert verified["record"]["account"] == server.accounts["alice"]["id"]
    assert verified["record"]["metadata"] == {"style": "Soft Spring", "watermark_version": 3}
    assert verified["record"]["watermark_version"] == 3 and not verified["tampered"]


def test_images_match_backdrop_run_pixel_for_pixel(server, alice, tmp_path):
    """Same photo, seed and settings as `backdrop run`: the server's image is the CLI's output with the server's
    watermark embedded around the exact product (nothing else differs). Variation k is `--seed SEED+k`."""
    from comfyui_backdrop.cli.main import main
    from comfyui_backdrop.runtime.provenance.keys import load_keys
    from comfyui_backdrop.runtime.watermark.codec import embed
    from comfyui_backdrop.runtime.watermark.service import ProvenanceService

    job = wait_for(alice, submit(alice, style="Glam", seed="11", variations="2").json()["id"])
    assert job["status"] == "succeeded" and len(job["images"]) == 2
    (tmp_path / "bottle.png").write_bytes(PHOTO)
    key = load_keys(server.data).watermark_key
    service = ProvenanceService(server.data)
    for k, image in enumerate(job["images"]):
        out = tmp_path / f"cli{k}"
        assert main(["run", str(tmp_path / "bottle.png"), "--style", "Glam", "--seed", str(11 + k), "--out", str(out),
                     "--save-mask", "--quiet"]) == 0
        cli = cv2.cvtColor(cv2.imread(str(out / "bottle_glam.png")), cv2.COLOR_BGR2RGB)
        product = cv2.imread(str(out / "bottle_mask.png"), cv2.IMREAD_GRAYSCALE) >= 128  # alpha >= 0.5
        served = decode(alice.get(image["url"]).content)
        assert np.array_equal(served[product], cli[product]), "product pixels differ"
        mark = int(service.verify_image(served).watermark_id, 16)
        expected = np.where(product[..., None], cli, embed(cli, mark, key))
        assert np.array_equal(served, expected), f"variation {k} differs from backdrop run --seed {11 + k}"


def test_idempotency_key_replays_the_same_job(server, alice):
    first = submit(alice, headers={"Idempotency-Key": "order-1"}, seed="3")
    again = submit(alice, headers={"Idempotency-Key": "order-1"}, seed="3")
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"] and again.headers.get("idempotent-replayed") == "true"
    changed = submit(alice, headers={"Idempotency-Key": "order-1"}, seed="4")
    assert changed.status_code == 422 and "different photo or parameters" in changed.json()["detail"]
    wait_for(alice, first.json()["id"])


def test_without_a_valid_key_every_endpoint_is_401(server):
    with server.client() as anonymous, server.client("bdk_" + "x" * 43) as unknown:
        for client in (anonymous, unknown):
            for method, path in (("GET", "/v1/styles"), ("GET", "/v1/models"), ("GET", "/v1/jobs/job_" + "0" * 24),
                                 ("DELETE", "/v1/jobs/job_" + "0" * 24), ("POST", "/v1/jobs"), ("POST", "/v1/verify")):
                answer = client.request(method, path)
                assert answer.status_code == 401, (method, path, answer.text)
                assert answer.headers["www-authenticate"] == "Bearer"
    with server.client(headers={"Authorization": "Basic " + server.accounts["alice"]["api_key"]}) as basic:
        assert basic.get("/v1/styles").status_code == 401


def test_a_revoked_key_is_refused_from_the_next_request(server):
    from comfyui_backdrop.cli.main import main

    with server.client(server.accounts["mallory"]["api_key"]) as mallory:
        assert mallory.get("/v1/models").status_code == 200
        assert main(["accounts", "revoke", "mallory", "--data", str(server.data)]) == 0
        assert mallory.get("/v1/models").status_code == 401


def test_another_accounts_job_is_not_found(server, alice):
    job = submit(alice).json()
    with server.client(server.accounts["bob"]["api_key"]) as bob:
        for method, path in (("GET", f"/v1/jobs/{job['id']}"), ("GET", f"/v1/jobs/{job['id']}/images/0"),
                             ("DELETE", f"/v1/jobs/{job['id']}")):
            answer = bob.request(method, path)
            assert answer.status_code == 404 and job["id"] in answer.json()["detail"]
        assert bob.get("/v1/jobs/../../ledger.sqlite3").status_code == 404
        done = wait_for(alice, job["id"])
        verified = bob.post("/v1/verify", files={"image": ("x.png", alice.get(done["images"][0]["url"]).content)})
        body = verified.json()
        assert body["found"] and body["owner"] == "another account" and body["signature"] == "valid"
        assert body["record"] is None and body["later_records"] == [] and body["problems"] == []


def test_verify_of_an_unmarked_image(alice):
    body = alice.post("/v1/verify", files={"image": ("p.png", PHOTO, "image/png")}).json()
    assert body["found"] is False and body["watermark_id"] == "" and body["owner"] is None and body["record"] is None


def test_verify_with_localise_maps_the_marked_half_of_a_spliced_image(server, alice):
    """``localise=true`` answers where the mark is: its share of the image, the cell z-scores and the mask as a PNG
    at the image's size (white on the marked half of a splice, black on the other); without it, no map."""
    from comfyui_backdrop.runtime.provenance.keys import load_keys
    from comfyui_backdrop.runtime.watermark import embed
    from tests.fixtures.watermark_images import resize, skimage_photo, splice

    key = load_keys(server.data).watermark_key
    other = resize(skimage_photo("coffee"), 512 / 600, 512 / 400)[:512, :512]
    spliced = splice(embed(skimage_photo("astronaut"), 4242, key), other, left=True)
    files = {"image": ("s.png", cv2.imencode(".png", spliced[..., ::-1])[1].tobytes(), "image/png")}
    body = alice.post("/v1/verify", files=files, data={"localise": "true"}).json()
    assert body["found"] and int(body["watermark_id"], 16) == 4242 and body["record"] is None
    presence = body["presence"]
    assert 0.35 < presence["marked_fraction"] < 0.7 and presence["cell_px"] > 0
    assert len(presence["z"]) * presence["cell_px"] >= 512 - presence["cell_px"]
    mask = decode(base64.b64decode(presence["mask_png"]))
    assert mask.shape[:2] == (512, 512) and mask.dtype == np.uint8
    gray = mask if mask.ndim == 2 else mask[..., 0]
    assert gray[:, :192].mean() > 0.9 * 255 and gray[:, 320:].mean() < 0.1 * 255
    assert alice.post("/v1/verify", files=files).json()["presence"] is None


def test_verify_with_localise_of_an_unmarked_image_answers_an_empty_map(alice):
    body = alice.post("/v1/verify", files={"image": ("p.png", PHOTO, "image/png")}, data={"localise": "1"}).json()
    assert body["found"] is False
    presence = body["presence"]
    assert presence["marked_fraction"] == 0.0 and presence["cell_px"] is None and presence["z"] is None
    mask = decode(base64.b64decode(presence["mask_png"]))
    assert mask.shape[:2] == (160, 192) and not mask.any()


@pytest.mark.parametrize(("fields", "said"), [({"localise": "maybe"}, "'localise' must be true or false"),
                                              ({"localise": ["true", "false"]}, "send 'localise' once"),
                                              ({"colour": "red"}, "unknown form field(s) colour")])
def test_verify_refuses_bad_fields(alice, fields, said):
    answer = alice.post("/v1/verify", files={"image": ("p.png", PHOTO, "image/png")}, data=fields)
    assert answer.status_code == 422 and said in answer.json()["detail"]


def test_cancel_a_running_job_keeps_what_it_delivered(server, alice):
    big = png_bytes(480, 576, seed=4)
    job = submit(alice, photo=big, variations="8").json()
    running = wait_for(alice, job["id"], statuses=("running", "succeeded"))
    assert running["status"] == "running", "the job finished before it could be canceled"
    answer = alice.delete(f"/v1/jobs/{job['id']}")
    assert answer.status_code == 202 and answer.json()["cancel_requested"]
    done = wait_for(alice, job["id"])
    assert done["status"] == "canceled" and len(done["images"]) < 8
    for image in done["images"]:
        assert alice.get(image["url"]).status_code == 200
    assert alice.delete(f"/v1/jobs/{job['id']}").status_code == 200, "cancelling again is harmless"


def test_styles_and_models_say_what_may_be_asked(server, alice):
    styles = alice.get("/v1/styles").json()
    assert {"Minimal Studio", "Soft Spring", "Glam"} <= {s["name"] for s in styles["styles"]}
    assert "centered" in styles["compositions"] and styles["formats"] == ["png", "jpeg", "webp"]
    assert styles["resolutions"]["original"] is None and styles["resolutions"]["web"] == 1600
    assert styles["tier"] == {"name": "test", "requests_per_minute": 100000, "images_per_day": 100000,
                              "max_resolution": 4096, "max_variations": 8, "concurrent_jobs": 1000}
    answer = alice.get("/v1/models")
    models = answer.json()
    assert models["default"] == "studio" and models["models"][0] == "studio"
    assert answer.headers["server-timing"].startswith("app;dur=")


def test_openapi_documents_every_endpoint(server):
    with server.client() as client:
        assert client.get("/docs").status_code == 200
        spec = client.get("/openapi.json").json()
    paths = {(path, method) for path, item in spec["paths"].items() for method in item}
    assert paths == {("/v1/jobs", "post"), ("/v1/jobs/{job_id}", "get"), ("/v1/jobs/{job_id}", "delete"),
                     ("/v1/jobs/{job_id}/images/{n}", "get"), ("/v1/styles", "get"), ("/v1/models", "get"),
                     ("/v1/verify", "post")}
    form = spec["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert {"photo", "style", "composition", "scene", "variations", "seed", "resolution", "format", "model",
            "lora"} <= set(form["properties"])


def test_formats_and_resolution_presets(alice):
    photo = png_bytes(700, 560, seed=6)
    jobs = {fmt: submit(alice, photo=photo, format=fmt, resolution="thumbnail").json()["id"] for fmt in
            ("jpeg", "webp")}
    for fmt, job_id in jobs.items():
        (image,) = wait_for(alice, job_id)["images"]
        assert (image["format"], image["width"], image["height"]) == (fmt, 410, 512)
        answer = alice.get(image["url"])
        assert answer.headers["content-type"] == f"image/{fmt}" and decode(answer.content).shape == (512, 410, 3)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height in its header (what a decompression bomb does) with one tiny IDAT."""
    def chunk(kind: bytes, payload: bytes) -> bytes:
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


def _animated_gif() -> bytes:
    from PIL import Image

    frames = [Image.new("RGB", (160, 160), color) for color in ("red", "blue")]
    out = io.BytesIO()
    frames[0].save(out, format="GIF", save_all=True, append_images=frames[1:])
    return out.getvalue()


@pytest.mark.parametrize("payload, status, words", [
    (b"%PDF-1.7 not an image", 415, "not an image this server reads"),
    (_png_header_only(60000, 60000), 413, "megapixels"),
    (PHOTO[: len(PHOTO) // 3], 422, "corrupt"),
    (_animated_gif(), 422, "animated GIF with 2 frames"),
    (b"", 422, "no image"),
    (png_bytes(100, 120), 422, "needs at least 128 px"),
])
def test_bad_uploads_get_413_415_or_422_with_a_reason(alice, payload, status, words):
    answer = submit(alice, photo=payload)
    assert answer.status_code == status, answer.text
    assert words in answer.json()["detail"]


def _read_http_response(sock) -> str:
    """One whole HTTP/1.1 response (headers, then Content-Length bytes of body): it may arrive in pieces."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = sock.recv(65536)
        if not piece:
            return data.decode(errors="replace")
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                   if line.lower().startswith(b"content-length:")), 0)
    while len(body) < length:
        piece = sock.recv(65536)
        if not piece:
            break
        body += piece
    return (head + b"\r\n\r\n" + body).decode(errors="replace")


def test_an_upload_over_the_size_limit_is_413_before_it_is_read(server, alice):
    import socket

    import httpx

    key = server.accounts["alice"]["api_key"]
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:  # headers only, no body sent
        sock.sendall(f"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: "
                     f"multipart/form-data; boundary=x\r\nContent-Length: {(40 << 20) + 1}\r\n\r\n".encode())
        reply = _read_http_response(sock)
    assert reply.startswith("HTTP/1.1 413") and "at most 40.0 MiB" in reply

    def chunks():  # no Content-Length: the server counts as the body arrives
        yield b"--x\r\nContent-Disposition: form-data; name=\"photo\"; filename=\"a.png\"\r\n\r\n"
        for _ in range(41):
            yield b"\0" * (1 << 20)

    try:
        streamed = alice.post("/v1/jobs", content=chunks(), headers={"Content-Type": "multipart/form-data; "
                                                                                     "boundary=x"})
        assert streamed.status_code == 413
    except httpx.HTTPError:
        pass  # the server may close the connection while the client is still sending: refused either way
    assert list((server.data / "tmp").iterdir()) == [], "a refused upload left a file behind"


def test_wrong_form_shapes(alice):
    assert alice.post("/v1/jobs", json={"photo": "x"}).status_code == 415
    extra = alice.post("/v1/jobs", files={"photo": ("a.png", PHOTO), "other": ("b.png", PHOTO)})
    assert extra.status_code == 422 and "'other'" in extra.json()["detail"]
    text_only = b'--b\r\nContent-Disposition: form-data; name="photo"\r\n\r\nbottle.png\r\n--b--\r\n'
    as_text = alice.post("/v1/jobs", content=text_only, headers={"Content-Type": "multipart/form-data; boundary=b"})
    assert as_text.status_code == 422 and "as a file" in as_text.json()["detail"]
    assert alice.post("/v1/jobs", data={"photo": "bottle.png"}).status_code == 415, "urlencoded, not multipart"
    assert submit(alice, style="Neon").status_code == 422
    assert submit(alice, model="checkpoints/missing.safetensors").status_code == 422
    long_key = submit(alice, headers={"Idempotency-Key": "k" * 300})
    assert long_key.status_code == 422


def test_keys_prompts_and_uploads_stay_out_of_logs_and_temp_folders(server, alice):
    canary = "canary scene 7f3a1c on driftwood"
    job = wait_for(alice, submit(alice, scene=canary).json()["id"])
    assert job["status"] == "succeeded" and job["params"]["scene"] == canary
    log = server.log()
    assert "POST /v1/jobs" in log, "the log is not where the test looks"
    assert "canary scene" not in log
    for account in server.accounts.values():
        assert account["api_key"] not in log and account["api_key"][4:20] not in log
    assert list(server.tmpdir.iterdir()) == [], "the server wrote outside its data folder (system temp)"


def test_workers_run_as_idle_priority_and_the_api_does_not(server, alice):
    """Submissions are answered first: the API process keeps the normal policy, its pipeline workers SCHED_IDLE."""
    import os
    from pathlib import Path

    from tests.fixtures.processes import descends_from

    if not hasattr(os, "sched_getscheduler"):
        pytest.skip("no scheduling policies on this OS")
    server_pid = server.process.pid
    children = [int(p.name) for p in Path("/proc").iterdir()
                if p.name.isdigit() and int(p.name) != server_pid and descends_from(int(p.name), server_pid)]
    policies = {}
    for pid in children:
        try:
            policies[pid] = os.sched_getscheduler(pid)
        except OSError:  # gone
            continue
    assert os.sched_getscheduler(server_pid) == os.SCHED_OTHER
    assert os.SCHED_IDLE in policies.values(), policies  # the one worker
