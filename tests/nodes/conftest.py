"""Fixtures shared by the node tests."""

from __future__ import annotations

import pytest

from tests.conftest import use_node_host


@pytest.fixture()
def progress_log(monkeypatch):
    """Every (done, total) a node reports through its host's progress, outside ComfyUI."""
    calls: list[tuple[int, int]] = []
    use_node_host(monkeypatch, progress_factory=lambda total: lambda d, t: calls.append((d, t)))
    return calls
