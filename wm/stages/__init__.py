"""One module per pipeline stage, named after it (wm/infra/runs.py STAGE_DIRS): the stage's
whole job, called by its thin script in scripts/."""
