"""The CPU's units decide which precision runs natively; nothing claims a unit the flags do not show."""

from __future__ import annotations

import pytest

from comfyui_backdrop.runtime.engines.openvino_backend import check_native
from comfyui_backdrop.runtime.engines.precision import (
    ERROR_CLASS,
    PRECISIONS,
    UnsupportedPrecisionError,
    check_precision,
    cpu_info,
    native_support,
    parse_cpuinfo,
)
from comfyui_backdrop.runtime.errors import InvalidInputError

EPYC = """processor\t: 0
vendor_id\t: AuthenticAMD
model name\t: AMD EPYC
flags\t\t: fpu sse sse2 avx f16c fma avx2 bmi2 sha_ni vaes vpclmulqdq
processor\t: 1
model name\t: something else
"""
SAPPHIRE_RAPIDS = """model name\t: Intel(R) Xeon(R) Platinum 8481C CPU @ 2.70GHz
flags\t\t: fpu sse avx f16c fma avx2 avx512f avx512bw avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8
"""
SAPPHIRE_RAPIDS_FP16 = """model name\t: Intel(R) Xeon(R) Processor
flags\t\t: fpu avx f16c fma avx2 avx512f avx512_vnni avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 avx_vnni
"""
GRANITE_RAPIDS = """model name\t: Intel(R) Xeon(R) 6972P
flags\t\t: fpu avx f16c fma avx2 avx512f avx512_bf16 avx512_fp16 amx_bf16 amx_tile amx_int8 amx_fp16
"""
SKYLAKE = """model name\t: Intel(R) Xeon(R) CPU @ 2.00GHz
flags\t\t: fpu sse avx f16c fma avx2 avx512f avx512bw
"""


def test_avx2_epyc_has_no_native_bf16_or_fp16():
    cpu = parse_cpuinfo(EPYC)
    assert cpu.model == "AMD EPYC" and cpu.isa == "AVX2"
    assert cpu.units == ("AVX2", "FMA", "F16C")
    assert not cpu.native_bf16 and not cpu.native_fp16 and cpu.int8_dot == "AVX2 (no VNNI)"
    ok, why = native_support("bf16", cpu)
    assert not ok and "AMD EPYC" in why and "emulated" in why
    assert native_support("fp16", cpu)[0] is False
    assert native_support("fp32", cpu) == (True, "AVX2 FMA")
    assert native_support("int8", cpu)[0] is True


def test_amx_xeon_runs_bf16_on_amx_and_int8_on_amx_int8():
    cpu = parse_cpuinfo(SAPPHIRE_RAPIDS)
    assert cpu.isa == "AMX" and {"AMX-BF16", "AMX-INT8", "AVX512_BF16"} <= set(cpu.units)
    assert native_support("bf16", cpu) == (True, "AMX-BF16")
    assert cpu.int8_dot == "AMX-INT8" and "AMX-INT8" in native_support("int8", cpu)[1]
    assert native_support("fp16", cpu)[0] is False  # Sapphire Rapids has AMX-BF16, not AMX-FP16
    assert cpu.to_dict()["isa"] == "AMX"


def test_fp16_is_native_with_amx_fp16_only_not_with_avx512_fp16_alone():
    ok, why = native_support("fp16", parse_cpuinfo(SAPPHIRE_RAPIDS_FP16))  # the flags of a real 2-core SPR session
    assert not ok and "AVX512_FP16 but no AMX-FP16" in why and "bf16" in why
    assert native_support("bf16", parse_cpuinfo(SAPPHIRE_RAPIDS_FP16)) == (True, "AMX-BF16")
    assert native_support("fp16", parse_cpuinfo(GRANITE_RAPIDS)) == (True, "AMX-FP16")


def test_avx512_without_bf16_is_not_mistaken_for_amx():
    cpu = parse_cpuinfo(SKYLAKE)
    assert cpu.isa == "AVX-512" and not cpu.native_bf16
    assert native_support("fp32", cpu) == (True, "AVX-512 FMA")


def test_openvino_refuses_what_the_cpu_cannot_run():
    with pytest.raises(UnsupportedPrecisionError, match="no native bf16"):
        check_native("bf16", parse_cpuinfo(EPYC))
    check_native("bf16", parse_cpuinfo(SAPPHIRE_RAPIDS))  # no error
    with pytest.raises(InvalidInputError, match="unknown precision"):
        check_precision("fp8")


def test_this_machine_is_described_and_every_precision_has_an_error_class():
    cpu = cpu_info()
    assert cpu.model and cpu.isa in ("AMX", "AVX-512", "AVX2", "baseline")
    assert set(ERROR_CLASS) == set(PRECISIONS) and ERROR_CLASS["fp32"] <= 1e-4 and ERROR_CLASS["bf16"] == 2e-2
