"""A sweep's summary: every run's settings and results as a table, a figure and TensorBoard hparams.

    ROOT/summary.md    a row per run (its grid values, how far it got, the stages it computes
                       itself, V's and M's validation loss, the CMA-ES generation, best and last
                       real evaluation, the final score), then the scores grouped by the grid's
                       non-seed values with the seeds' test episodes pooled
    ROOT/summary.png   the CMA-ES curves per run (population mean and best per generation, the
                       real evaluations of the best) and the pooled scores (mean +- std over the
                       test episodes, each run's mean as a dot)
    ROOT/tb/           hparams: the grid's fields and the results, one trial per run
                       (tensorboard --logdir=ROOT/tb, HPARAMS tab)

Everything is read from the runs (wm/infra/status.py: DONE markers, controller/history.jsonl,
evaluate/result.json) and ROOT/sweep.json (wm/infra/sweep.py); rewritten whole each time.
"""

from __future__ import annotations

import os
import shutil
import statistics

from wm.errors import UserError
from wm.infra import fileio, runs, status

SEED = 'seed'  # the grid field whose values are pooled
METRICS = {  # hparams metric tag: the run's result it shows
    'evaluate/mean': 'score', 'evaluate/std': 'score_std',
    'controller/best': 'controller_best', 'controller/eval_mean': 'controller_eval_mean',
    'vae/valid_loss': 'vae_valid_loss', 'seq/valid_loss': 'seq_valid_loss'}


def write(root: str) -> str:
  """Writes summary.md, summary.png and tb/ in `root`; returns the text of summary.md."""
  record = status.read_json(os.path.join(root, 'sweep.json'))
  if not isinstance(record, dict) or not record.get('runs'):
    raise UserError(f'{root} holds no sweep ({os.path.join(root, "sweep.json")} is missing or '
                    'unreadable): pass the --root a sweep ran in')
  fields = list(dict.fromkeys(f for r in record['runs'] for f in r['overrides']))
  rows = [collect(root, r, fields) for r in record['runs']]
  text = render(root, fields, rows)
  fileio.write_text(os.path.join(root, 'summary.md'), text + '\n')
  plot(os.path.join(root, 'summary.png'), fields, rows)
  write_hparams(os.path.join(root, 'tb'), fields, rows)
  return text


def collect(root: str, entry: dict, fields: list[str]) -> dict:
  """One run's values of `fields`, how far it got, its results, CMA-ES history and returns."""
  path = os.path.join(root, entry['name'])
  row = {'name': entry['name'], 'values': {f: field_value(entry['config'], f) for f in fields},
         'computes': next((s for s in runs.STAGE_DIRS if entry['stages'][s]['owner'] ==
                           entry['name']), None), 'state': 'missing', 'results': {},
         'history': [], 'returns': []}
  try:
    found = status.run_status(path)
  except UserError:
    return row  # its folder is gone
  row.update(state=describe_state(found['stages']), results=found['results'])
  run = runs.Run(path)
  row['history'] = fileio.read_jsonl(os.path.join(run.stage_dir('controller'), 'history.jsonl'))
  if run.is_done('evaluate'):
    done = status.read_json(run.done_path('evaluate')) or {}
    result = status.read_json(os.path.join(run.stage_dir('evaluate'),
                                           done.get('output') or 'result.json')) or {}
    row['returns'] = result.get('returns') or []
    row['results']['score_std'] = result.get('std')
  return row


def field_value(config: dict, dotted: str):
  for part in dotted.split('.'):
    config = config.get(part) if isinstance(config, dict) else None
  return config


