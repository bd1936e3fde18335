#!/bin/sh
# VizDoom's engine, started in place of the vizdoom package's own binary ($WM_VIZDOOM_ENGINE) by
# wm/envs.py, so that it dies with the Python process that started it: VizDoom runs each game in
# an engine process of its own, which a SIGKILLed owner (a stage or a pool worker) would leave
# running, idle, forever. Without util-linux's setpriv it is the engine alone, as before.
# It runs in $WM_VIZDOOM_HOME (wm/envs.py: engine_home), where it keeps _vizdoom.ini and _vizdoom/,
# not in the directory the stage was started from; that _vizdoom/ exists before it starts
# (wm/envs.py: make_engine_files_dir). If it cannot go there it stays where it was started.
if [ -n "$WM_VIZDOOM_HOME" ]; then
  cd "$WM_VIZDOOM_HOME" 2>/dev/null || true
fi
if command -v setpriv >/dev/null 2>&1; then
  exec setpriv --pdeathsig KILL -- "$WM_VIZDOOM_ENGINE" "$@"
fi
exec "$WM_VIZDOOM_ENGINE" "$@"
