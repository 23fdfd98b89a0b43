"""Starting or joining Ray for the commands that run work on it (``backdrop run --workers``, ``backdrop serve
--ray-address``): one way to check the address, pass settings to the workers and say what went wrong."""

from __future__ import annotations

import logging
import os
from typing import Any

from ..runtime.errors import InvalidInputError

# paths of this machine: an embedded cluster's workers share them; a joined cluster's nodes have their own models
# folder setting at most
# ... and the command's malloc policy (runtime/allocator.py), which every worker applies when it starts (SETUP_HOOK):
# glibc passes only the first of several GLIBC_TUNABLES entries on to a grandchild (2.36), so the variable alone
# is not enough
SETUP_HOOK = "comfyui_backdrop.runtime.allocator.tune_allocator"
ENV_FOR_WORKERS = ("BACKDROP_HOME", "BACKDROP_MODELS_DIR", "BACKDROP_ALLOCATOR", "GLIBC_TUNABLES")
ENV_FOR_CLUSTER_WORKERS = ("BACKDROP_MODELS_DIR", "BACKDROP_ALLOCATOR", "GLIBC_TUNABLES")


def init_ray(address: str | None, *, num_cpus: int, log_to_driver: bool = False, dashboard: bool = False):
    """``ray.init``: join the cluster at ``address`` (callers check it first with :func:`check_reachable`, before
    any work), or with None start a cluster of our own on this machine (never one that ``ray start`` left behind)
    with ``num_cpus`` CPUs. Returns Ray's context; errors are InvalidInputError."""
    import ray

    passed = ENV_FOR_WORKERS if address is None else ENV_FOR_CLUSTER_WORKERS
    env = {name: os.environ[name] for name in passed if name in os.environ}
    runtime_env = {"worker_process_setup_hook": SETUP_HOOK, **({"env_vars": env} if env else {})}
    common: dict[str, Any] = {"runtime_env": runtime_env, "logging_level": logging.ERROR,
                              "log_to_driver": log_to_driver}
    try:
        if address is not None:
            return ray.init(address=address, **common)
        return ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard,
                        dashboard_host="127.0.0.1", **common)
    except (ConnectionError, ValueError) as exc:  # no cluster there, or a malformed address
        raise InvalidInputError(_cannot_join(address, exc)) from None
    except Exception as exc:  # Ray raises a bare Exception when the dashboard's packages are missing
        if dashboard and "dashboard" in str(exc):
            raise InvalidInputError("the Ray dashboard needs Ray's dashboard packages: pip install "
                                    "'comfyui-backdrop[cluster]' (ray[default])") from None
        raise


def check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """A ``host:port`` address answers a TCP connection (ray.init would otherwise retry for minutes); ``auto`` and
    ``ray://`` client addresses are left to Ray."""
    import socket

    host, _, port = address.rpartition(":")
    if address == "auto" or "://" in address or not host or not port.isdigit():
        return
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as exc:
        raise InvalidInputError(_cannot_join(address, exc.strerror or exc)) from None


def _cannot_join(address: str | None, why) -> str:
    return (f"cannot join the Ray cluster at --ray-address {address}: {why} (start one with `ray start --head` on "
            "the head machine)")
