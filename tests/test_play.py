"""scripts/play.py as a user runs it: videos, panels only with --alg_render, replay with archived
code, and clear errors for a run dir that lacks a stage."""

import json
import os
import re
import shutil
import subprocess
import sys


import gymnasium as gym
import numpy as np
import pytest

from conftest import DEBUG, REPO, copy_run, run_script, script_env
from wm import config as config_lib
from wm import envs, policies, render, video
from wm.infra import changes, runs, snapshot
from wm import playback

EPISODE_STEPS = 40  # the debug preset's env.max_steps


def test_random_policy_video_has_one_frame_per_step_and_no_panels(tmp_path):
  run_dir = str(tmp_path / 'run')
  result = run_script('play', f'--run_dir={run_dir}', '--policy=random', '--num_episodes=2',
                      '--record_file=random.mp4')
  returns = re.findall(r'episode (\d): return (-?[\d.]+) over (\d+) steps', result.stdout)
  assert [r[0] for r in returns] == ['0', '1'], result.stdout
  steps = sum(int(r[2]) for r in returns)
  assert steps == 2 * EPISODE_STEPS
  frames = video.read(os.path.join(run_dir, 'play', 'random.mp4'))
  # Without --alg_render: only the 64x64 frame at 4x, no cells beside it.
  assert frames.shape == (steps, 64 * playback.SCALE, 64 * playback.SCALE, 3)
  saved = json.load(open(os.path.join(run_dir, 'play', 'returns-random.json')))
  assert [round(r, 2) for r in saved['returns']] == [float(r[1]) for r in returns]
  for mean, size in zip(saved['action_mean'], saved['action_abs_mean']):  # steering, gas, brake
    assert len(mean) == len(size) == 3 and -1 <= mean[0] <= 1 and 0 <= min(mean[1:])
    assert all(abs(m) <= a + 1e-9 for m, a in zip(mean, size)) and 0.3 < size[0] < 0.7  # uniform
  # Not the play stage (the controller in the real env): its files are not written.
  for name in ('DONE', 'returns.json', 'snapshot'):
    assert not os.path.exists(os.path.join(run_dir, 'play', name)), name
  assert os.path.exists(os.path.join(run_dir, 'play', 'snapshot-random', 'config.json'))


def test_a_run_dir_without_a_stage_names_the_stage_to_run(tmp_path):
  run_dir = tmp_path / 'run'
  # What each stage leaves (only existence is checked before anything loads), added one by one.
  outputs = {'vae': 'vae/export/model.json', 'seq': 'seq/export/model.json',
             'controller': 'controller/best.npz'}
  cases = [('vae', ['--alg_render', '--policy=random']), ('vae', ['--dream', '--policy=random']),
           ('vae', []), ('seq', []), ('controller', [])]
  for missing, flags in cases:
    for stage, path in outputs.items():
      if stage == missing:
        break
      (run_dir / path).parent.mkdir(parents=True, exist_ok=True)
      (run_dir / path).write_text('{}')
    result = run_script('play', f'--run_dir={run_dir}', *flags, check=False)
    assert result.returncode == 2, (flags, result.stderr[-2000:])
    assert f'run the {missing!r} stage first' in result.stderr, result.stderr[-2000:]
    assert outputs[missing] in result.stderr.replace(os.sep, '/')
    assert 'Traceback' not in result.stderr


def test_use_snapshot_refuses_a_run_without_a_snapshot(tmp_path):
  result = run_script('play', f'--run_dir={tmp_path}', '--policy=random', '--use_snapshot',
                      check=False)
  assert result.returncode == 2
  assert 'has no code snapshot of the controller stage' in result.stderr
  assert 'code.tar.gz' in result.stderr


