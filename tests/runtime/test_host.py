"""The headless Host: folders as given, progress through its factory, Cancel through its event; nodes bound to a
host keep the originals untouched."""

from __future__ import annotations

import pytest

from comfyui_backdrop.nodes import NODE_CLASS_MAPPINGS
from comfyui_backdrop.nodes.comfy_host import HostedNode, bind_host
from comfyui_backdrop.runtime.devices import resolve_device
from comfyui_backdrop.runtime.errors import Interrupted, InvalidInputError
from comfyui_backdrop.runtime.host import HeadlessHost, Host


def test_headless_host_reports_progress_and_stops_when_asked(tmp_path):
    seen = []
    host = HeadlessHost(tmp_path, tmp_path, progress_factory=lambda total: lambda d, t: seen.append((d, t)))
    assert isinstance(host, Host)
    step = host.progress(3)
    step(1, 3)
    host.interrupt.set()
    with pytest.raises(Interrupted):
        step(2, 3)
    assert seen == [(1, 3)]


def test_input_images_are_listed_and_nothing_else_is_reachable(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    (tmp_path / ".hidden.png").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    host = HeadlessHost(tmp_path, tmp_path / "out")
    assert host.input_image_names() == ["a.png"]
    assert host.input_image_path("a.png") == tmp_path / "a.png"
    for name in ("notes.txt", ".hidden.png", "../a.png", "/etc/passwd"):
        with pytest.raises(InvalidInputError):
            host.input_image_path(name)


def test_bind_host_gives_subclasses_and_leaves_the_originals(tmp_path):
    host = HeadlessHost(tmp_path / "in", tmp_path / "out")
    bound = bind_host(NODE_CLASS_MAPPINGS, host)
    assert set(bound) == set(NODE_CLASS_MAPPINGS)
    for name, cls in bound.items():
        assert issubclass(cls, NODE_CLASS_MAPPINGS[name]) and cls.host is host
        assert NODE_CLASS_MAPPINGS[name].host is HostedNode.host
        assert cls.__name__ == NODE_CLASS_MAPPINGS[name].__name__


def test_auto_device_follows_the_host():
    assert resolve_device("auto", auto="cpu") == "cpu"  # ComfyUI --cpu on a GPU machine keeps our models on the CPU
    assert resolve_device("cpu", auto="cuda") == "cpu"  # an explicit choice wins
    assert resolve_device("auto", auto="mps") in ("cpu", "cuda")  # devices we do not drive fall back to auto
    assert HeadlessHost().default_device() is None
