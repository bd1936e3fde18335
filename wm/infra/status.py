"""Where runs stand: each stage's state, progress, key result and log; SLURM jobs. Reads only.

    python -m wm.infra.status RUN             # a row per stage: state, progress or result, log
    python -m wm.infra.status RUN1 RUN2 ...   # one comparison table, a row per run
    python -m wm.infra.status RUN --json      # the same, as JSON for scripts
    python -m wm.infra.status RUN1 RUN2 --curves   # each run's controller evaluations (real
                                                   # and dream) against its search time

A stage is
  done         its DONE exists (with its key result: V's and M's validation loss, the CMA-ES
               generation and best, the final score);
  stale        its DONE exists but an input changed since (runs.Run.stale_reason);
  running      a process of it is alive: the pid in its progress.json (wm/infra/progress.py) or
               snapshot/host.json runs on this host, or progress.json written on another host was
               updated within RUNNING_WITHIN_S, or its SLURM job is running;
  queued       its SLURM job (of the last submission, RUN/slurm_jobs.json) is pending;
  failed       none of the above, and the last lines of its newest log (RUN/logs/<stage>.log,
               RUN/logs/<stage>-<job>.log) hold an error, or its job failed;
  stopped      started (its folder exists) but none of the above: killed, or its machine died;
  not started  otherwise.
Job states come from `scontrol show job` (pending, running, ended within MinJobAge), then from
`sacct`, then from the job completion file when the cluster keeps one as text; without SLURM they
are unknown and said so. Limits: stages that report no progress (shard, evaluate, play) show as
running only through their pid on this host or their SLURM job; array tasks sharing a stage
share its progress.json (the last writer shows). A controller stage that runs its warm start (the
dream search of controller.warm_generations, in RUN/controller/warm) shows that search's progress
until the real search reports its own. It never writes, starts or cancels anything.
"""

from __future__ import annotations

import glob
import json
import os
import re
import shutil
import time

from absl import app, flags

from wm.errors import UserError
from wm.infra import cli, fileio, progress, runs, slurm

_JSON = flags.DEFINE_bool('json', False, 'Print JSON instead of tables.')
_CURVES = flags.DEFINE_bool('curves', False, 'Print each run\'s learning curve instead: every '
                            'evaluation of its controller search (real and dream, best candidate '
                            'and centroid) against the search time spent before it.')

WARM_PHASE = 'warm start in the dream'  # a controller stage's progress from RUN/controller/warm
RUNNING_WITHIN_S = 600  # progress.json written on another host this recently: running
TAIL_BYTES = 16384  # how much of a log's end is searched for an error
# Lines that say why a process failed, most telling first: a stage's one-line error, a Python
# exception, what SLURM or the kernel did to the job, the job script's own failure line.
ERROR_PATTERNS = [re.compile(p) for p in (
    r'^error: ', r'^(\w+\.)*\w*(Error|Exception|Interrupt|Exit)\b(: |$)',
    r'slurmstepd: error|oom-kill|^Killed$|Segmentation fault|Aborted \(core dumped\)',
    r'failed with exit status')]
# A stage's state from its jobs' (array tasks, the check after them), the first group that shows.
JOB_GROUPS = (
    ('running', {'RUNNING', 'COMPLETING', 'CONFIGURING', 'RESIZING', 'STAGE_OUT', 'SIGNALING'}),
    ('queued', {'PENDING', 'REQUEUED', 'REQUEUE_HOLD', 'REQUEUE_FED', 'SUSPENDED'}),
    ('failed', {'FAILED', 'TIMEOUT', 'NODE_FAIL', 'OUT_OF_MEMORY', 'BOOT_FAIL', 'DEADLINE',
                'PREEMPTED'}),
    ('cancelled', {'CANCELLED'}), ('completed', {'COMPLETED'}))
WIDTH = 72  # of the progress or result column; longer errors follow the table in full


def read_json(path: str):
  try:
    return fileio.read_json(path)
  except (OSError, ValueError):
    return None


def _mtime(path: str) -> float | None:
  return os.path.getmtime(path) if os.path.exists(path) else None


