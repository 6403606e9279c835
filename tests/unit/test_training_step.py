"""`appliance variants`' training step: timed in a child, and the kernels it ran, read back."""
# ruff: noqa: E501  (real runtime output lines, kept whole)

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from appliance.ml import training_step, variants

ONEDNN_OUT = """\
onednn_verbose,v1,info,cpu,isa:Intel AVX-512 with AVX512BW, AVX512VL, AVX512DQ, AVX512_BF16
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,forward_training,src:bf16::blocked:acdb::f0 wei:bf16::blocked:Acdb16a::f0,,alg:convolution_direct,mb8_ic3oc64,0.2
onednn_verbose,v1,primitive,exec,cpu,convolution,brg_conv_fwd:avx512_core_bf16,forward_training,src:bf16::blocked:acdb::f0 wei:bf16::blocked:Acdb16a::f0,,alg:convolution_direct,mb8_ic64oc64,0.1
onednn_verbose,v1,primitive,exec,cpu,convolution,jit:avx2,backward_weights,src:f32::blocked:acdb::f0 wei:f32::blocked:Acdb8a::f0,,alg:convolution_direct,mb8_ic3oc64,0.3
onednn_verbose,v1,primitive,exec,cpu,gemm_api,,undef,src:f32::blocked:ab::f0,,,1x2:2x3,0.01
"""

HLO = """\
HloModule a_inference_one_step_on_data_1234, entry_computation_layout={...}
  %convolution.3 = bf16[8,32,32,64]{3,2,1,0} convolution(bf16[8,34,34,3]{3,2,1,0} %p, bf16[3,3,3,64]{3,2,1,0} %w), window={size=3x3}, dim_labels=b01f_01io->b01f
  %convolution.4 = f32[8,32,32,64]{3,2,1,0} convolution(f32[8,32,32,64]{3,2,1,0} %a, f32[1,1,64,64]{3,2,1,0} %b), window={size=1x1}, dim_labels=b01f_01io->b01f
  %convolution.5 = f32[8,32,32,64]{3,2,1,0} convolution(f32[8,32,32,64]{3,2,1,0} %c, f32[1,1,64,64]{3,2,1,0} %d), window={size=1x1}, dim_labels=b01f_01io->b01f
  %add.1 = f32[8,32,32,64]{3,2,1,0} add(f32[8,32,32,64]{3,2,1,0} %e, f32[8,32,32,64]{3,2,1,0} %f)
"""


def test_onednn_convolutions_are_counted_by_dtype_and_implementation() -> None:
    assert training_step.summarise_onednn(ONEDNN_OUT) == (
        "oneDNN conv: bf16 x2 (brg_conv_fwd:avx512_core_bf16), f32 x1 (jit:avx2)"
    )


def test_eigen_fallback_and_a_refused_bf16_are_said() -> None:
    out = "E0000 util.cc:131] oneDNN supports DT_BFLOAT16 only on platforms with AVX-512. Falling"
    assert training_step.summarise_onednn(out) == (
        "oneDNN conv: none (Eigen kernels); oneDNN refused bf16 (no AVX-512)"
    )


def test_xla_convolutions_are_counted_by_dtype(tmp_path: Path) -> None:
    (tmp_path / "module_0001.a_inference.cpu_after_optimizations.txt").write_text(HLO)
    (tmp_path / "module_0001.a_inference.before_optimizations.txt").write_text(HLO * 3)
    assert training_step.summarise_hlo(tmp_path) == "XLA conv: bf16 x1, f32 x2"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert training_step.summarise_hlo(empty) == "XLA conv: none found in the optimised HLO"


def test_setups_and_variants_parse_or_say_what_is_expected() -> None:
    assert variants.parse_setup("bfloat16+xla") == ("bfloat16", True)
    assert variants.parse_setup("float32") == ("float32", False)
    assert variants.parse_variant("pooled:32") == ("pooled", 32)
    with pytest.raises(argparse.ArgumentTypeError, match="float32 or bfloat16"):
        variants.parse_setup("float16+xla")
    with pytest.raises(argparse.ArgumentTypeError, match="STEM:SIZE"):
        variants.parse_variant("wide:32")


def test_a_real_step_is_timed_and_its_convolutions_reported(monkeypatch) -> None:
    """TensorFlow's own kernels (no XLA: XLA's compile of a ResNet50 step takes minutes here)."""
    # oneDNN on even where TensorFlow would not enable it by itself (CPUs without AVX-512).
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    step = training_step.measure("stock", 32, "mixed_bfloat16", False, batch=2, steps=1)
    assert step.img_s > 0 and step.cpu_s_per_img > 0
    # Either oneDNN ran bf16 convolutions, or it refused them and Eigen ran them: said either way.
    assert step.kernels.startswith("oneDNN conv: "), step.kernels
    assert "bf16" in step.kernels, step.kernels


def test_a_step_that_cannot_run_names_the_variant() -> None:
    with pytest.raises(training_step.StepError, match="stock:3 float32"):
        training_step.measure("stock", 3, "float32", False, batch=2, steps=1, timeout=600)
