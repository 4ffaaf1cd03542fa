"""The precision policy (`--precision auto|float32|bfloat16|float16`): what the hardware offers and
which Keras dtype policy a run trains under.

* ``float32``: Keras' ``float32`` policy.
* ``bfloat16``: ``mixed_bfloat16``: layers compute in bfloat16, variables stay float32, the softmax
  output is float32 (`strategy.float32_outputs`). No loss scaling is needed (bfloat16 has float32's
  exponent range).
* ``float16``: ``mixed_float16``, with the dynamic loss scaling that ``model.compile`` adds under that
  policy.
* ``auto``: bfloat16 on a CPU with AMX-BF16 (oneDNN's AMX kernels) and on a GPU of compute
  capability 8.0 or newer; float16 on older CUDA GPUs with tensor cores (7.x); float32 elsewhere.
  A CPU with AVX512-BF16 but no AMX gets float32: with AMX disabled (ONEDNN_MAX_CPU_ISA=
  AVX512_CORE_BF16) TensorFlow's bfloat16 convolutions were 1.4-1.8x slower than float32 ones on the
  development machine (docs/speed.md); an AVX2-only CPU emulates bfloat16.

Features are read, never assumed: the CPU's from /proc/cpuinfo (Linux; elsewhere none are known and
auto means float32), the GPU's compute capability from TensorFlow's device details.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from pathlib import Path

PRECISIONS = ("auto", "float32", "bfloat16", "float16")  # the --precision choices; `resolve` turns "auto" into one
POLICIES = {"float32": "float32", "bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}
CPU_BF16_FLAGS = (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16"))


@dataclass(frozen=True)
class Hardware:
    """What the precision choice depends on: the CPU's bfloat16 feature (or None) and the compute
    capabilities of the visible GPUs (empty without one)."""

    cpu_bf16: str | None = None
    gpu_capabilities: tuple[tuple[int, int], ...] = ()

    def describe(self) -> str:
        if self.gpu_capabilities:
            major, minor = min(self.gpu_capabilities)
            return f"GPU of compute capability {major}.{minor}"
        return f"CPU with {self.cpu_bf16}" if self.cpu_bf16 else "CPU without bfloat16 instructions"


@dataclass(frozen=True)
class Resolved:
    """A resolved precision: the name a run records, the Keras policy and why it was chosen."""

    name: str
    requested: str
    reason: str

    @property
    def policy(self) -> str:
        return POLICIES[self.name]

    def describe(self) -> str:
        return f"precision {self.name} ({self.reason})"


@functools.lru_cache(maxsize=1)
def cpu_flags(path: str = "/proc/cpuinfo") -> frozenset[str]:
    """The CPU's feature flags (the first 'flags' line of /proc/cpuinfo); empty where unreadable."""
    try:
        for line in Path(path).read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def cpu_name(path: str = "/proc/cpuinfo") -> str:
    """The CPU's model name (/proc/cpuinfo), else what the platform module says."""
    import platform

    try:
        for line in Path(path).read_text(errors="replace").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


ISA_LEVELS = ("SSE4.1", "AVX2", "AVX-512", "AMX")  # what oneDNN's kernels can use, lowest first
_ONEDNN_ISA = {"SSE41": 0, "AVX": 0, "AVX2": 1, "AVX2_VNNI": 1, "AVX2_VNNI_2": 1, "AVX512_CORE": 2}