# ------------------------------------------------------------------------ processes and logs

def _start_time(pid: int) -> float | None:
  """When process `pid` of this host started (epoch seconds), from /proc; None if unknown."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      ticks = int(f.read().rsplit(')', 1)[1].split()[19])
    with open('/proc/stat') as f:
      boot = next(float(line.split()[1]) for line in f if line.startswith('btime'))
  except (OSError, ValueError, IndexError, StopIteration):
    return None
  return boot + ticks / os.sysconf('SC_CLK_TCK')


def is_live(host, pid, at: float, now: float) -> bool:
  """Whether the process that wrote a record at `at` still runs: on this host, its pid is alive
  and started before `at` (not a later process given the same pid); elsewhere, `at` is recent."""
  if not isinstance(host, str) or not isinstance(pid, int):
    return False
  if host.split('.')[0] != progress.HOST:
    return now - at < RUNNING_WITHIN_S
  if not fileio.pid_alive(pid):
    return False
  started = _start_time(pid)
  return started is None or started <= at + 2.0


def newest_log(run: runs.Run, stage: str) -> str | None:
  """RUN/logs/<stage>.log (local runs) or <stage>-<job>[_<task>].log (SLURM), the newest."""
  folder = glob.escape(os.path.join(run.root, 'logs'))
  paths = glob.glob(f'{folder}/{stage}.log') + glob.glob(f'{folder}/{stage}-*.log')
  return max(paths, key=lambda p: _mtime(p) or 0.0, default=None)


def last_error(path: str | None) -> str | None:
  """The most telling error line near the end of a log, or None when it ends without one."""
  if not path:
    return None
  try:
    with open(path, 'rb') as f:
      f.seek(max(0, os.path.getsize(path) - TAIL_BYTES))
      lines = [line.strip() for line in f.read().decode(errors='replace').splitlines()[-60:]]
  except OSError:
    return None
  for pattern in ERROR_PATTERNS:
    found = [line for line in lines if pattern.search(line)]
    if found:
      return found[-1][:500]
  return None


# ------------------------------------------------------------------------ SLURM

def _records(text: str) -> dict[str, str]:
  """{job or array task id: state} from `scontrol -o show job` or job completion lines (a
  job's last line wins); a pending job keeps its reason: 'PENDING (Dependency)'."""
  states = {}
  for line in text.splitlines():
    fields = dict(re.findall(r'(\w+)=(\S*)', line))
    if 'JobId' not in fields:
      continue
    task = fields.get('ArrayTaskId')
    name = f'{fields.get("ArrayJobId")}_{task}' if task and task != 'N/A' else fields['JobId']
    state, reason = fields.get('JobState', 'UNKNOWN'), fields.get('Reason', 'None')
    states[name] = f'{state} ({reason})' if state == 'PENDING' and reason != 'None' else state
  return states


def _by_job(states: dict[str, str], job_ids: list[str]) -> dict[str, dict[str, str]]:
  found: dict[str, dict[str, str]] = {}
  for name, state in states.items():
    if name.split('_')[0] in job_ids:
      found.setdefault(name.split('_')[0], {})[name] = state
  return found


def _sacct(job_ids: list[str]) -> dict[str, dict[str, str]] | None:
  """States from the accounting database; None where there is none."""
  out = slurm.output(['sacct', '-n', '-P', '-X', '-o', 'JobID,State', '-j', ','.join(job_ids)])
  if out is None:
    return None
  rows = (line.partition('|') for line in out.splitlines())
  return _by_job({name: (state.split() or ['UNKNOWN'])[0] for name, _, state in rows}, job_ids)


def _jobcomp(job_ids: list[str]) -> dict[str, dict[str, str]]:
  """States from the job completion file, where the cluster writes one (jobcomp/filetxt)."""
  config = slurm.output(['scontrol', 'show', 'config']) or ''
  config = dict(re.findall(r'^(\w+)\s*=\s*(\S+)', config, re.M))
  path = config.get('JobCompLoc', '')
  if config.get('JobCompType') != 'jobcomp/filetxt' or not os.path.isfile(path):
    return {}
  try:
    with open(path, 'rb') as f:
      f.seek(max(0, os.path.getsize(path) - 2**23))  # the last 8 MB: the recent jobs
      return _by_job(_records(f.read().decode(errors='replace')), job_ids)
  except OSError:
    return {}


def job_states(job_ids: list[str]) -> tuple[dict[str, dict[str, str]], str | None]:
  """{job id: {job or array task id: state}}, and a note when SLURM cannot tell here."""
  if not shutil.which('scontrol'):
    return {j: {} for j in job_ids}, 'no SLURM here (scontrol is not on PATH): states unknown'
  states = {j: _records(slurm.output(['scontrol', '-o', 'show', 'job', j]) or '') for j in job_ids}
  gone = [j for j, s in states.items() if not s]
  if gone:  # ended longer ago than the controller's MinJobAge
    ended = _sacct(gone)
    ended = _jobcomp(gone) if ended is None else ended
    for j in gone:
      states[j] = ended.get(j) or {j: 'ENDED (state no longer known)'}
  return states, None


def slurm_jobs(run: runs.Run) -> dict | None:
  """The last submission's jobs and their states; None when the run was never submitted."""
  history = read_json(os.path.join(run.root, 'slurm_jobs.json'))
  submissions = history.get('submissions') if isinstance(history, dict) else None
  if not submissions:
    return None
  jobs = [j for j in submissions[-1].get('jobs', []) if j.get('job_id')]
  states, note = job_states([j['job_id'] for j in jobs])
  return {'submitted_at': submissions[-1].get('submitted_at'), 'note': note,
          'jobs': [{'stage': j.get('stage'), 'kind': j.get('kind'), 'job_id': j['job_id'],
                    'states': states[j['job_id']]} for j in jobs]}


def jobs_state(jobs: list[dict]) -> str | None:
  """running | queued | failed | cancelled | completed, over a stage's jobs; None if unknown."""
  states = {s.split()[0] for job in jobs for s in job['states'].values()}
  return next((name for name, group in JOB_GROUPS if states & group), None)


def describe_jobs(jobs: list[dict]) -> str:
  return '; '.join(f'job {j["job_id"]} {", ".join(sorted(set(j["states"].values())))}'
                   for j in jobs if j['states'])


# ------------------------------------------------------------------------ stages

def stage_result(run: runs.Run, stage: str, config: dict) -> dict:
  """The stage's key result (from its DONE, history or result file), or {}."""
  done = read_json(run.done_path(stage)) or {}
  if stage in ('vae', 'seq') and isinstance(done.get('valid'), dict):
    return {'step': done.get('step'), 'valid_loss': done['valid'].get('loss')}
  if stage == 'controller':
    return controller_result(run.stage_dir(stage), config)
  if stage == 'evaluate':
    result = read_json(os.path.join(run.stage_dir(stage), done.get('output') or 'result.json'))
    return {k: v for k, v in (result or {}).items() if k in ('mean', 'std', 'episodes')}
  return {k: ', '.join(map(str, v)) if isinstance(v, list) else v for k, v in done.items()
          if isinstance(v, (int, float, str, list)) and k not in
          ('finished_at', 'fingerprint', 'export', 'encoder')}


def controller_result(folder: str, config: dict) -> dict:
  """The CMA-ES generation reached, of how many, its best fitness, its last evaluation."""
  rows = fileio.read_jsonl(os.path.join(folder, 'history.jsonl'))
  evals = [r['eval_mean'] for r in rows if r.get('eval_mean') is not None]
  return {'generation': rows[-1].get('generation'),
          'generations': (config.get('controller') or {}).get('generations'),
          'best': max((r['best'] for r in rows if r.get('best') is not None), default=None),
          'eval_mean': evals[-1] if evals else None} if rows else {}


def curve(folder: str) -> list[dict]:
  """The evaluated generations of the controller search in `folder`: generation, mode, the
  minutes of fitness evaluation up to it (None where a generation's time was not recorded) and
  the real and dream evaluations of its best candidate and of the centroid."""
  rows, spent, out = fileio.read_jsonl(os.path.join(folder, 'history.jsonl')), 0.0, []
  for row in rows:
    spent = None if spent is None or row.get('fitness_s') is None else spent + row['fitness_s']
    if row.get('eval_mean') is None:
      continue
    out.append({'generation': row['generation'], 'mode': row.get('mode'),
                'search_min': None if spent is None else spent / 60,
                **{k: row.get(k) for k in ('eval_mean', 'centroid_eval_mean', 'dream_eval_mean',
                                           'centroid_dream_eval_mean')}})
  return out


def render_curves(curves: dict[str, list[dict]]) -> str:
  """A table per run dir: its curve (`curve`), or why it has none."""
  lines = []
  for path, points in curves.items():
    lines.append(f'{path}:')
    if not points:
      lines.append('  no evaluation yet (controller/history.jsonl: controller.eval_every)')
      continue
    rows = [['generation', 'mode', 'search time (min)', 'real: best / centroid',
             'dream: best / centroid']]
    rows += [[str(p['generation']), p['mode'] or '?', _cell(p['search_min'], '.1f'),
              f'{_cell(p["eval_mean"], ".0f")} / {_cell(p["centroid_eval_mean"], ".0f")}',
              f'{_cell(p["dream_eval_mean"], ".0f")} / '
              f'{_cell(p["centroid_dream_eval_mean"], ".0f")}'] for p in points]
    lines.append(table(rows))
  return '\n'.join(lines)


def describe_result(stage: str, result: dict) -> str:
  if 'valid_loss' in result:
    return f'valid loss {_cell(result["valid_loss"])} (step {result["step"]})'
  if stage == 'controller' and result:
    evaluated = f', eval {result["eval_mean"]:.4g}' if result['eval_mean'] is not None else ''
    return (f'generation {result["generation"]}/{result["generations"] or "?"}, best '
            f'{_cell(result["best"])}{evaluated}')
  if stage == 'evaluate' and 'mean' in result:
    return (f'score {result["mean"]:.4g} +- {_cell(result.get("std"), ".3g")} '
            f'({result.get("episodes", "?")} episodes)')
  return ', '.join(f'{k} {_cell(v) if isinstance(v, float) else v}' for k, v in result.items())


def describe_progress(p: dict, now: float, live: bool = True) -> str:
  """'35% (700/2000), ~3m left, 9.5/s, updated 2s ago' (no estimate once not `live`), after the
  phase where there is one ('warm start in the dream: 35% ...')."""
  age = max(now - p.get('updated_at', now), 0.0)
  text = f'{p.get("percent", 0):.0f}% ({p.get("done")}/{p.get("total")})'
  text = f'{p["phase"]}: {text}' if p.get('phase') else text
  if live and p.get('eta_s') is not None and p.get('done', 0) < p.get('total', 0):
    text += f', ~{progress.format_duration(max(p["eta_s"] - age, 0.0))} left'
  if live and p.get('rate'):
    text += f', {p["rate"]:.3g}/s'
  return f'{text}, updated {progress.format_duration(age)} ago'


def stage_progress(folder: str, stage: str) -> dict | None:
  """The stage's progress.json; for the controller, its warm start's (RUN/controller/warm, the
  dream search a real search runs first) where that was written last, marked with a 'phase'."""
  found = [read_json(os.path.join(folder, progress.FILE))]
  if stage == 'controller':
    warm = read_json(os.path.join(folder, runs.WARM, progress.FILE))
    found.append({**warm, 'phase': WARM_PHASE} if isinstance(warm, dict) else None)
  return max((p for p in found if isinstance(p, dict)),
             key=lambda p: p.get('updated_at', 0.0), default=None)


def activity(run: runs.Run, stage: str, now: float) -> tuple[bool, dict | None, str]:
  """(whether a process of the unfinished stage runs, its progress.json, which process): the
  writer of progress.json, else the process that wrote snapshot/host.json as it started."""
  folder = run.stage_dir(stage)
  p = stage_progress(folder, stage)
  if p and is_live(p.get('host'), p.get('pid'), p.get('updated_at', 0.0), now):
    return True, p, f'pid {p["pid"]} on {p["host"]}'
  path = os.path.join(folder, 'snapshot', 'host.json')
  host, at = read_json(path) or {}, _mtime(path)
  if at and str(host.get('host')).split('.')[0] == progress.HOST and is_live(
      progress.HOST, host.get('pid'), at, now):
    return True, None, f'pid {host["pid"]} on {progress.HOST}'
  return False, p, ''


def stage_status(run: runs.Run, stage: str, jobs: list[dict], config: dict, now: float) -> dict:
  """The stage's state, a detail (progress, result, error or reason) and the evidence."""
  log, result = newest_log(run, stage), stage_result(run, stage, config)
  status = {'stage': stage, 'state': 'not started', 'detail': describe_jobs(jobs),
            'progress': None, 'result': result, 'log': log, 'error': None, 'jobs': jobs}
  if run.is_done(stage):
    reason = run.stale_reason(stage)
    status.update(state='stale' if reason else 'done',
                  detail=reason or describe_result(stage, result))
    cleaned = {'collect': 'sharded', 'shard': 'encoded'}.get(stage)
    if cleaned and os.path.exists(os.path.join(run.stage_dir(stage), runs.CLEANED)):
      status['detail'] += f' (removed once {cleaned}: python -m wm clean)'
    return status
  running, p, process = activity(run, stage, now)
  job, error = jobs_state(jobs), last_error(log)
  status['progress'] = p
  if running or job == 'running':
    detail = describe_progress(p, now) if p else (
        f'no progress reported yet ({process or describe_jobs(jobs)})')
    if stage == 'controller' and result:
      detail += f'; {describe_result(stage, result)}'
    status.update(state='running', detail=detail)
  elif job == 'queued':
    status['state'] = 'queued'
  elif error or job == 'failed':
    status.update(state='failed', error=error, detail=error or status['detail'])
  elif p or os.path.isdir(run.stage_dir(stage)):
    reached = f'; reached {describe_progress(p, now, live=False)}' if p else ''
    jobs_text = f'; {status["detail"]}' if status['detail'] else ''
    status.update(state='stopped', detail=f'not running{reached}{jobs_text}')
  return status


def open_run(path: str) -> runs.Run:
  """The run dir `path`, or a UserError saying why it is not one."""
  if not os.path.isdir(path):
    state = 'is a file, not a folder' if os.path.exists(path) else 'does not exist'
    raise UserError(f'run dir {path} {state}: pass the folder the stages were given as --run_dir')
  run = runs.Run(path)
  if not os.path.exists(run.config_path) and not any(
      os.path.isdir(run.stage_dir(s)) for s in runs.STAGE_DIRS):
    raise UserError(f'{path} is not a run dir: it has no config.json and no stage folder '
                    f'({", ".join(runs.STAGE_DIRS.values())}); pass the folder the stages were '
                    'given as --run_dir')
  return run


def run_status(path: str, now: float | None = None) -> dict:
  """Everything status shows about the run dir `path`."""
  now = time.time() if now is None else now
  run = open_run(path)
  config, slurm = read_json(run.config_path), slurm_jobs(run)
  jobs = (slurm or {}).get('jobs', [])
  stages = [stage_status(run, name, [j for j in jobs if j['stage'] == name],
                         config if isinstance(config, dict) else {}, now)
            for name in runs.STAGE_DIRS]
  return {'run': path, 'root': run.root, 'stages': stages, 'slurm': slurm,
          'results': key_results(stages)}


def key_results(stages: list[dict]) -> dict:
  """V's and M's validation losses, the controller's generation and best, the final score."""
  r = {s['stage']: s['result'] for s in stages}
  return {'vae_valid_loss': r['vae'].get('valid_loss'), 'seq_valid_loss': r['seq'].get(
      'valid_loss'), **{f'controller_{k}': r['controller'].get(k) for k in (
          'generation', 'generations', 'best', 'eval_mean')}, 'score': r['evaluate'].get('mean')}


# ------------------------------------------------------------------------ tables

def table(rows: list[list[str]], indent: str = '  ') -> str:
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  return '\n'.join(indent + '  '.join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
                   for row in rows)


def _cell(value, fmt: str = '.4g') -> str:
  return '-' if value is None else format(value, fmt)


def render_run(status: dict) -> str:
  """One run: a row per stage, then long errors and reasons in full, then the SLURM jobs."""
  root, rows = status['root'], [['stage', 'state', 'progress or result', 'log']]
  for s in status['stages']:
    detail = s['detail'] if len(s['detail']) <= WIDTH else s['detail'][:WIDTH - 3] + '...'
    rows.append([s['stage'], s['state'], detail or '-',
                 os.path.relpath(s['log'], root) if s['log'] else '-'])
  lines = [f'{status["run"]} ({root})', table(rows)]
  lines += [f'  {s["stage"]} {s["state"]}: {s["detail"]}' for s in status['stages']
            if len(s['detail']) > WIDTH and s['state'] in ('failed', 'stale', 'stopped')]
  slurm = status['slurm']
  if slurm:
    lines.append(f'SLURM jobs of the last submission ({slurm["submitted_at"]}, '
                 f'{os.path.join(root, "slurm_jobs.json")}):')
    lines += [f'  {slurm["note"]}'] if slurm['note'] else []
    lines.append(table([[j['stage'], j['kind'], j['job_id'], ', '.join(
        v if k == j['job_id'] else f'{k} {v}' for k, v in sorted(j['states'].items())) or '?']
                        for j in slurm['jobs']]))
  return '\n'.join(lines)


SHORT_STATES = {'failed': 'FAILED', 'not started': '-'}


def running_cell(p: dict) -> str:
  """'35%', or 'warm 35%' while a controller stage runs its warm start."""
  return f'{"warm " if p.get("phase") == WARM_PHASE else ""}{p.get("percent", 0):.0f}%'


def render_comparison(statuses: list[dict]) -> str:
  """Several runs: a row each with every stage's state and the key results; then the failures."""
  rows = [['run', *runs.STAGE_DIRS, 'V loss', 'M loss', 'C gen', 'C best', 'score']]
  for status in statuses:
    states = [running_cell(s['progress']) if s['state'] == 'running' and s['progress']
              else SHORT_STATES.get(s['state'], s['state']) for s in status['stages']]
    r = status['results']
    gen = (f'{r["controller_generation"]}/{r["controller_generations"] or "?"}'
           if r['controller_generation'] is not None else '-')
    rows.append([status['run'], *states, _cell(r['vae_valid_loss']), _cell(r['seq_valid_loss']),
                 gen, _cell(r['controller_best']), _cell(r['score'])])
  lines = [table(rows, indent='')]
  for status in statuses:
    lines += [f'{status["run"]}: {s["stage"]} {s["state"]}: {s["detail"]}'
              + (f' ({s["log"]})' if s['log'] else '')
              for s in status['stages'] if s['state'] in ('failed', 'stale')]
  return '\n'.join(lines)


# ------------------------------------------------------------------------ entry point

@cli.exits_on_user_error
def main(argv: list[str]) -> None:
  paths = argv[1:]
  if not paths:
    raise UserError('usage: python -m wm.infra.status RUN [RUN ...] [--json] [--curves]')
  if _CURVES.value:
    curves = {path: curve(open_run(path).stage_dir('controller')) for path in paths}
    print(json.dumps({'curves': curves}, indent=2) if _JSON.value else render_curves(curves))
    return
  statuses = [run_status(path) for path in paths]
  if _JSON.value:
    print(json.dumps({'runs': statuses}, indent=2))
  else:
    print(render_run(statuses[0]) if len(statuses) == 1 else render_comparison(statuses))


def parse(argv: list[str]) -> list[str]:
  """absl's flags_parser: flags anywhere among the run dirs; a bad flag is one message, exit 2."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    cli.fail(e)
    raise  # not reached: fail() exits


if __name__ == '__main__':
  app.run(main, flags_parser=parse)
