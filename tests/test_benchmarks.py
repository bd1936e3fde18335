"""The benchmark scripts run on the debug preset's trained run and print every figure they name
(speed itself is never asserted: docs/benchmarks.md keeps the measured figures)."""

from __future__ import annotations

import os
import re

from conftest import copy_run, run_script


def test_benchmark_controller_prints_each_side_of_its_ratios(debug_agent):
  result = run_script('benchmark_controller', f'--run_dir={debug_agent}', '--real_envs=2',
                      '--real_steps=8', '--dream_batch=4', '--dream_steps=8',
                      '--pool_episodes=2', '--repeats=1', config=None)
  out = result.stdout
  rate = r'\s+([\d,]+) steps/s'
  figures = {name: float(m[1].replace(',', '')) for name, pattern in (
      ('agent', r'real env, 1 process, 2 envs:' + rate),
      ('replayed', r'its actions replayed, no model:' + rate),
      ('random', r'the same envs, random actions:' + rate),
      ('alone', r'env alone, 1 env, random:' + rate),
      ('dream', r'dream, batch 4, M in float32\s*:' + rate),
      ('pool2', r'real-env pool, 2 workers:' + rate)) if (m := re.search(pattern, out))}
  assert len(figures) == 6 and all(v > 0 for v in figures.values()), out
  assert "the run's controller" in out  # the debug agent has one: it plays it
  cost = re.search(r'V\+M\+C cost (-?\d+)% of the agent', out)
  # computed from the unrounded rates: the printed ones, each within 0.5, bound it (at the slow
  # rates of a loaded machine, 18 against 34 steps/s, that is a few percent either way)
  agent, replayed = figures['agent'], figures['replayed']
  low = 100 * (1 - (agent + 0.5) / (replayed - 0.5)) - 0.5
  high = 100 * (1 - (agent - 0.5) / (replayed + 0.5)) + 0.5
  assert cost and low <= int(cost[1]) <= high, (low, high, out)


def test_benchmark_judges_times_both_sides_and_leaves_no_scratch_run(synthetic_encoded, tmp_path):
  run_dir = copy_run(synthetic_encoded, str(tmp_path / 'run'))
  result = run_script('benchmark_judges', f'--run_dir={run_dir}', '--train_steps=3',
                      '--config.controller.trials=2', '--config.controller.eval_episodes=2')
  out = result.stdout
  walls = [float(m) for m in re.findall(r'\(--parallelism=[12]\):\s+([\d.]+) s', out)]
  ratio = re.search(r'side by side / one after the other: ([\d.]+)x', out)
  assert len(walls) == 2 and all(w > 0 for w in walls) and ratio, out
  assert abs(float(ratio[1]) - walls[0] / walls[1]) < 0.02, out
  assert sorted(os.listdir(tmp_path)) == ['run']  # the scratch run dirs are gone


def test_benchmark_dream_times_every_side_on_the_same_generations(debug_agent):
  # Episodes ending at a fiftieth of the odds M gives live several stretches of 2 steps; M's
  # step-10 checkpoint judges half of them, which adds the side with M's head on every row and
  # the side with every M's ends on every row.
  result = run_script('benchmark_dream', f'--run_dir={debug_agent}', '--generations=2',
                      '--compact_every=2', '--after_generation=1',
                      '--config.controller.dream_done_odds=0.02',
                      '--config.controller.dream_checkpoints=10', '--config.controller.trials=2',
                      '--config.controller.eval_episodes=2', config=None)
  out = result.stdout
  sides = ('leaving', 'kept', 'head on every row')
  seconds = {side: float(m[1]) for side in sides
             if (m := re.search(side + r'\s+([\d.]+) ms a generation', out))}
  assert len(seconds) == 3 and all(s > 0 for s in seconds.values()), out
  assert 'population: generation 2 of its search' in out  # replayed to its first generation
  assert '(4 x 2, 2 Ms)' in out, out
  for side in sides[1:]:
    ratio = re.search(f'leaving / {side}: ' + r"([\d.]+)x faster; largest difference in an "
                      r"episode's return: (\S+)", out)
    assert ratio and abs(float(ratio[1]) - seconds[side] / seconds['leaving']) < 0.01 + 0.01 * (
        float(ratio[1])), out
    assert float(ratio[2]) < 1e-3, out  # the same episodes, to float rounding
  # The fourth side: every M's ends on every row (controller.dream_done_from=all).
  every = re.search(r'ends of every M\s+([\d.]+) ms a generation', out)
  mean = re.search(r"leaving / ends of every M: ([\d.]+)x faster; mean return (\S+) against "
                   r'(\S+)', out)
  assert every and float(every[1]) > 0 and mean, out
  assert abs(float(mean[1]) - float(every[1]) / seconds['leaving']) < 0.01 + 0.01 * float(mean[1])


def test_benchmark_cpu_kernels_measures_each_work_with_both_libraries(debug_agent):
  """Each figure comes from child processes that TensorFlow ran with the kernels they were
  named for (the script refuses a child that ran others)."""
  result = run_script('benchmark_cpu_kernels', f'--run_dir={debug_agent}', '--rounds=1',
                      '--seconds=0.2', '--dream_steps=4', '--work=encode,dream', config=None)
  rows = {m[1]: (float(m[2].replace(',', '')), float(m[3].replace(',', '')), float(m[4]))
          for m in re.finditer(r'^\s+(\w+)\s+([\d,]+)\s+([\d,]+)\s+([\d.]+)x', result.stdout,
                               re.MULTILINE)}
  assert sorted(rows) == ['dream', 'encode'], result.stdout
  for eigen, onednn, ratio in rows.values():
    assert eigen > 0 and onednn > 0 and abs(ratio - onednn / eigen) < 0.01 * ratio + 0.01, rows


