"""wm.infra.quiet: TensorFlow's start-up boilerplate is dropped, everything else passes."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from conftest import REPO, script_env
from wm.infra import quiet

_IMPORT_TF = textwrap.dedent('''
    import os, sys
    from wm.infra import quiet
    quiet.install()
    import tensorflow as tf
    print(float(tf.constant(2.0) * 3))
    os.write(2, b'E0000 00:00:1.0 1 somewhere.cc:1] a real error stays\\n')
    sys.stderr.write('a Python warning stays\\n')
''')


def test_tensorflow_start_up_notices_are_dropped_and_real_errors_kept():
  env = dict(script_env())
  env.pop('TF_CPP_MIN_LOG_LEVEL', None)
  result = subprocess.run([sys.executable, '-c', _IMPORT_TF], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0, result.stderr
  assert result.stdout.strip() == '6.0'
  lines = result.stderr.splitlines()
  assert not [line for line in lines if quiet.is_boilerplate(line)], lines
  assert not any('oneDNN' in line or 'cuda drivers' in line or 'cuInit' in line for line in lines)
  assert 'E0000 00:00:1.0 1 somewhere.cc:1] a real error stays' in lines
  assert 'a Python warning stays' in lines


def test_boilerplate_patterns_are_exact():
  assert quiet.is_boilerplate('I0000 00:00:1796145463.132067   23393 port.cc:153] oneDNN custom '
                              'operations are on. You may see slightly different numerical')
  assert quiet.is_boilerplate('E0000 00:00:1796145473.810777   23393 cuda_platform.cc:52] failed '
                              'call to cuInit: INTERNAL: CUDA error')
  assert not quiet.is_boilerplate('E0000 00:00:1796145473.810777   23393 cuda_platform.cc:52] '
                                  'failed call to cuInit: INTERNAL', gpu_present=True)
  assert not quiet.is_boilerplate('W0000 00:00:1.0 1 port.cc:153] oneDNN ran out of memory')


_DIE_HARD = textwrap.dedent('''
    import os
    from wm.infra import quiet
    quiet.install()
    os.write(2, b''.join(b'line %d of what a failing library said\\n' % i for i in range(2000)))
    os._exit(3)  # as a C library's exit() or an abort: no Python exit handler runs
''')


def test_the_last_words_of_a_process_that_dies_without_exit_handlers_are_kept():
  result = subprocess.run([sys.executable, '-c', _DIE_HARD], cwd=REPO, env=script_env(),
                          capture_output=True, text=True, timeout=60)
  assert result.returncode == 3
  lines = result.stderr.splitlines()
  assert lines == [f'line {i} of what a failing library said' for i in range(2000)], lines[-3:]
