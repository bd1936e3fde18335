"""`python -m wm --run_dir=RUN --config=FILE:PRESET`: every stage in order on this machine.

Finished stages are skipped, so rerunning the same command continues; `--config.a.b=v` overrides
go to every stage. The runner lives in wm/infra/pipeline.py (its docstring says more).
"""

from absl import app

from wm.infra import pipeline

if __name__ == '__main__':
  app.run(pipeline.main, flags_parser=pipeline.parse)
