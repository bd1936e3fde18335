"""`python -m wm --run_dir=RUN --config=FILE:PRESET`: every stage in order on this machine.

The runner lives in wm/infra/pipeline.py (its docstring lists the flags).
"""

from absl import app

from wm.infra import pipeline

if __name__ == '__main__':
  app.run(pipeline.main, flags_parser=pipeline.parse)