def describe_state(stages: list[dict]) -> str:
  """'all done', 'shard done', 'seq done; controller 40%', 'vae failed', 'not started'."""
  first = next((i for i, s in enumerate(stages) if s['state'] != 'done'), None)
  if first is None:
    return 'all done'
  now = stages[first]
  if now['state'] == 'running' and now['progress']:
    doing = f'{now["stage"]} {now["progress"]["percent"]:.0f}%'
  else:
    doing = f'{now["stage"]} {now["state"]}' if now['state'] != 'not started' else ''
  reached = f'{stages[first - 1]["stage"]} done' if first else ''
  return '; '.join(t for t in (reached, doing) if t) or 'not started'


# ------------------------------------------------------------------------ the tables

def render(root: str, fields: list[str], rows: list[dict]) -> str:
  return '\n'.join([f'# Sweep {root}', '', f'{len(rows)} runs (sweep.json). "computes from": '
                    'the first stage the run computes itself; it shares the earlier ones.', '',
                    runs_table(fields, rows), '', '## Scores, seeds pooled', '',
                    pooled_table(fields, rows)])


def runs_table(fields: list[str], rows: list[dict]) -> str:
  head = ['run', *fields, 'state', 'computes from', 'V loss', 'M loss', 'C gen', 'C best',
          'C eval', 'score']
  body = []
  for row in rows:
    r = row['results']
    gen = (f'{r["controller_generation"]}/{r["controller_generations"] or "?"}'
           if r.get('controller_generation') is not None else '-')
    score = '-' if r.get('score') is None else (
        f'{r["score"]:.4g} +- {statistics.pstdev(row["returns"]) if row["returns"] else 0:.3g}'
        f' ({len(row["returns"])})')
    body.append([row['name'], *(str(row['values'][f]) for f in fields), row['state'],
                 row['computes'] or '-', cell(r.get('vae_valid_loss')),
                 cell(r.get('seq_valid_loss')), gen, cell(r.get('controller_best')),
                 cell(r.get('controller_eval_mean')), score])
  return markdown([head, *body])


def groups(fields: list[str], rows: list[dict]) -> dict[tuple, list[dict]]:
  """The evaluated runs by their non-seed values."""
  found: dict[tuple, list[dict]] = {}
  for row in rows:
    if row['returns']:
      found.setdefault(tuple(row['values'][f] for f in fields if f != SEED), []).append(row)
  return found


def pooled_table(fields: list[str], rows: list[dict]) -> str:
  others = [f for f in fields if f != SEED]
  grouped = groups(fields, rows)
  if not grouped:
    return 'No run has been evaluated yet.'
  head = [*(others or ['runs']), 'seeds', 'episodes', 'mean', 'std', 'min', 'max',
          'std of run means']
  body = []
  for key, members in grouped.items():
    pooled = [x for m in members for x in m['returns']]
    means = [statistics.fmean(m['returns']) for m in members]
    body.append([*(map(str, key) if others else ['all']),
                 ','.join(str(m['values'].get(SEED, '-')) for m in members), str(len(pooled)),
                 cell(statistics.fmean(pooled)), cell(statistics.pstdev(pooled)),
                 cell(min(pooled)), cell(max(pooled)),
                 cell(statistics.stdev(means)) if len(means) > 1 else '-'])
  return markdown([head, *body])


def cell(value, fmt: str = '.4g') -> str:
  return '-' if value is None else format(value, fmt)


def markdown(rows: list[list[str]]) -> str:
  widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
  lines = ['| ' + ' | '.join(c.ljust(w) for c, w in zip(row, widths)) + ' |' for row in rows]
  lines.insert(1, '|' + '|'.join('-' * (w + 2) for w in widths) + '|')
  return '\n'.join(lines)


# ------------------------------------------------------------------------ the figure

def plot(path: str, fields: list[str], rows: list[dict]) -> None:
  """summary.png: the CMA-ES curves (left) and the pooled scores (right)."""
  import matplotlib  # pylint: disable=import-outside-toplevel  (only the summary needs it)
  matplotlib.use('Agg')
  from matplotlib import pyplot as plt  # pylint: disable=import-outside-toplevel
  fig, (curves, scores) = plt.subplots(1, 2, figsize=(14, 5.5))
  plot_curves(curves, rows, plt.get_cmap('tab10' if len(rows) <= 10 else 'tab20'))
  plot_scores(scores, fields, rows)
  fig.tight_layout()
  fig.savefig(path + '.tmp.png', dpi=100)
  plt.close(fig)
  os.replace(path + '.tmp.png', path)


