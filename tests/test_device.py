"""One decision for device and dtype: bf16 where the hardware does it natively, fp32 elsewhere, never fp16."""

import re
from pathlib import Path

import pytest
import torch

from ep.method import device as D

AVX512_BF16 = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_tile\n"
PLAIN = "processor\t: 0\nflags\t\t: fpu sse avx2 avx512f\n"
ARM = "processor\t: 0\nFeatures\t: fp asimd bf16\n"


@pytest.fixture(autouse=True)
def no_override(monkeypatch):
    monkeypatch.delenv(D.DTYPE_ENV, raising=False)
    monkeypatch.delenv(D.NATIVE_BF16_ENV, raising=False)


def test_cpu_by_flags():
    cpu = torch.device("cpu")
    assert D.default_dtype(cpu, AVX512_BF16) == torch.bfloat16
    assert D.default_dtype(cpu, PLAIN) == torch.float32
    assert D.default_dtype(cpu, ARM) == torch.float32  # arm "bf16" is not one of the x86 instructions we measured
    assert D.default_dtype(cpu, "") == torch.float32


CAPABILITIES = [((7, 5), torch.float32), ((8, 0), torch.bfloat16), ((9, 0), torch.bfloat16)]


@pytest.mark.parametrize("capability,dtype", CAPABILITIES)
def test_gpu_by_compute_capability(monkeypatch, capability, dtype):
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert D.default_dtype(torch.device("cuda")) == dtype  # a T4 (7.5) gets fp32: no native bf16, and never fp16


def test_override_and_bad_value(monkeypatch):
    monkeypatch.setenv(D.DTYPE_ENV, "float32")
    assert D.default_dtype(torch.device("cpu"), AVX512_BF16) == torch.float32
    monkeypatch.setenv(D.DTYPE_ENV, "bf16")
    assert D.default_dtype(torch.device("cpu"), PLAIN) == torch.bfloat16
    monkeypatch.setenv(D.DTYPE_ENV, "float16")
    with pytest.raises(ValueError, match="fp16"):
        D.default_dtype(torch.device("cpu"))


def test_this_machine_is_decided_once():
    dev = D.default_device()
    assert dev.type in ("cpu", "cuda")
    assert D.default_dtype(dev) in (torch.float32, torch.bfloat16)


def test_warm_vml_covers_every_op_torch_sends_to_mkl_vml():
    """warm_vml must touch every VML-backed op of the installed torch (its vml.h lists them)."""
    header = Path(torch.__file__).parent / "include" / "ATen" / "cpu" / "vml.h"
    if not header.exists():
        pytest.skip("this torch ships no ATen headers")
    listed = set(re.findall(r"^IMPLEMENT_VML_MKL\((\w+),", header.read_text(), flags=re.M))  # commented ones skipped
    if not listed:
        pytest.skip("this torch build routes no op to MKL VML")
    assert listed == set(D.VML_OPS)


def test_warm_vml_calls_each_op_in_both_float_types(monkeypatch):
    seen = []
    for name in D.VML_OPS:
        monkeypatch.setattr(torch, name, lambda t, name=name: seen.append((name, t.dtype, t.numel())))
    D.warm_vml()
    assert seen == [(n, d, 1) for d in (torch.float32, torch.float64) for n in D.VML_OPS]


def test_screen_follows_the_hardware_not_the_model_dtype(monkeypatch):
    cpu = torch.device("cpu")
    assert D.screen_dtype(cpu, AVX512_BF16) == torch.bfloat16
    assert D.screen_dtype(cpu, PLAIN) == torch.float32
    monkeypatch.setenv(D.DTYPE_ENV, "bfloat16")  # a model dtype: the screen's result is exact either way
    assert D.screen_dtype(cpu, PLAIN) == torch.float32


def test_native_bf16_override(monkeypatch):
    cpu = torch.device("cpu")
    monkeypatch.setenv(D.NATIVE_BF16_ENV, "0")  # a bf16 machine emulating one without (benchmarks)
    assert not D.native_bf16(cpu, AVX512_BF16)
    assert D.screen_dtype(cpu, AVX512_BF16) == D.default_dtype(cpu, AVX512_BF16) == torch.float32
    monkeypatch.setenv(D.NATIVE_BF16_ENV, "1")
    assert D.screen_dtype(cpu, PLAIN) == D.default_dtype(cpu, PLAIN) == torch.bfloat16
    monkeypatch.setenv(D.NATIVE_BF16_ENV, "yes")
    with pytest.raises(ValueError, match="0 or 1"):
        D.native_bf16(cpu)
