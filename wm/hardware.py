"""What the machine computes best, for the settings whose best value depends on the device.

bfloat16 convolutions pay where the device computes bfloat16 natively: NVIDIA GPUs from Ampere
(compute capability 8.0) on, and CPUs with AVX512-BF16 or AMX. Elsewhere they are emulated and
slower than float32 (docs/benchmarks.md has both, per CPU kind). `precision('auto')` picks by
that; the stage records what it picked (RUN/<stage>/snapshot/device.json).
"""

from __future__ import annotations

import functools

import tensorflow as tf

CPU_BF16_FLAGS = ('avx512_bf16', 'amx_bf16')  # /proc/cpuinfo flags of native bfloat16


@functools.lru_cache(maxsize=None)
def cpu_flags() -> frozenset[str]:
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('flags'):
          return frozenset(line.split(':', 1)[1].split())
  except OSError:
    pass
  return frozenset()


def native_bfloat16() -> tuple[bool, str]:
  """(whether the device TensorFlow computes on has native bfloat16, why)."""
  gpus = tf.config.list_physical_devices('GPU')
  if gpus:
    capability = tf.config.experimental.get_device_details(gpus[0]).get('compute_capability')
    if capability is None:
      return False, 'a GPU of unknown compute capability'
    return tuple(capability) >= (8, 0), f'GPU of compute capability {capability[0]}.{capability[1]}'
  found = sorted(set(CPU_BF16_FLAGS) & cpu_flags())
  if found:
    return True, f'CPU with {", ".join(found)}'
  return False, 'CPU without avx512_bf16 or amx_bf16'


def precision(setting: str, native: bool | None = None) -> str:
  """float32 or bfloat16: `setting` itself, or for 'auto' what the device computes natively
  (`native`: native_bfloat16()'s answer, when the caller has asked already)."""
  if setting != 'auto':
    return setting
  if native is None:
    native = native_bfloat16()[0]
  return 'bfloat16' if native else 'float32'


def describe(setting: str) -> dict[str, str]:
  """What a snapshot records: the setting, what it resolved to and why."""
  native, why = native_bfloat16()
  return {'setting': setting, 'precision': precision(setting, native), 'native_bfloat16': native,
          'device': why}


def matmul(a: tf.Tensor, b: tf.Tensor, precision: str = 'float32', **kwargs) -> tf.Tensor:
  """tf.matmul(a, b, **kwargs) with its products in `precision` (float32 | bfloat16: operands and
  result rounded to bfloat16, the sums inside the product kept wider; returned as float32)."""
  if precision != 'bfloat16':
    return tf.matmul(a, b, **kwargs)
  return tf.cast(tf.matmul(tf.cast(a, tf.bfloat16), tf.cast(b, tf.bfloat16), **kwargs),
                 tf.float32)