def cpu_isa(flags: frozenset[str] | set[str] | None = None, onednn_max: str | None = None) -> str:
    """The vector ISA oneDNN uses on this CPU: 'AMX', 'AVX-512', 'AVX2' or 'SSE4.1', and where
    ONEDNN_MAX_CPU_ISA lowers it, '<level> (ONEDNN_MAX_CPU_ISA=<value>; the CPU has <level>)'."""
    import os

    flags = cpu_flags() if flags is None else flags
    level = 3 if {"amx_tile", "amx_bf16"} & set(flags) else 2 if "avx512f" in flags else 1 if "avx2" in flags else 0
    cap = (onednn_max if onednn_max is not None else os.environ.get("ONEDNN_MAX_CPU_ISA", "")).strip().upper()
    if cap and cap != "ALL":
        # oneDNN's AMX caps (AVX512_CORE_AMX*, AVX10_1_512_AMX*) name AMX; its other AVX-512 ones start
        # AVX512 or AVX10; any other cap names no AMX and is read as AVX-512 at most
        limit = 3 if "AMX" in cap else _ONEDNN_ISA.get(cap, 2)
        if limit < level:
            return f"{ISA_LEVELS[limit]} (ONEDNN_MAX_CPU_ISA={cap}; the CPU has {ISA_LEVELS[level]})"
    return ISA_LEVELS[level]


def cpu_bf16_feature(flags: frozenset[str] | set[str]) -> str | None:
    """'AMX-BF16' or 'AVX512-BF16' where the CPU has it, else None."""
    return next((name for flag, name in CPU_BF16_FLAGS if flag in flags), None)


def gpu_capabilities() -> tuple[tuple[int, int], ...]:
    """Compute capabilities of the visible GPUs, as TensorFlow reports them ((0, 0) where unknown)."""
    import tensorflow as tf

    out = []
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            cc = tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0)
        except (RuntimeError, ValueError):
            cc = (0, 0)
        out.append((int(cc[0]), int(cc[1])))
    return tuple(out)


def detect() -> Hardware:
    """This machine's Hardware; AMX does not count where ONEDNN_MAX_CPU_ISA switches it off in oneDNN."""
    flags = cpu_flags()
    if not cpu_isa(flags).startswith("AMX"):
        flags = flags - {"amx_bf16", "amx_tile"}
    return Hardware(cpu_bf16=cpu_bf16_feature(flags), gpu_capabilities=gpu_capabilities())


def resolve(requested: str, hardware: Hardware | None = None) -> Resolved:
    """The precision a run uses for `requested` on `hardware` (detected when not given)."""
    from keras_digits.errors import KerasDigitsError

    if requested not in PRECISIONS:
        raise KerasDigitsError(f"unknown precision {requested!r}; choose one of: {', '.join(PRECISIONS)}")
    hw = detect() if hardware is None else hardware
    if requested != "auto":
        return Resolved(requested, requested, f"as asked; {hw.describe()}")
    if hw.gpu_capabilities:
        cc = min(hw.gpu_capabilities)
        name = "bfloat16" if cc >= (8, 0) else "float16" if cc >= (7, 0) else "float32"
    else:
        name = "bfloat16" if hw.cpu_bf16 == "AMX-BF16" else "float32"
    return Resolved(name, "auto", f"auto: {hw.describe()}")


def warning(resolved: Resolved, hardware: Hardware | None = None) -> str | None:
    """A note for an explicit choice this hardware runs slowly, or None."""
    hw = detect() if hardware is None else hardware
    if hw.gpu_capabilities or resolved.requested == "auto":
        return None
    if resolved.name == "float16":
        return "note: float16 on a CPU is emulated and much slower than float32; it is meant for GPUs"
    if resolved.name == "bfloat16" and hw.cpu_bf16 != "AMX-BF16":
        return (
            f"note: no AMX-BF16 in use here ({hw.describe()}): TensorFlow's bfloat16 convolutions are "
            "usually slower than float32 ones here"
        )
    return None


def apply(requested: str, verbose: int = 0) -> Resolved:
    """Resolve `requested` and set Keras' global dtype policy to it (float32 for float32, so no policy
    leaks from an earlier run in the same process); prints the choice when `verbose`."""
    import keras

    hw = detect()
    resolved = resolve(requested, hw)
    keras.mixed_precision.set_global_policy(resolved.policy)
    note = warning(resolved, hw)
    if note:
        print(note, file=sys.stderr)
    if verbose:
        print(resolved.describe())
    return resolved
