"""Probe for issue 15: is the exported form of Inductor's frozen graph (an AOTInductor package) as fast as the
frozen graph compiled just in time? Not shipped; this reproduces the figures that decided it.

    .venv/bin/python benchmarks/probe_aoti.py [--rounds 3] [--threads 2]

The SD1.5-inpaint UNet with random weights (seed 0) in bf16, 512 px, batch 2: ``torch.export``, then
``aoti_compile_and_package`` with freezing (asked for in ``inductor_configs`` and in Inductor's global config),
loaded with ``aoti_load_package``; then eager bf16, the package and the frozen JIT compile
(``TorchUNetBackend(freeze=True)``, the bench's ``compile-frozen`` row) run in turn, ``--rounds`` times. Error:
max |package - eager bf16| / max |eager bf16|. Takes about 6 minutes and 10 GB (the compile about 3 minutes).
Not collected by pytest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from comfyui_backdrop.cli.bench import build_unet
from comfyui_backdrop.runtime.engines.precision import cpu_info
from comfyui_backdrop.runtime.engines.torch_backend import TorchUNetBackend


class _UNetCall(torch.nn.Module):
    """The UNet with positional inputs and a tensor output, as torch.export wants it."""

    def __init__(self, unet: torch.nn.Module) -> None:
        super().__init__()
        self.unet = unet

    def forward(self, sample: torch.Tensor, timestep: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        return self.unet(sample, timestep, context, return_dict=False)[0]


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="probe_aoti")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    import torch._inductor.config as inductor_config

    unet = build_unet("sd15", None, 0, torch.bfloat16, torch.device("cpu"))
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 9, 64, 64, generator=generator).bfloat16()
    context = torch.randn(2, 77, 768, generator=generator).bfloat16()
    timestep = torch.tensor([500, 500])
    print(f"CPU: {cpu_info().describe()}, {args.threads} threads")
    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        start = time.perf_counter()
        exported = torch.export.export(_UNetCall(unet).eval(), (sample, timestep, context))
        print(f"torch.export: {time.perf_counter() - start:.1f} s")
        start = time.perf_counter()
        with inductor_config.patch(freezing=True):
            package = torch._inductor.aoti_compile_and_package(
                exported, package_path=str(Path(tmp) / "unet.pt2"), inductor_configs={"freezing": True})
        print(f"aoti_compile_and_package: {time.perf_counter() - start:.1f} s, "
              f"{Path(package).stat().st_size / 1e9:.2f} GB")
        runner = torch._inductor.aoti_load_package(package)
        reference = unet(sample, timestep, context, return_dict=False)[0].float()
        error = (runner(sample, timestep, context).float() - reference).abs().max() / reference.abs().max()
        print(f"package error vs eager bf16: {float(error):.1e}")
        frozen = TorchUNetBackend(unet, freeze=True)
        start = time.perf_counter()
        frozen.run(sample.float(), timestep, context.float())
        print(f"frozen JIT compile + first step: {time.perf_counter() - start:.1f} s")
        calls = {"eager bf16": lambda: unet(sample, timestep, context, return_dict=False),
                 "AOTInductor package": lambda: runner(sample, timestep, context),
                 "frozen JIT compile": lambda: frozen.run(sample.float(), timestep, context.float())}
        times: dict[str, list[float]] = {name: [] for name in calls}
        for _ in range(args.rounds):
            for name, call in calls.items():
                start = time.perf_counter()
                call()
                times[name].append(time.perf_counter() - start)
    for name, values in times.items():
        print(f"{name}: p50 {statistics.median(values):.3f} s ({', '.join(f'{v:.3f}' for v in values)})")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