def plot_curves(ax, rows: list[dict], colors) -> None:
  ax.set(title='CMA-ES: population mean (solid), best (dashed), real evaluation (dots)',
         xlabel='generation', ylabel='return (the search\'s: controller.mode; dots: real env)')
  ax.title.set_fontsize(9)
  ax.xaxis.get_major_locator().set_params(integer=True)
  drawn = [row for row in rows if row['history']]
  for i, row in enumerate(drawn):
    h, color = row['history'], colors(i % colors.N)
    gens = [r['generation'] for r in h]
    ax.plot(gens, [r.get('mean') for r in h], '-', color=color, label=row['name'])
    ax.plot(gens, [r.get('best') for r in h], '--', color=color, linewidth=0.8)
    evals = [r for r in h if r.get('eval_mean') is not None]
    ax.errorbar([r['generation'] for r in evals], [r['eval_mean'] for r in evals],
                yerr=[r.get('eval_std') or 0 for r in evals], fmt='o', color=color,
                markersize=4, capsize=2)
  if drawn:
    ax.legend(fontsize='x-small')
  else:
    ax.text(0.5, 0.5, 'no controller has trained yet', ha='center', transform=ax.transAxes)


def plot_scores(ax, fields: list[str], rows: list[dict]) -> None:
  ax.set(title='final score: mean +- std over the test episodes, seeds pooled (dots: each run)',
         ylabel='return')
  ax.title.set_fontsize(9)
  others = [f for f in fields if f != SEED]
  grouped = groups(fields, rows)
  for x, members in enumerate(grouped.values()):
    pooled = [v for m in members for v in m['returns']]
    ax.bar(x, statistics.fmean(pooled), yerr=statistics.pstdev(pooled), capsize=4,
           color='lightsteelblue', edgecolor='steelblue')
    spread = [x + 0.3 * (i / max(len(members) - 1, 1) - 0.5) for i in range(len(members))]
    ax.plot(spread, [statistics.fmean(m['returns']) for m in members], 'k.')
  ax.set_xticks(range(len(grouped)))
  ax.set_xticklabels([',\n'.join(f'{f}={v}' for f, v in zip(others, key)) or 'all'
                      for key in grouped], fontsize=7)
  if not grouped:
    ax.text(0.5, 0.5, 'no run has been evaluated yet', ha='center', transform=ax.transAxes)


# ------------------------------------------------------------------------ TensorBoard

def write_hparams(folder: str, fields: list[str], rows: list[dict]) -> None:
  """tb/: the hparams config (the grid's fields, the metrics), then per run tb/<run>/ its values
  and results (step 0)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel  (slow to import)
  from tensorboard.plugins.hparams import api as hp  # pylint: disable=import-outside-toplevel
  shutil.rmtree(folder, ignore_errors=True)
  params = {f: hp.HParam(f, hp.Discrete(sorted({r['values'][f] for r in rows
                                                if r['values'][f] is not None})))
            for f in fields}
  with tf.summary.create_file_writer(folder).as_default():
    hp.hparams_config(hparams=list(params.values()), metrics=[hp.Metric(t) for t in METRICS])
  for row in rows:
    writer = tf.summary.create_file_writer(os.path.join(folder, row['name']))
    with writer.as_default():
      hp.hparams({params[f]: v for f, v in row['values'].items() if v is not None},
                 trial_id=row['name'])
      for tag, key in METRICS.items():
        if row['results'].get(key) is not None:
          tf.summary.scalar(tag, row['results'][key], step=0)
    writer.close()
