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
multiplied by controller.dream_done_odds, which makes a cautious dream above 1). The steps run
in compiled stretches (a `tf.while_loop` each), between which the episodes that ended leave the
batch; the noise comes from stateless seeds, each episode drawing what it would in the whole
batch, so a generation's dream is the same on every rerun, and with or without the leaving.

M's matrix products run in controller.dream_precision (bfloat16 where the device computes it
natively, with 'auto': wm/hardware.py); its state, gates and predictions stay float32.

Judges: earlier checkpoints of M (controller.dream_checkpoints) and the final Ms of other runs
trained on the same V (controller.dream_judge_runs: another seed, another architecture; seq.judges:
such Ms trained by this run's seq stage) may play
an equal share of each candidate's episodes, their world going on from their own predictions
while the controller's memory h still comes from the final M run on what it saw, as in the game.
A blind spot of one M (a move it lets live for ever) then pays in that M's share of episodes
only, or not at all with controller.dream_fitness=worst (a candidate scores its worst M's mean).
The final M's head predicts its own rows only (SequenceModel.step's head_rows): on the judges'
rows only its state steps. With controller.dream_done_from=all every M steps on every row, each
row's world still its own M's, and an episode ends by the likeliest end any of them predicts
there: a death its own M misses, another M may see on the same steps.
"""

from __future__ import annotations

import copy
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
COMPACT_EVERY = 50  # steps between two looks for ended episodes to drop from the batch (returns)
COMPACT_BELOW = 0.9  # ... dropped once fewer than this share of the batch's rows are alive


class Dream:
  """Evaluates candidate parameters [P, n] over `trials` dream episodes each."""

  def __init__(self, world: WorldModel, start: artifacts.StartLatents, max_steps: int,
               temperature: float, use_done: bool = True, done_rule: str = 'sample',
               done_odds: float = 1.0, judges: Sequence[Any] = (), fitness: str = 'mean',
               precision: str = 'float32', dropout: float = 0.0, common: bool = False,
               done_from: str = 'own'):
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
    # controller.dream_dropout: each episode reads M's features through one dropout mask of
    # this rate (seq.dropout's), drawn at its start and kept: every episode another M
    self.dropout = dropout
    # controller.dream_common: every candidate plays the same episodes (common random numbers)
    self.common = common
    # controller.dream_done_from: each row ends by its own M's end (own) or every M's likeliest
    self.done_from_all = done_from == 'all' and bool(judges)  # (dropout refused: wm/config.py)
    self.compact_every = COMPACT_EVERY
    self._end_by(done_rule, done_odds)

  def _end_by(self, done_rule: str, done_odds: float) -> None:
    """How episodes end, and the compiled stretch of steps that plays them (traced with them)."""
    self.done_rule = done_rule  # controller.dream_done: sample | threshold | expected
    self.done_shift = math.log(done_odds)  # controller.dream_done_odds, added to the logit
    self._stretch = tf.function(self._steps, reduce_retracing=True)

  @classmethod
  def load(cls, world: WorldModel, run: runs.Run, max_steps: int, temperature: float,
           use_done: bool = True, done_rule: str = 'sample', done_odds: float = 1.0,
           checkpoints: Sequence[int] = (), fitness: str = 'mean',
           precision: str = 'float32', judge_runs: Sequence[str] = (),
           seq_judges: int = 0, dropout: float = 0.0, common: bool = False,
           done_from: str = 'own') -> 'Dream':
    judges = ([artifacts.load_seq_checkpoint(run, step) for step in checkpoints] +
              [artifacts.load_judge_seq(run, root) for root in judge_runs] +
              [artifacts.load_seq_judge(run, i) for i in range(1, seq_judges + 1)])
    return cls(world, artifacts.StartLatents.of_run(run, world.encoder.z_size), max_steps,
               temperature, use_done, done_rule, done_odds, judges, fitness, precision, dropout,
               common, done_from)

  def with_ends(self, done_rule: str, done_odds: float) -> 'Dream':
    """The same dream (its Ms, starts, temperature, judges, fitness) whose episodes end by
    another rule and odds: controller.keep=select's selection dream."""
    other = copy.copy(self)
    other._end_by(done_rule, done_odds)
    return other

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
      return self.world_means(returns).min(axis=1)
    return returns.mean(axis=1)

  def world_means(self, returns: np.ndarray) -> np.ndarray:
    """Each candidate's mean in each M [P, worlds] (the final M's first) from its episodes [P, E]
    as `episodes` orders them."""
    return returns.reshape(len(returns), self.worlds, -1).mean(axis=2)

  def episodes(self, params: np.ndarray, trials: int, seed: int) -> np.ndarray:
    """Dream returns [P, trials]: `trials` episodes of each candidate of params [P, n], in
    blocks of trials / worlds per M (the final M's first, then each judge's)."""
    returns, _ = self.returns(*self.rows(params, trials, seed))
    share = trials // self.worlds
    return returns.reshape(self.worlds, len(params), share).transpose(1, 0, 2).reshape(
        len(params), trials)

  def rows(self, params: np.ndarray, trials: int, seed: int
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """`returns`' arguments for `episodes`: a row per episode, world-major (the final M's
    episodes of every candidate, then each judge's), start latents, the noise's seed and each
    row's draws. With `common`, a world's k-th episode of every candidate starts from the same
    latent and draws the same noise: candidates differ by their moves, not their luck."""
    if trials % self.worlds:
      raise ConfigError(f'{trials} dream episodes a candidate do not split evenly between '
                        f'{self.worlds} Ms (the final M and its judges): make '
                        'controller.trials and controller.eval_episodes multiples of '
                        f'{self.worlds}')
    rng = np.random.default_rng(seed)
    share = trials // self.worlds
    batch = np.tile(np.repeat(np.asarray(params, np.float32), share, axis=0), (self.worlds, 1))
    draws = np.arange(len(batch))
    if self.common:  # row (world w, candidate p, episode k) draws as row w * share + k
      world, within = np.divmod(draws, len(params) * share)
      draws = world * share + within % share
    z0 = self.start.draw(len(batch), rng)[draws]
    return batch, z0, rng.integers(0, 2**31 - 1, size=2), draws

  def returns(self, params: np.ndarray, z0: np.ndarray, noise_seed: np.ndarray,
              draws: np.ndarray | None = None) -> tuple[np.ndarray, int]:
    """Returns [B] of one dream episode per row (params [B, n], start latents [B, Z]), and
    the number of steps the episodes took together. Row i draws M's noise, its end and its
    dropout mask as row draws[i] of the batch would: as `rows` gives them, shared by the
    candidates with `common`; by default each row its own.

    The steps run in compiled stretches of `compact_every`; between two, the ended episodes
    leave the batch once they are over a tenth of it: a batch costs its rows, ended or not, and
    a dream's lives are long-tailed (one episode at the cap kept every row stepping to the end).
    Each row draws the noise it would draw in the whole batch, so leaving changes no return
    beyond the float rounding of a smaller batch."""
    size, worlds = len(params), self.worlds
    share, seed = size // worlds, tf.constant(noise_seed, tf.int64)
    rows = np.arange(size)  # the batch's rows, world-major: which episode each one is
    draws = rows if draws is None else np.asarray(draws)  # ... and whose noise it draws
    sizes = np.full(worlds, share)  # rows of each world: the final M's, then each judge's
    params = tf.constant(params, tf.float32)
    z = tf.constant(z0, tf.float32)
    state = self.world.seq.initial_state(size)
    judge_rows = size if self.done_from_all else share  # the rows each judge steps on
    judge_states = [judge.initial_state(judge_rows) for judge in self.judges]
    mask, judge_masks = self._feature_masks(size, share, seed)
    mask = _gather(draws)(mask)
    judge_masks = [_gather(block - block[0])(m)  # a judge's masks count from its block's first
                   for block, m in zip(np.split(draws, worlds)[1:], judge_masks)]
    total, alive = tf.zeros([size]), tf.ones([size])
    returns, steps, t = np.zeros(size, np.float32), 0.0, 0
    while t < self.max_steps:
      stretch = min(self.compact_every, self.max_steps - t)
      z, state, judge_states, total, alive, taken = self._stretch(
          tf.constant(t), tf.constant(stretch), seed, tf.constant(size),
          tf.constant(draws, tf.int32), tf.constant(sizes, tf.int32), params, z, state,
          tuple(judge_states), mask, tuple(judge_masks), total, alive)
      judge_states, steps, t = list(judge_states), steps + float(taken), t + stretch
      live = alive.numpy() > 0
      if not live.any():
        break
      if live.mean() >= COMPACT_BELOW:
        continue
      returns[rows[~live]] = total.numpy()[~live]  # the ended episodes leave the batch
      keep = np.flatnonzero(live)
      starts = np.concatenate([[0], np.cumsum(sizes)])
      world_of = np.repeat(np.arange(worlds), sizes)
      take = _gather(keep)
      params, z, total, alive, state = map(take, (params, z, total, alive, state))
      mask = take(mask)
      for i in range(len(self.judges)):
        own = keep if self.done_from_all else (  # the rows the judge steps on
            keep[world_of[keep] == i + 1] - starts[i + 1])  # ... its own, in its block
        judge_states[i], judge_masks[i] = map(_gather(own), (judge_states[i], judge_masks[i]))
      rows, draws = rows[keep], draws[keep]
      sizes = np.bincount(world_of[keep], minlength=worlds)
    returns[rows] = total.numpy()
    return returns, int(steps)

  def _steps(self, t0, stretch, seed, size, draws, sizes, params, z, state, judge_states, mask,
             judge_masks, total, alive):
    """Steps t0 .. t0 + stretch - 1 (fewer once every episode ended) of the batch's rows:
    (z, state, judge states, total, alive, the alive rows' steps); row i draws as row draws[i]
    of a batch of `size`."""
    seq, controller = self.world.seq, self.world.controller
    batch, z_shape = tf.shape(params)[0], z.shape
    steps = tf.constant(0.0)
    for t in tf.range(t0, t0 + stretch):
      action = controller(params, z, controller.memory(seq, state))
      # with judges, M predicts its own rows only (the first sizes[0]), unless every M's end
      # counts on every row; its state steps on all
      prediction, state = self._step(z, action, state, mask,
                                     sizes[0] if self.judges and not self.done_from_all else None)
      if self.judges:
        prediction, judge_states = self._judged(prediction, z, action, judge_states, sizes,
                                                judge_masks)
      total += alive * tf.cast(tf.reshape(prediction.reward, [batch]), tf.float32)
      steps += tf.reduce_sum(tf.cast(alive > 0.0, tf.float32))
      step_seed = tf.random.experimental.stateless_fold_in(seed, tf.cast(t, tf.int64))
      if self.use_done:
        alive *= 1.0 - self._ends(prediction.done_logit, draws, size, step_seed)
        alive = tf.where(alive < ALIVE_FLOOR, tf.zeros_like(alive), alive)
      z = tf.ensure_shape(tf.cast(seq.sample(prediction, self.temperature, seed=step_seed,
                                             rows=draws, size=size), tf.float32),
                          z_shape)  # judged rows lose the static batch
      if tf.reduce_max(alive) == 0.0:
        break
    return z, state, judge_states, total, alive, steps

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

  def _judged(self, prediction, z, action, judge_states, sizes, judge_masks):
    """The prediction [batch] from M's for its rows [sizes[0]] and each judge's rows
    (world-major blocks of `sizes` rows: the final M's, then each judge's) from that judge
    stepping on them (through its feature mask, if any), and the judges' next states. With
    done_from_all, M's prediction covers every row, each judge steps on every row, and each
    row's end logit is the largest of all the Ms'."""
    every = self.done_from_all
    parts = [_rows(prediction, 0, sizes[0]) if every else prediction]
    states, ends, start = [], [prediction.done_logit], sizes[0]
    for i, (step, judge_state) in enumerate(zip(self._judge_steps, judge_states)):
      end = start + sizes[i + 1]
      if every:
        judged, judge_state = step(z, action, judge_state)
        ends.append(judged.done_logit)
        judged = _rows(judged, start, end)
      else:
        judged, judge_state = step(z[start:end], action[start:end], judge_state, judge_masks[i])
      parts.append(judged)
      states.append(judge_state)
      start = end
    dtypes = {f.name: getattr(prediction, f.name).dtype for f in dataclasses.fields(prediction)}
    joined = {name: tf.concat([tf.cast(getattr(p, name), dtype) for p in parts], 0)
              for name, dtype in dtypes.items()}
    if every:
      joined['done_logit'] = tf.reduce_max(
          tf.stack([tf.cast(e, dtypes['done_logit']) for e in ends]), axis=0)
    return type(prediction)(**joined), tuple(states)

  def _ends(self, done_logit: tf.Tensor, rows: tf.Tensor, size, seed: tf.Tensor) -> tf.Tensor:
    """How much each episode ends after this step, float32 [B] for the batch's rows `rows` [B]
    of the `size` episodes (each draws as in the whole batch): 1 or 0 drawn with M's done
    probability ('sample': a rare death the data shows at 5% a step ends 5% of dream steps too),
    or where it is over 0.5 ('threshold': a rare event may then never end a dream); or that
    probability itself ('expected')."""
    logit = tf.cast(tf.reshape(done_logit, [-1]), tf.float32) + self.done_shift
    if self.done_rule == 'threshold':
      return tf.cast(logit > 0, tf.float32)
    if self.done_rule == 'expected':
      return tf.sigmoid(logit)
    draw = tf.random.stateless_uniform([size], tf.random.experimental.stateless_fold_in(seed, 1))
    return tf.cast(tf.gather(draw, rows) < tf.sigmoid(logit), tf.float32)


def _rows(prediction, start, end):
  """Rows start .. end - 1 of every field of a prediction."""
  return type(prediction)(**{f.name: getattr(prediction, f.name)[start:end]
                             for f in dataclasses.fields(prediction)})


def _gather(keep: np.ndarray):
  """A function taking rows `keep` of a nest of batch-major tensors (None stays None)."""
  return lambda nest: None if nest is None else tf.nest.map_structure(
      lambda x: tf.gather(x, keep), nest)
