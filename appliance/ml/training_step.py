"""A variant's training step, timed in a child process, and the convolution kernels it really ran.

A child process per setup, because TensorFlow reads its kernel settings (``TF_ENABLE_ONEDNN_OPTS``,
``XLA_FLAGS``, ``ONEDNN_VERBOSE``) once, at import. A Keras dtype policy says what the layers ask
for, not what runs: oneDNN may run a bfloat16 convolution natively or refuse it (TensorFlow then
falls back to Eigen), and XLA's CPU compiler may turn bfloat16 convolutions back into float32
ones. So the child runs with the runtimes' own reports switched on, and this module counts what
they say:

- TensorFlow's kernels: ``ONEDNN_VERBOSE=1`` prints one line per executed oneDNN primitive
  (implementation and source dtype);
- XLA: ``XLA_FLAGS=--xla_dump_to`` writes the optimised HLO, whose convolution instructions carry
  their operand and result dtypes.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

# The training step `appliance train` compiles, one untimed (tracing) then STEPS timed.
# argv: stem size policy xla batch steps
_CHILD = """
import sys, time
import numpy as np
from appliance.ml import compiled, recipe as recipes
stem, size, policy, xla = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
batch, steps = int(sys.argv[5]), int(sys.argv[6])
recipe = recipes.Recipe(stem=stem, input_size=size, epochs=30, batch_size=batch, peak_lr=0.1,
    warmup_epochs=2.0, momentum=0.9, weight_decay=5e-4, label_smoothing=0.1, seed=0, limit=None,
    val_split=0.0, data_sha256="")
net = compiled.build_compiled(recipe, steps_per_epoch=390, policy=policy, xla=xla)
rng = np.random.default_rng(0)
x = rng.integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
y = np.eye(10, dtype=np.float32)[rng.integers(0, 10, batch)]
net.train_on_batch(x, y)
wall, cpu = time.perf_counter(), time.process_time()
for _ in range(steps):
    net.train_on_batch(x, y)
wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
print(f"step: {steps * batch / wall} img/s, {cpu / (steps * batch)} cpu-s/img", flush=True)
"""
_RESULT = re.compile(r"^step: ([\d.e+-]+) img/s, ([\d.e+-]+) cpu-s/img$", re.M)

# onednn_verbose,[timestamp,]exec,cpu,convolution,IMPL,PROP,src_bf16::blocked:... (v2 and v3)
_ONEDNN_CONV = re.compile(
    r"(?:onednn|dnnl)_verbose,.*?exec,cpu,convolution,([^,]+),[^,]*,src[_:](\w+?):"
)
# What TensorFlow logs when oneDNN turns bfloat16 down (Eigen then runs the op).
_BF16_REFUSED = "oneDNN supports DT_BFLOAT16 only on platforms with AVX-512"
# %convolution.3 = bf16[8,32,32,64]{...} convolution(bf16[...] %x, bf16[...] %w), ...
_HLO_CONV = re.compile(r"=\s*(\w+)\[[^\]]*\][^ ]*\s+convolution\(")
_HLO_CUSTOM = re.compile(
    r"=\s*\(?(\w+)\[.*custom-call\(.*custom_call_target=\"([^\"]*conv[^\"]*)\""
)


@dataclass
class StepFigures:
    img_s: float
    cpu_s_per_img: float
    kernels: str  # which convolutions ran, in which dtype


class StepError(RuntimeError):
    """The child could not run the step; the message has the end of its output."""


def measure(
    stem: str, size: int, policy: str, xla: bool, batch: int, steps: int, timeout: float = 3600
) -> StepFigures:
    """Time ``steps`` training steps of the variant in a child, and say which kernels ran."""
    with tempfile.TemporaryDirectory(prefix="appliance-step-") as dump:
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "1"}
        if xla:
            env["XLA_FLAGS"] = f"{env.get('XLA_FLAGS', '')} --xla_dump_to={dump}".strip()
        else:
            env["ONEDNN_VERBOSE"] = "1"
        argv = [sys.executable, "-c", _CHILD, stem, str(size), policy, "1" if xla else "0",
                str(batch), str(steps)]  # fmt: skip
        done = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=timeout)
        result = _RESULT.search(done.stdout)
        if done.returncode != 0 or result is None:
            tail = (done.stdout + done.stderr).strip().splitlines()[-5:]
            raise StepError(f"{stem}:{size} {policy} xla={xla}: " + " | ".join(tail))
        found = summarise_hlo(Path(dump)) if xla else summarise_onednn(done.stdout + done.stderr)
        return StepFigures(float(result[1]), float(result[2]), found)


def summarise_onednn(output: str) -> str:
    """'oneDNN conv: bf16 x212 (brg:avx512_core_amx)' from ONEDNN_VERBOSE output."""
    seen = Counter(_ONEDNN_CONV.findall(output))
    refused = "; oneDNN refused bf16 (no AVX-512)" if _BF16_REFUSED in output else ""
    if not seen:
        return f"oneDNN conv: none (Eigen kernels){refused}"
    parts = [f"{dtype} x{n} ({impl})" for (impl, dtype), n in sorted(seen.items())]
    return "oneDNN conv: " + ", ".join(parts) + refused


def summarise_hlo(dump: Path) -> str:
    """'XLA conv: f32 x160' from the optimised HLO modules XLA dumped."""
    seen: Counter[str] = Counter()
    for path in dump.glob("*after_optimizations.txt"):
        text = path.read_text(errors="replace")
        seen.update(f"{d}" for d in _HLO_CONV.findall(text))
        seen.update(f"{d} ({target})" for d, target in _HLO_CUSTOM.findall(text))
    if not seen:
        return "XLA conv: none found in the optimised HLO"
    return "XLA conv: " + ", ".join(f"{k} x{n}" for k, n in sorted(seen.items()))
