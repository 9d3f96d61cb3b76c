"""The CPU probe (`runtime.cpu`): flags read from /proc/cpuinfo, and the bfloat16 warning."""

from __future__ import annotations

import torch

from sample_effect.runtime.cpu import bf16_note, cpu_info, native_bf16

AVX2 = "model name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma\n"
AMX = "model name\t: Intel Xeon\nflags\t\t: avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n"


def test_cpu_info_reads_the_flags_that_decide_gemm_speed():
    info = cpu_info(AVX2)
    assert info["model"] == "AMD EPYC" and info["flags"] == ["avx2"] and info["torch"] == torch.__version__
    assert cpu_info(AMX)["flags"] == ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f"]
    assert isinstance(cpu_info()["flags"], list)  # this machine's


def test_bf16_warning_only_where_bf16_is_emulated():
    avx2, amx = cpu_info(AVX2)["flags"], cpu_info(AMX)["flags"]
    assert not native_bf16(avx2) and native_bf16(amx)
    note = bf16_note(torch.bfloat16, "cpu", avx2)
    assert note is not None and "--dtype float32" in note
    assert bf16_note(torch.bfloat16, "cpu", amx) is None
    assert bf16_note(torch.float32, "cpu", avx2) is None
    assert bf16_note(torch.bfloat16, "meta", avx2) is None  # not a CPU computation


def test_loading_a_bf16_model_on_an_emulating_cpu_warns_once(monkeypatch, caplog):
    import logging

    from sample_effect.models import loading
    from sample_effect.runtime import cpu

    monkeypatch.setattr(cpu, "native_bf16", lambda flags=None: False)
    monkeypatch.setattr(loading, "_BF16_WARNED", [])
    with caplog.at_level(logging.WARNING, logger="sample_effect"):
        loading.warn_emulated_bf16(torch.bfloat16, torch.device("cpu"))
        loading.warn_emulated_bf16(torch.bfloat16, torch.device("cpu"))
        loading.warn_emulated_bf16(torch.float32, torch.device("cpu"))
    notes = [r.message for r in caplog.records if "emulated" in r.message]
    assert len(notes) == 1 and "--dtype float32" in notes[0]
    model, _ = loading.load_model("tiny-small", "bfloat16")  # the load itself goes through the same check
    assert next(model.parameters()).dtype == torch.bfloat16
