"""oneDNN or Eigen: which CPU kernels TensorFlow runs, chosen per stage before TensorFlow loads.

TensorFlow turns oneDNN's kernels on by itself only on x86 CPUs with AVX-512 VNNI, AVX512-BF16
or AMX; elsewhere (an AMD EPYC or an Intel CPU without AVX-512) it runs Eigen's. On such a CPU,
measured side by side by scripts/benchmark_cpu_kernels.py (docs/benchmarks.md, "CPU kernels:
oneDNN or Eigen"), oneDNN trains V 1.6-1.9x faster, encodes 1.5-1.6x faster and trains Doom's
512-unit M 1.16x faster (CarRacing's 256-unit M 0.97x, level), while the agent's call runs at
0.92x and Doom's dream at 0.83x. So the stages that train and encode call `use_onednn()` first
thing, and the controller, evaluation, collection and play keep TensorFlow's own choice.

TF_ENABLE_ONEDNN_OPTS, set by the user (0 or 1), always wins; where TensorFlow turns oneDNN on by
itself, asking for it changes nothing. The choice is read once, when TensorFlow loads, and child
processes inherit it; a stage records what ran in RUN/<stage>/snapshot/device.json.
"""

from __future__ import annotations

import os
import sys

VARIABLE = 'TF_ENABLE_ONEDNN_OPTS'


def use_onednn() -> None:
  """Asks for oneDNN's kernels unless TF_ENABLE_ONEDNN_OPTS is set. Call before TensorFlow loads:
  after, it would not take effect, so that is refused."""
  if 'tensorflow' in sys.modules:
    raise RuntimeError('cpu_kernels.use_onednn() called after TensorFlow was imported: call it '
                       'first thing in the entry point')
  os.environ.setdefault(VARIABLE, '1')


def in_use() -> str:
  """'oneDNN' or 'Eigen' for this process's CPU kernels, once TensorFlow has loaded ('unknown'
  where this TensorFlow build does not say)."""
  try:
    from tensorflow.python.util import _pywrap_util_port  # no public API tells
    return 'oneDNN' if _pywrap_util_port.IsMklEnabled() else 'Eigen'
  except (ImportError, AttributeError):
    return 'unknown'