def archive_changed_code(run_dir: str, tmp_path, module: str = 'wm/playback.py',
                         old: str = "EPISODE_LINE = 'episode ",
                         new: str = "EPISODE_LINE = 'archived episode ") -> None:
  """Archives a copy of this code with `old` changed to `new` in `module`, as if the live code
  moved on since the controller was trained (the real working tree is never touched)."""
  tree = tmp_path / 'archived_tree'
  for name in ('wm', 'scripts', 'configs'):
    shutil.copytree(os.path.join(REPO, name), tree / name,
                    ignore=shutil.ignore_patterns('__pycache__'))
  path = tree / module
  text = path.read_text()
  assert old in text
  path.write_text(text.replace(old, new))
  snapshot_dir = os.path.join(run_dir, 'controller', 'snapshot')
  os.makedirs(snapshot_dir)
  snapshot._write_code_archive(os.path.join(snapshot_dir, 'code.tar.gz'), str(tree))


def test_use_snapshot_runs_the_archived_code_not_the_live_code(tmp_path):
  run_dir = str(tmp_path / 'run')
  archive_changed_code(run_dir, tmp_path)
  live = run_script('play', f'--run_dir={run_dir}', '--policy=random')
  assert re.search(r'^episode 0: return', live.stdout, re.M), live.stdout
  replay = run_script('play', f'--run_dir={run_dir}', '--policy=random', '--use_snapshot',
                      '--record_file=archived.gif')
  assert 'replaying with the code archived in' in replay.stdout
  assert re.search(r'^archived episode 0: return', replay.stdout, re.M), replay.stdout
  # The same episode (same seed) by both codes, and the archived code wrote the video.
  def ret(out):
    return re.search(r'episode 0: return (\S+)', out).group(1)
  assert ret(live.stdout) == ret(replay.stdout)
  assert video.read(os.path.join(run_dir, 'play', 'archived.gif')).shape[0] == EPISODE_STEPS


def test_a_replay_by_older_code_leaves_the_play_stages_files_as_they_were(tmp_path):
  # Code from before the stage's files were the controller's alone: every play wrote them.
  run_dir = str(tmp_path / 'run')
  archive_changed_code(run_dir, tmp_path, 'wm/stages/play.py',
                       "return '-'.join(parts) or None", 'return None')
  stage_files = {'DONE': b'{"episodes": 1}\n', 'returns.json': b'{"returns": [1.0]}\n'}
  os.makedirs(os.path.join(run_dir, 'play'))
  for name, data in stage_files.items():
    with open(os.path.join(run_dir, 'play', name), 'wb') as f:
      f.write(data)
  result = run_script('play', f'--run_dir={run_dir}', '--policy=random', '--use_snapshot')
  assert 'replaying with the code archived in' in result.stdout
  for name, data in stage_files.items():
    assert open(os.path.join(run_dir, 'play', name), 'rb').read() == data, name


def test_only_the_controller_in_the_real_env_is_the_play_stage(debug_agent, tmp_path):
  run_dir = copy_run(debug_agent, str(tmp_path / 'run'))
  play_dir = os.path.join(run_dir, 'play')
  run_script('play', f'--run_dir={run_dir}')
  stage_files = ('DONE', 'returns.json', os.path.join('snapshot', 'config.json'))
  before = {name: open(os.path.join(play_dir, name), 'rb').read() for name in stage_files}
  assert json.loads(before['returns.json'])['dream'] is False
  dream = run_script('play', f'--run_dir={run_dir}', '--dream', '--config.play.num_episodes=2')
  assert 'left as they were' in dream.stdout, dream.stdout
  for name in stage_files:
    assert open(os.path.join(play_dir, name), 'rb').read() == before[name], name
  saved = json.load(open(os.path.join(play_dir, 'returns-dream.json')))
  assert saved['dream'] is True and len(saved['returns']) == 2
  assert len(saved['action_mean']) == 2 and len(saved['action_mean'][0]) == 3
  assert json.load(open(os.path.join(play_dir, 'snapshot-dream', 'config.json')))[
      'play']['num_episodes'] == 2
  # The pipeline still finds the play stage as it ran, not changed by the dream's override.
  config = config_lib.to_dict(config_lib.load(DEBUG))
  assert changes.decide(runs.Run(run_dir), 'play', config) == ('keep', '')


