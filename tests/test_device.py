"""Device and precision selection: the names users type, and what each machine allows."""

from __future__ import annotations

import pytest
import torch

from geotranslate.device import (
    default_channels_last,
    resolve_device,
    resolve_precision,
)
from geotranslate.errors import GeotranslateError


def test_names_are_checked_and_cpu_resolves():
    assert resolve_device("cpu") == torch.device("cpu")
    for bad in ("gpu", "cuda:x", "xla", ""):
        with pytest.raises(GeotranslateError, match="expected auto, cpu, cuda, cuda:N or mps"):
            resolve_device(bad)
    if not torch.cuda.is_available():
        assert resolve_device("auto").type in ("cpu", "mps")
        with pytest.raises(GeotranslateError, match="no CUDA GPU"):
            resolve_device("cuda:0")


def test_gpu_index_and_torchrun_rules(monkeypatch):
    # the rules about GPU numbers, on a machine that says it has two (no GPU is touched:
    # resolving only builds torch.device objects)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda", 1)  # torchrun
    with pytest.raises(GeotranslateError, match="has 2 CUDA GPU"):
        resolve_device("cuda:2")
    with pytest.raises(GeotranslateError, match="under torchrun give --device cuda"):
        resolve_device("cuda:1", local_rank=0)


def test_channels_last_follows_device_and_precision():
    cpu = torch.device("cpu")
    assert default_channels_last(cpu, "bf16") and not default_channels_last(cpu, "fp32")
    assert default_channels_last(torch.device("cuda"), "fp32")
    assert not default_channels_last(torch.device("mps"), "bf16")


def test_precision_rules(monkeypatch):
    cpu = torch.device("cpu")
    for native in (True, False):
        monkeypatch.setattr("geotranslate.device.cpu_has_native_bf16", lambda native=native: native)
        for training in (True, False):  # training and prediction alike
            assert resolve_precision("auto", cpu, training=training) == ("bf16" if native
                                                                         else "fp32")
        assert resolve_precision("fp32", cpu, training=True) == "fp32"
    assert resolve_precision("bf16", cpu) == "bf16"
    with pytest.raises(GeotranslateError, match="fp16"):
        resolve_precision("fp16", cpu)
    with pytest.raises(GeotranslateError, match="choose from"):
        resolve_precision("int8", cpu)


def test_native_bf16_read_from_cpu_flags(tmp_path):
    from geotranslate.device import cpu_has_native_bf16

    def flags(line):
        path = tmp_path / f"cpuinfo{abs(hash(line))}"
        path.write_text(f"processor\t: 0\nflags\t\t: {line}\n\nprocessor\t: 1\n")
        return cpu_has_native_bf16(path)

    assert flags("fpu sse2 avx2 avx512f avx512_bf16")
    assert flags("fpu avx512f amx_tile amx_bf16")
    assert not flags("fpu sse2 avx2 avx512f avx512_vnni")
    assert not cpu_has_native_bf16(tmp_path / "absent")
