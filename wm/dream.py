"""Dream episodes: controllers evaluated inside M instead of the real environment.

The whole population x trials is one batch. Each episode starts from a latent drawn from the
distribution of first frames' latents (RUN/seq/initial_latents.npz), then for
env.agent_steps() steps: the controller acts on (z, h), M predicts the next latent (sampled at
controller.dream_temperature), the reward and the episode's end (its reward and done heads;
with controller.dream_done=sample an episode ends with the predicted probability of its end,
drawn each step; with threshold, once that probability passes 0.5; with expected, never by a
draw: each step's reward counts times the probability of being alive then, the product of
(1 - end probability) so far, which is the mean of what `sample` draws without its noise, and
the episode stops once that is below ALIVE_FLOOR; each rule after the odds of an end are
multiplied by controller.dream_done_odds, which makes a cautious dream above 1). The loop is one compiled
`tf.function` (a `tf.while_loop` over the steps); the noise comes from stateless seeds, so a
generation's dream is the same on every rerun.

M's matrix products run in controller.dream_precision (bfloat16 where the device computes it
natively, with 'auto': wm/hardware.py); its state, gates and predictions stay float32.

Judges: earlier checkpoints of M (controller.dream_checkpoints) and the final Ms of other runs
trained on the same V (controller.dream_judge_runs: another seed, another architecture; seq.judges:
such Ms trained by this run's seq stage) may play
an equal share of each candidate's episodes, their world going on from their own predictions
while the controller's memory h still comes from the final M run on what it saw, as in the game.
A blind spot of one M (a move it lets live for ever) then pays in that M's share of episodes
only, or not at all with controller.dream_fitness=worst (a candidate scores its worst M's mean).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np
import tensorflow as tf

from wm import artifacts
from wm.agent import WorldModel
from wm.errors import ConfigError, DataError
from wm.infra import runs


ALIVE_FLOOR = 1e-3  # dream_done=expected: an episode this unlikely to be alive has ended


class Dream:
  """Evaluates candidate parameters [P, n] over `trials` dream episodes each."""

  def __init__(self, world: WorldModel, start: artifacts.StartLatents, max_steps: int,
               temperature: float, use_done: bool = True, done_rule: str = 'sample',
               done_odds: float = 1.0, judges: Sequence[Any] = (), fitness: str = 'mean',
               precision: str = 'float32', dropout: float = 0.0):
    self.world, self.start = world, start
    # M's steps (the final M's, then each judge's), their products in controller.dream_precision
    for judge in judges:  # its predictions join the final M's rows: they must have one shape
      if (judge.action_size, judge.head.num_mixtures) != (world.seq.action_size,
                                                           world.seq.head.num_mixtures):
        raise DataError(f'a judge M ({type(judge).__name__}) takes actions of size '
                        f'{judge.action_size} and predicts {judge.head.num_mixtures} mixtures; '
                        f'the final M {world.seq.action_size} and '
                        f'{world.seq.head.num_mixtures}: judges must match both')
    self._step, self.precision = world.seq.frozen_step(precision)
    self._judge_steps = tuple(judge.frozen_step(precision)[0] for judge in judges)
    self.judges = tuple(judges)  # other Ms whose worlds play their share of the episodes
    self.fitness = fitness  # controller.dream_fitness: mean | worst (over the Ms' means)
    self.max_steps, self.temperature = max_steps, temperature
    self.use_done = use_done  # False runs every episode max_steps (the benchmark's untrained M)
    self.done_rule = done_rule  # controller.dream_done: sample | threshold | expected
    self.done_shift = math.log(done_odds)  # controller.dream_done_odds, added to the logit
    # controller.dream_dropout: each episode reads M's features through one dropout mask of
    # this rate (seq.dropout's), drawn at its start and kept: every episode another M
    self.dropout = dropout
    self._run = tf.function(self._episodes, reduce_retracing=True)

  @classmethod
  def load(cls, world: WorldModel, run: runs.Run, max_steps: int, temperature: float,
           use_done: bool = True, done_rule: str = 'sample', done_odds: float = 1.0,
           checkpoints: Sequence[int] = (), fitness: str = 'mean',
           precision: str = 'float32', judge_runs: Sequence[str] = (),
           seq_judges: int = 0, dropout: float = 0.0) -> 'Dream':
    judges = ([artifacts.load_seq_checkpoint(run, step) for step in checkpoints] +
              [artifacts.load_judge_seq(run, root) for root in judge_runs] +
              [artifacts.load_seq_judge(run, i) for i in range(1, seq_judges + 1)])
    return cls(world, artifacts.StartLatents.of_run(run, world.encoder.z_size), max_steps,
               temperature, use_done, done_rule, done_odds, judges, fitness, precision, dropout)

  @property
  def worlds(self) -> int:
    """How many Ms play each candidate's episodes: the final one and the judges."""
    return 1 + len(self.judges)

  def evaluate(self, params: np.ndarray, trials: int, seed: int) -> np.ndarray:
    """Dream fitness per candidate [P]: the mean return, or with judges and fitness=worst the
    lowest of the Ms' mean returns; `seed` fixes starts and M's sampling noise."""
    return self.score(self.episodes(params, trials, seed))

  def score(self, returns: np.ndarray) -> np.ndarray:
    """Each candidate's score [P] from its episodes [P, E] (as `episodes` orders them): their
    mean, or with fitness=worst the lowest of the Ms' means. The search and the dream's choice
    of best.npz (controller.keep=dream) both rank by it."""
    if self.fitness == 'worst':
      return returns.reshape(len(returns), self.worlds, -1).mean(axis=2).min(axis=1)
    return returns.mean(axis=1)

  def episodes(self, params: np.ndarray, trials: int, seed: int) -> np.ndarray:
    """Dream returns [P, trials]: `trials` episodes of each candidate of params [P, n], in
    blocks of trials / worlds per M (the final M's first, then each judge's)."""
    if trials % self.worlds:
      raise ConfigError(f'{trials} dream episodes a candidate do not split evenly between '
                        f'{self.worlds} Ms (the final M and its judges): make '
                        'controller.trials and controller.eval_episodes multiples of '
                        f'{self.worlds}')
    rng = np.random.default_rng(seed)
    share = trials // self.worlds
    # World-major rows: the final M's episodes of every candidate, then each judge's.
    batch = np.tile(np.repeat(np.asarray(params, np.float32), share, axis=0), (self.worlds, 1))
    z0 = self.start.draw(len(batch), rng)
    noise_seed = rng.integers(0, 2**31 - 1, size=2)
    returns, _ = self.returns(batch, z0, noise_seed)
    return returns.reshape(self.worlds, len(params), share).transpose(1, 0, 2).reshape(
        len(params), trials)

  def returns(self, params: np.ndarray, z0: np.ndarray,
              noise_seed: np.ndarray) -> tuple[np.ndarray, int]:
    """Returns [B] of one dream episode per row (params [B, n], start latents [B, Z]), and
    the number of steps the episodes took together."""
    total, steps = self._run(tf.constant(params, tf.float32), tf.constant(z0, tf.float32),
                             tf.constant(noise_seed, tf.int64))
    return total.numpy(), int(steps)

  def _episodes(self, params, z0, noise_seed):
    seq, controller = self.world.seq, self.world.controller
    batch = tf.shape(params)[0]  # not static once traced for fitness and evaluation sizes
    state = seq.initial_state(batch)
    share = batch // self.worlds
    judge_states = tuple(judge.initial_state(share) for judge in self.judges)
    mask, judge_masks = self._feature_masks(batch, share, noise_seed)
    total = tf.zeros([batch])
    alive = tf.ones([batch])
    steps = tf.constant(0.0)
    z = z0
    for t in tf.range(self.max_steps):
      action = controller(params, z, controller.memory(seq, state))
      prediction, state = self._step(z, action, state, mask)
      if self.judges:
        prediction, judge_states = self._judged(prediction, z, action, judge_states, share,
                                                judge_masks)
      total += alive * tf.cast(tf.reshape(prediction.reward, [batch]), tf.float32)
      steps += tf.reduce_sum(tf.cast(alive > 0.0, tf.float32))
      seed = tf.random.experimental.stateless_fold_in(noise_seed, tf.cast(t, tf.int64))
      if self.use_done:
        alive *= 1.0 - self._ends(prediction.done_logit, batch, seed)
        alive = tf.where(alive < ALIVE_FLOOR, tf.zeros_like(alive), alive)
      z = tf.ensure_shape(tf.cast(seq.sample(prediction, self.temperature, seed=seed),
                                  tf.float32), z0.shape)  # judged rows lose the static batch
      if tf.reduce_max(alive) == 0.0:
        break
    return total, steps

  def _feature_masks(self, batch, share, noise_seed):
    """(M's mask [batch, its feature_size], each judge's [share, its own]) for the episodes'
    whole length, scaled by 1 / keep as in training; Nones without controller.dream_dropout."""
    if not self.dropout:
      return None, (None,) * len(self.judges)
    keep = 1.0 - self.dropout

    def draw(rows, size, k):  # fold-in data past any step index: the steps' draws stay theirs
      seed = tf.random.experimental.stateless_fold_in(noise_seed, tf.constant(2**40 + k, tf.int64))
      return tf.cast(tf.random.stateless_uniform([rows, size], seed) < keep, tf.float32) / keep

    return (draw(batch, self.world.seq.feature_size, 0),
            tuple(draw(share, judge.feature_size, i + 1) for i, judge in enumerate(self.judges)))

  def _judged(self, prediction, z, action, judge_states, share, judge_masks):
    """The prediction [batch] with each judge's rows (block i + 1 of `share`) from that judge
    stepping on them (through its feature mask, if any), and the judges' next states."""
    parts, states = [_rows(prediction, 0, share)], []
    for i, (step, judge_state) in enumerate(zip(self._judge_steps, judge_states)):
      rows = slice((i + 1) * share, (i + 2) * share)
      judged, judge_state = step(z[rows], action[rows], judge_state, judge_masks[i])
      parts.append(judged)
      states.append(judge_state)
    joined = {f.name: tf.concat([tf.cast(getattr(p, f.name), getattr(prediction, f.name).dtype)
                                 for p in parts], 0) for f in dataclasses.fields(prediction)}
    return type(prediction)(**joined), tuple(states)

  def _ends(self, done_logit: tf.Tensor, batch, seed: tf.Tensor) -> tf.Tensor:
    """How much each episode ends after this step, float32 [batch]: 1 or 0 drawn with M's done
    probability ('sample': a rare death the data shows at 5% a step ends 5% of dream steps too),
    or where it is over 0.5 ('threshold': a rare event may then never end a dream); or that
    probability itself ('expected')."""
    logit = tf.cast(tf.reshape(done_logit, [batch]), tf.float32) + self.done_shift
    if self.done_rule == 'threshold':
      return tf.cast(logit > 0, tf.float32)
    if self.done_rule == 'expected':
      return tf.sigmoid(logit)
    draw = tf.random.stateless_uniform([batch], tf.random.experimental.stateless_fold_in(seed, 1))
    return tf.cast(draw < tf.sigmoid(logit), tf.float32)


def _rows(prediction, start: int, size):
  """Rows start..start+size of every field of a batched prediction."""
  return type(prediction)(**{f.name: getattr(prediction, f.name)[start:start + size]
                             for f in dataclasses.fields(prediction)})