class PanelPublishingPolicy(policies.Policy):
  """A policy that publishes its own panel (while rendering), as any model may."""

  def __init__(self, action_space):
    self.inner = policies.UniformPolicy(action_space)
    self.infos = []

  def reset(self, seed):
    self.inner.reset(seed)

  def act(self, frame):
    step = self.inner.act(frame)
    if render.enabled():
      step.info['mine'] = {'gauge': render.BarPanel('my gauge', [2.5], limit=3.0)}
    self.infos.append(step.info)
    return step


def test_a_policys_own_panels_are_drawn_only_when_rendering():
  config = config_lib.load(DEBUG)
  env = envs.make(config.env)
  try:
    for enabled in (False, True):
      render.enable(enabled)
      policy, images = PanelPublishingPolicy(env.action_space), []
      result = playback.play_episode(env, policy, seed=3, sinks=[images.append])
      assert len(images) == result.steps == EPISODE_STEPS
      frame_side = 64 * playback.SCALE
      if not enabled:
        assert images[0].shape == (frame_side, frame_side, 3)
        assert not any(render.find_panels(info) for info in policy.infos)
      else:  # the policy's gauge and play's return curve, in the layout's cells, labelled
        layout = render.Layout((64, 64), 2, scale=playback.SCALE)
        assert images[-1].shape == layout.shape
        for rect, label in zip(layout.rects, ('my gauge', 'return so far')):
          assert label_at(images[-1], rect, label) < 1.0, label
          assert label_at(images[-1], rect, 'something else') > 10.0
  finally:
    render.enable(False)
    env.close()


def label_at(image: np.ndarray, rect, label: str) -> float:
  """Mean absolute difference between a cell's label strip and `label` drawn there."""
  y, x, _, _ = rect
  width = render.text_mask(label).shape[1] + render.PAD + 2
  expected = np.empty((render.LABEL_HEIGHT, width, 3), np.uint8)
  expected[...] = render.PANEL
  render.put_text(expected, label, 1, render.PAD)
  found = image[y + 1:y + 1 + render.LABEL_HEIGHT, x + 1:x + 1 + width].astype(float)
  return float(np.abs(found - expected).mean())


WINDOW_CHECK = """
import gymnasium as gym
import numpy as np
from wm import config, envs, playback
env = envs.make(config.load('configs/carracing.py:debug').env)
env.reset(seed=0)
env.step(np.zeros(3, np.float32))  # the env's renderer starts pygame on SDL's dummy driver
window = playback.Window('test')
image = np.random.default_rng(0).integers(0, 256, (60, 80, 3), np.uint8)
window(image)
import pygame
assert pygame.display.get_driver() == 'x11', pygame.display.get_driver()
shown = pygame.surfarray.array3d(pygame.display.get_surface()).swapaxes(0, 1)
np.testing.assert_array_equal(shown, image)
env.step(np.zeros(3, np.float32))  # the env still renders
window.close()
env.close()
print('shown')
"""


@pytest.mark.skipif(shutil.which('Xvfb') is None, reason='a headless --render needs Xvfb')
def test_render_window_shows_the_image_on_a_virtual_display():
  # A process of its own, as play runs it: pygame's display cannot switch drivers twice safely.
  env = script_env()
  env.pop('DISPLAY', None)
  result = subprocess.run([sys.executable, '-c', WINDOW_CHECK], capture_output=True, text=True,
                          env=env, cwd=REPO, timeout=120)
  assert result.returncode == 0 and 'shown' in result.stdout, result.stderr[-3000:]


AGENT_LABELS = ('V: reconstruction', 'M: next frame (T=1)', 'V: z mean +- sigma', 'action',
                'M: hidden state h', 'return so far')


