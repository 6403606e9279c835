"""`appliance train`'s choices that need no run: linear schedule, older recipes, precision, XLA."""

from __future__ import annotations

import dataclasses

import pytest

from appliance.ml import checkpoints, compiled
from tests.unit.test_train import data, recipe  # noqa: F401 (data: a fixture)


def test_linear_schedule_warms_up_then_falls_to_zero():
    from appliance.ml.keras_schedules import WarmupLinear

    rate = WarmupLinear(peak=0.1, warmup=10, total=110)
    values = {step: float(rate(step)) for step in (0, 5, 10, 60, 110, 200)}
    assert values[0] == pytest.approx(0.004) and values[10] == pytest.approx(0.1)
    assert values[5] == pytest.approx(0.052) and values[60] == pytest.approx(0.05)
    assert values[110] == 0.0 and values[200] == 0.0


def test_a_checkpoint_from_before_a_recipe_field_still_resumes(data):  # noqa: F811
    r = recipe(data)
    saved = dataclasses.asdict(r)
    del saved["schedule"], saved["init_sha256"]  # what a run recorded before those fields
    assert checkpoints.recipe_differences({"recipe": saved}, r) == []
    linear = dataclasses.replace(r, schedule="linear")
    assert checkpoints.recipe_differences({"recipe": saved}, linear) == ["schedule"]


def test_auto_precision_takes_bfloat16_only_where_the_cpu_has_amx(monkeypatch):
    amx = "processor : 0\nflags : fpu avx512f avx512_bf16 amx_bf16 amx_tile\n"
    assert compiled.has_amx_bf16(amx)
    assert not compiled.has_amx_bf16("processor : 0\nflags : fpu avx2 avx512_bf16\n")
    monkeypatch.setattr(compiled, "has_gpu", lambda: False)
    # Without AVX-512 (which AMX CPUs have), so bfloat16 alone must turn XLA off below.
    monkeypatch.setattr(compiled, "has_avx512", lambda cpuinfo=None: False)
    monkeypatch.setattr(compiled, "has_amx_bf16", lambda cpuinfo=None: True)
    assert compiled.precision_policy("auto") == "mixed_bfloat16"
    assert compiled.use_xla(None, "mixed_bfloat16") is False  # oneDNN's AMX kernels, not XLA's
    assert compiled.use_xla(True, "mixed_bfloat16") is True
    monkeypatch.setattr(compiled, "has_amx_bf16", lambda cpuinfo=None: False)
    assert compiled.precision_policy("auto") == "float32"
    assert compiled.precision_policy("bfloat16") == "mixed_bfloat16"


def test_auto_xla_only_where_onednn_lacks_avx512(monkeypatch):
    avx512 = "processor : 0\nflags : fpu avx2 avx512f avx512dq avx512bw avx512vl avx512_bf16\n"
    assert compiled.has_avx512(avx512)
    assert not compiled.has_avx512("processor : 0\nflags : fpu avx2 fma\n")
    assert not compiled.has_avx512("processor : 0\n")  # no flags line at all
    monkeypatch.setattr(compiled, "has_gpu", lambda: False)
    monkeypatch.setattr(compiled, "has_avx512", lambda cpuinfo=None: True)
    assert compiled.use_xla(None, "float32") is False  # oneDNN's avx512_core kernels
    assert compiled.use_xla(True, "float32") is True
    monkeypatch.setattr(compiled, "has_avx512", lambda cpuinfo=None: False)
    assert compiled.use_xla(None, "float32") is True  # AVX2: XLA's step was the faster
    assert compiled.use_xla(False, "float32") is False
    monkeypatch.setattr(compiled, "has_gpu", lambda: True)
    monkeypatch.setattr(compiled, "has_avx512", lambda cpuinfo=None: True)
    assert compiled.use_xla(None, "mixed_float16") is True
