"""Fixtures shared by the node tests."""

from __future__ import annotations

import pytest


@pytest.fixture()
def progress_log(monkeypatch):
    """Every (done, total) a node reports through comfy_bridge.progress_for, outside ComfyUI."""
    from comfyui_backdrop.nodes import comfy_bridge

    calls: list[tuple[int, int]] = []
    monkeypatch.setattr(comfy_bridge, "fallback_progress_factory", lambda total: lambda d, t: calls.append((d, t)))
    return calls