def test_world_model_panels_are_in_their_cells_with_alg_render(debug_world_model, tmp_path):
  run_dir = copy_run(debug_world_model, str(tmp_path / 'run'))
  result = run_script('play', f'--run_dir={run_dir}', '--alg_render', '--record_file=panels.gif',
                      '--policy=random')
  steps = int(re.search(r'episode 0: return \S+ over (\d+) steps', result.stdout).group(1))
  frames = video.read(os.path.join(run_dir, 'play', 'panels.gif'))
  layout = render.Layout((64, 64), len(AGENT_LABELS), scale=playback.SCALE)
  assert frames.shape == (steps, *layout.shape)
  for rect, label in zip(layout.rects, AGENT_LABELS):
    assert label_at(frames[-1], rect, label) < 4.0, label
    assert label_at(frames[-1], rect, 'something else') > 10.0, label
    y, x, h, w = rect
    body = frames[-1, y + render.LABEL_HEIGHT + 2:y + h - render.PAD, x + render.PAD:x + w - 4]
    assert body.std() > 3, f'{label}: nothing drawn in its cell'


def test_dream_frames_come_from_the_world_model(debug_world_model, tmp_path):
  run_dir = copy_run(debug_world_model, str(tmp_path / 'run'))
  result = run_script('play', f'--run_dir={run_dir}', '--dream', '--alg_render',
                      '--record_file=dream.mp4', '--policy=random')
  match = re.search(r'episode 0: return \S+ over (\d+) steps \(dream', result.stdout)
  assert match, result.stdout
  frames = video.read(os.path.join(run_dir, 'play', 'dream.mp4'))
  # M's latent, the action, M's hidden state and the return: no reconstruction in a dream.
  layout = render.Layout((64, 64), 4, scale=playback.SCALE)
  assert frames.shape == (int(match.group(1)), *layout.shape)
  # H.264 blurs small text: the right label must match far better than a wrong one.
  right = label_at(frames[0], layout.rects[0], 'M: dreamt z')
  assert right < 0.6 * label_at(frames[0], layout.rects[0], 'something else'), right


def test_the_trained_agent_plays_with_panels_and_replays_from_its_snapshot(debug_agent, tmp_path):
  run_dir = copy_run(debug_agent, str(tmp_path / 'run'))
  live = run_script('play', f'--run_dir={run_dir}', '--alg_render', '--record_file=agent.gif')
  def ret(out):
    return re.search(r'episode 0: return (\S+) over (\d+) steps', out).groups()
  frames = video.read(os.path.join(run_dir, 'play', 'agent.gif'))
  layout = render.Layout((64, 64), len(AGENT_LABELS), scale=playback.SCALE)
  assert frames.shape == (int(ret(live.stdout)[1]), *layout.shape)
  for rect, label in zip(layout.rects, AGENT_LABELS):
    assert label_at(frames[-1], rect, label) < 4.0, label
  # The controller stage archived the code it ran with: replaying with it plays the same episode.
  replay = run_script('play', f'--run_dir={run_dir}', '--use_snapshot')
  assert 'replaying with the code archived in' in replay.stdout
  assert ret(replay.stdout) == ret(live.stdout)


def test_an_episodes_action_tally_counts_discrete_actions_as_one_hot():
  tally = playback.ActionTally(gym.spaces.Discrete(3))
  for action in (0, 2, 2, np.eye(3)[2]):  # a random policy's int, or the controller's one-hot
    tally.add(action)
  result = tally.result(7.0, 4)
  assert result.action_mean == [0.25, 0.0, 0.75] and result.action_abs_mean == [0.25, 0.0, 0.75]
  box = playback.ActionTally(gym.spaces.Box(-1, 1, (2,)))
  box.add([1.0, -0.5])
  box.add([-1.0, -0.5])
  assert box.result(0.0, 2).action_mean == [0.0, -0.5]
  assert box.result(0.0, 2).action_abs_mean == [1.0, 0.5]