def test_benchmark_seq_buckets_and_packs_time_the_same_windows_each_way(debug_data):
  result = run_script('benchmark_seq', '--bucket_steps=4', '--pack', f'--lengths_from={debug_data}',
                      '--batch_size=2', '--sequence_length=12', '--z_size=4', '--hidden_size=8',
                      '--num_mixtures=2', '--steps=8', '--rounds=1', config=None)
  out = result.stdout
  sides = {name: m for name in ('padded', 'bucketed', 'packed') if (m := re.search(
      name + r'\s+(\d+) batches, widths \[([\d, ]+)\]: (\d+)% of the computed steps real,\s+'
      r'([\d,]+) real steps/s', out))}
  assert len(sides) == 3, out
  assert sides['padded'][2] == '12' and sides['padded'][1] == '8', out  # 8 full-length batches
  widths = [int(w) for w in sides['bucketed'][2].split(',')]
  assert all(w % 4 == 0 and w <= 12 for w in widths), out
  assert sides['packed'][2] == '12' and int(sides['packed'][1]) < 8, out  # fewer rows
  for name in ('bucketed', 'packed'):  # less padding computed
    assert int(sides[name][3]) >= int(sides['padded'][3]), out
  rates = {name: float(m[4].replace(',', '')) for name, m in sides.items()}
  for name in ('bucketed', 'packed'):
    ratio = re.search(name + r' / padded: ([\d.]+)x', out)
    assert ratio and abs(float(ratio[1]) - rates[name] / rates['padded']) < 0.01 + 0.01 * (
        float(ratio[1])), out


def test_benchmark_seq_times_m_in_float32_and_bfloat16_side_by_side():
  # seq.precision's two sides, one thread (as each of the seq stage's side-by-side trainings):
  # both timed, the ratio the one of their rates; a side that does not exist is refused.
  result = run_script('benchmark_seq', '--sides=ours,bf16', '--threads=1', '--batch_size=2',
                      '--sequence_length=6', '--z_size=4', '--hidden_size=8', '--num_mixtures=2',
                      '--steps=2', '--rounds=1', config=None)
  out = result.stdout
  rates = {name: float(m[1].replace(',', '')) for name, label in (
      ('ours', r'Trainer \(fused LSTM\)'), ('bf16', 'bfloat16 products'))
      if (m := re.search(label + r'\s+([\d,]+) sequence-steps/s', out))}
  assert sorted(rates) == ['bf16', 'ours'] and min(rates.values()) > 0, out
  ratio = re.search(r'bfloat16 vs float32 \(seq.precision\):\s+([\d.]+)x', out)
  assert ratio and abs(float(ratio[1]) - rates['bf16'] / rates['ours']) < 0.01 + 0.01 * (
      float(ratio[1])), out
  assert 'tfp' not in out, out  # the sides not asked for are not run
  refused = run_script('benchmark_seq', '--sides=ours,fp8', config=None, check=False)
  assert refused.returncode != 0 and '--sides: unknown fp8' in refused.stderr, refused.stderr
  assert 'Traceback' not in refused.stderr, refused.stderr[-2000:]


def test_benchmark_seq_times_every_side_by_default():
  # All five training steps (the baselines first, before our model is trained once) and the
  # mixture likelihood alone: a line each, every rate positive.
  out = run_script('benchmark_seq', '--batch_size=2', '--sequence_length=6', '--z_size=4',
                   '--hidden_size=8', '--num_mixtures=2', '--steps=1', '--rounds=1',
                   config=None).stdout
  rates = re.findall(r'([\d,]+) sequence-steps/s', out)
  assert len(rates) == 7 and all(float(r.replace(',', '')) > 0 for r in rates), out
  for label in ('train_on_batch', 'Keras LSTM layer', 'bfloat16 products', 'mdn.log_prob'):
    assert label in out, out


def test_benchmark_data_prints_the_collectors_and_the_environments_ratios(tmp_path):
  # CarRacing's debug preset with a make_kwargs setting (its own default lap share, so the two
  # sides play the same game): every ratio the script names is printed.
  result = run_script('benchmark_data', '--steps=10', '--min_steps=20', '--scaling_steps=20',
                      '--rollouts=2', '--rounds=1', '--reading_seconds=0.5',
                      f'--work_dir={tmp_path}', '--config.env.make_kwargs=lap_complete_percent=0.95')
  out = result.stdout
  for key in ('collect/overhead_ratio', 'collect/scaling_ratio', 'env/action_repeat_ratio',
              'env/render_scale_ratio', 'env/raw_steps_per_s_without_make_kwargs',
              'env/make_kwargs_ratio', 'data/frames_per_s_all_frames', 'shard/level_ratio',
              'shard/bytes_ratio'):
    figure = re.search(rf'^{re.escape(key)}\s+([\d,]+\.\d\d)$', out, re.M)
    assert figure and float(figure[1].replace(',', '')) > 0, (key, out)
