#!/bin/sh
# VizDoom's engine, started in place of the vizdoom package's own binary ($WM_VIZDOOM_ENGINE) by
# wm/envs.py, so that it dies with the Python process that started it: VizDoom runs each game in
# an engine process of its own, which a SIGKILLed owner (a stage or a pool worker) would leave
# running, idle, forever. Without util-linux's setpriv it is the engine alone, as before.
# Its ./_vizdoom exists before it starts (wm/envs.py: make_engine_files_dir).
if command -v setpriv >/dev/null 2>&1; then
  exec setpriv --pdeathsig KILL -- "$WM_VIZDOOM_ENGINE" "$@"
fi
exec "$WM_VIZDOOM_ENGINE" "$@"
