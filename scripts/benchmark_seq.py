"""Benchmark M's training step: this pipeline's MDN-RNN vs a straightforward tfp Keras model.

Input:  nothing (random in-memory batches of the configured shape); with --bucket_steps or
        --pack, the episode lengths of RUN/rollouts (--lengths_from).
Output: sequence-steps/s (batch x sequence length per second) of both, side by side, and the ratio
        (printed; nothing is written).

    python scripts/benchmark_seq.py [--batch_size=100 --sequence_length=100 --z_size=32
                                     --hidden_size=256 --num_mixtures=5 --steps=15 --rounds=5
                                     --sides=fit,step,ours,layer,bf16 --threads=0]

All four train the same LSTM and the same output layer (mixture, reward, done; same parameter
count) with Adam and gradient clipping on the same batch:
  fit    the straightforward Keras way: a functional model compiled with a loss that scores the
         mixture with tfp's `MixtureSameFamily(Categorical, Normal).log_prob`, `train_on_batch`;
  step   that model and loss in a hand-written tf.function step (isolates the likelihood's share);
  ours   wm.stages.seq.Trainer on MDNRNN: the log-sum-exp likelihood of wm/models/mdn.py
         compiled apart by XLA, the LSTM unrolled by wm/models/fused_lstm.py (as on a CPU);
  layer  the same Trainer with the LSTM unrolled by the Keras layer itself (isolates the share
         of wm/models/fused_lstm.py);
  bf16   ours with its products in bfloat16 (seq.precision=bfloat16; `ours` is float32): what
         seq.precision=auto gains where the CPU computes bfloat16 natively, and costs elsewhere.
--sides picks some of them (the Doom preset's M: --sides=ours,bf16, too slow for Keras' loop);
--threads=1 gives TensorFlow one core, as each of the seq stage's side-by-side trainings has.
It then times the mixture likelihood alone (forward and gradient), tfp's and ours.
Rounds alternate between them so a machine busy with other work slows all alike. Rates are
medians over rounds; ratios are medians of each round's ratio.

    python scripts/benchmark_seq.py --step_contexts=25,50,100,200 [--step_batch_size=64 --rounds=5
                                                                   --steps=15]

times M's step instead: the transformer (hidden_size wide, its default 2 layers and 4 heads) at
each max_context, ms per step of a batch inside one tf.function loop (as the dream runs it), after
warm-up. `cached` is its step (a key/value cache written in place; a round runs max_context
steps, so the two window restarts in them are counted at their share); `copying` is the same step
with the cache updated out of place (tf.tensor_scatter_nd_update, which copies the whole cache
each step: the cache before it was written in place); `recompute` is the step before the cache,
which reran every block over the last max_context tokens each step (`steps` steps a round).
Rounds alternate between the three; medians over rounds, of wall time and of CPU time.

    python scripts/benchmark_seq.py --bucket_steps=100 --lengths_from=RUN --batch_size=16 \
        --sequence_length=500 --z_size=64 --hidden_size=512 [--steps=10 --rounds=3]

times M's training on windows of RUN's own episode lengths (RUN/rollouts) instead, padded and
bucketed (seq.bucket_steps): the same windows (cut from episodes at t = 0, L, 2L, ... as
seq.window_start=episode cuts them) batched both ways, `padded` as seq.bucket_steps=0 batches
them ([batch_size, sequence_length], in the order drawn) and `bucketed` as wm/sequences.py's
bucketed() does (grouped by where their real steps end, each batch cut there). With --pack
(alone, or beside --bucket_steps) `packed` lays the same windows end to end in rows of
sequence_length as wm/sequences.py's packed() does (seq.pack), batch_size rows a batch. Rates are
real (unmasked) steps per second, so a ratio is what a seq stage of as many real steps saves.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from wm.infra import cpu_kernels, quiet

quiet.install()  # before TensorFlow is imported: its start-up notices stay out of the log
cpu_kernels.use_onednn()  # the kernels of the seq stage, for both sides

from absl import app, flags

from wm.errors import DataError, UserError
from wm.infra import cli

FLAGS = flags.FLAGS
flags.DEFINE_integer('batch_size', 100, 'Sequences per batch.')
flags.DEFINE_integer('sequence_length', 100, 'Steps per sequence.')
flags.DEFINE_integer('z_size', 32, 'Latent size.')
flags.DEFINE_integer('action_size', 3, 'Action size.')
flags.DEFINE_integer('hidden_size', 256, 'LSTM units.')
flags.DEFINE_integer('num_mixtures', 5, 'Gaussians per latent dimension.')
flags.DEFINE_integer('steps', 15, 'Timed training steps per round.')
flags.DEFINE_integer('rounds', 5, 'Alternating rounds per model.')
SIDES = ('fit', 'step', 'ours', 'layer', 'bf16')
flags.DEFINE_list('sides', list(SIDES), 'The training steps to time (fit, step, ours, layer, '
                  'bf16: the module docstring); the mixture NLL alone is timed with fit.')
cli.refuse_unknown('sides', SIDES, 'the sides are')
flags.DEFINE_integer('threads', 0, 'TensorFlow\'s intra- and inter-op threads (0: its default, '
                     'every core).')
flags.DEFINE_list('step_contexts', [], 'If set, time the transformer\'s step at these '
                  'max_context values (e.g. 25,50,100,200) instead of training.')
flags.DEFINE_integer('step_batch_size', 64, 'Rows per step in the --step_contexts mode.')
flags.DEFINE_integer('bucket_steps', 0, 'If set, time M\'s training on RUN\'s episode lengths '
                     '(--lengths_from), padded and in buckets of this many steps, instead.')
flags.DEFINE_bool('pack', False, 'Time M\'s training on RUN\'s episode lengths (--lengths_from), '
                  'padded and packed into rows (seq.pack), instead; with --bucket_steps, '
                  'bucketed too.')
flags.DEFINE_string('lengths_from', None, 'A run dir whose rollouts/ give the episode lengths '
                    'of the --bucket_steps and --pack mode.')


@flags.multi_flags_validator(['bucket_steps', 'pack', 'lengths_from'])  # before TensorFlow loads
def _lengths_to_bucket(values: dict) -> bool:
  if values['bucket_steps'] or values['pack']:
    rollout_indices(values['lengths_from'])
  return True


def rollout_indices(run_dir: str | None) -> list[int]:
  """The indices of RUN/rollouts' rollouts; refused (ValidationError) when there are none."""
  from wm import rollouts
  folder = os.path.join(run_dir or '', 'rollouts')
  if run_dir:
    try:
      rollouts.require_kept(folder, '--lengths_from')
    except DataError as e:
      raise flags.ValidationError(str(e)) from None
  indices = rollouts.list_indices(folder) if run_dir else []
  if not indices:
    raise flags.ValidationError(
        f'--lengths_from={run_dir or ""}: no rollouts in {folder}; --bucket_steps and --pack '
        'time M on the episode lengths of a run dir whose collect stage has run')
  return indices


def tfp_loss(z_size, num_mixtures):
  """Keras loss(y_true [B,T,Z+3] = z_next|reward|done|mask, y_pred [B,T,Z*K*3+2]) with tfp."""
  import tensorflow as tf
  import tensorflow_probability as tfp
  tfd = tfp.distributions

  def loss(y_true, out):
    z_next, reward, done, mask = (y_true[..., :z_size], y_true[..., -3], y_true[..., -2],
                                  y_true[..., -1])
    shape = tf.concat([tf.shape(out)[:2], [z_size, 3 * num_mixtures]], 0)
    logits, means, log_stds = tf.split(tf.reshape(out[..., :-2], shape), 3, axis=-1)
    mixture = tfd.MixtureSameFamily(tfd.Categorical(logits=logits),
                                    tfd.Normal(means, tf.exp(log_stds)))
    latent = -tf.reduce_sum(tf.reduce_mean(mixture.log_prob(z_next), -1) * mask)
    reward = tf.reduce_sum(0.5 * tf.square(out[..., -2] - reward) * mask)
    done = tf.reduce_sum(tf.nn.sigmoid_cross_entropy_with_logits(done, out[..., -1]) * mask)
    return (latent + reward + done) / tf.reduce_sum(mask)

  return loss


def keras_model(z_size, action_size, hidden_size, num_mixtures):
  import tensorflow as tf
  z_in = tf.keras.Input([None, z_size])
  a_in = tf.keras.Input([None, action_size])
  h = tf.keras.layers.LSTM(hidden_size, return_sequences=True)(
      tf.keras.layers.Concatenate()([z_in, a_in]))
  out = tf.keras.layers.Dense(z_size * num_mixtures * 3 + 2)(h)
  return tf.keras.Model([z_in, a_in], out)


def baseline_fit(z_size, action_size, hidden_size, num_mixtures):
  """The plain way: a compiled Keras model with a tfp loss, trained by train_on_batch."""
  import tensorflow as tf
  model = keras_model(z_size, action_size, hidden_size, num_mixtures)
  model.compile(tf.keras.optimizers.Adam(1e-3, global_clipnorm=1.0),
                tfp_loss(z_size, num_mixtures), jit_compile=False)

  def step(batch):
    y_true = tf.concat([batch['z_next'], tf.stack([batch['reward'], batch['done'],
                                                   batch['mask']], -1)], -1)
    return model.train_on_batch([batch['z'], batch['actions']], y_true)

  return step, model.count_params()


def baseline_step(z_size, action_size, hidden_size, num_mixtures):
  """The same tfp loss in a hand-written tf.function step (isolates the likelihood's cost)."""
  import tensorflow as tf
  model = keras_model(z_size, action_size, hidden_size, num_mixtures)
  optimizer = tf.keras.optimizers.Adam(1e-3)
  loss_fn = tfp_loss(z_size, num_mixtures)

  @tf.function
  def step(batch):
    y_true = tf.concat([batch['z_next'], tf.stack([batch['reward'], batch['done'],
                                                   batch['mask']], -1)], -1)
    with tf.GradientTape() as tape:
      loss = loss_fn(y_true, model([batch['z'], batch['actions']]))
    grads, _ = tf.clip_by_global_norm(tape.gradient(loss, model.trainable_variables), 1.0)
    optimizer.apply_gradients(zip(grads, model.trainable_variables))
    return loss

  return step, model.count_params()


def likelihood_steps(b, t, z, k):
  """The mixture NLL alone (forward and gradient) on random parameters [b, t, z, k]: tfp vs ours."""
  import numpy as np
  import tensorflow as tf
  import tensorflow_probability as tfp

  from wm.models import mdn
  tfd = tfp.distributions
  rng = np.random.default_rng(1)
  params = [tf.Variable(rng.normal(size=(b, t, z, k)).astype(np.float32)) for _ in range(3)]
  x = tf.constant(rng.normal(size=(b, t, z)).astype(np.float32))

  def tfp_log_prob(logits, means, log_stds, x):
    return tfd.MixtureSameFamily(tfd.Categorical(logits=logits),
                                 tfd.Normal(means, tf.exp(log_stds))).log_prob(x)

  def make(log_prob):
    @tf.function
    def step(batch):
      del batch
      with tf.GradientTape() as tape:
        loss = -tf.reduce_mean(log_prob(*params, x))
      return [loss] + tape.gradient(loss, params)
    return step

  return {'nll_tfp': make(tfp_log_prob), 'nll_ours': make(mdn.log_prob)}


def keras_layer_mdnrnn():
  """MDNRNN unrolled by the Keras LSTM layer, as on a GPU (there through cuDNN)."""
  import tensorflow as tf

  from wm.models.mdnrnn import MDNRNN

  class KerasLayerMDNRNN(MDNRNN):
    def sequence_features(self, z, actions, training=False, precision='float32', resets=None):
      del training, precision
      assert resets is None, 'the layer side times padded batches only'
      return self.lstm(tf.concat([z, actions], -1))[0]

  return KerasLayerMDNRNN


def rate(step, batch, steps) -> float:
  step(batch)  # trace and warm up
  step(batch)
  start = time.perf_counter()
  for _ in range(steps):
    loss = step(batch)
  float(loss['loss'] if isinstance(loss, dict) else loss[0] if isinstance(loss, list) else loss)
  return steps * FLAGS.batch_size * FLAGS.sequence_length / (time.perf_counter() - start)


def recompute_step(model, z, action, state):
  """The transformer's step before its cache: the last max_context tokens, right-aligned, rerun
  through every block each step (positions restart at the oldest token)."""
  import tensorflow as tf
  size = model.max_context
  tokens = tf.concat([state['tokens'][:, 1:], tf.concat([z, action], -1)[:, None]], 1)
  length = tf.minimum(state['length'] + 1, size)
  index = tf.range(size)[None]
  first = (size - length)[:, None]  # where the real tokens start
  causal = tf.linalg.band_part(tf.ones([size, size], tf.bool), -1, 0)[None]
  mask = tf.logical_and(causal, (index >= first)[:, None, :])
  positions = tf.maximum(index - first, 0)
  hidden = model._hidden(tokens, positions, mask)[:, -1]  # pylint: disable=protected-access
  return model.head(hidden), {'tokens': tokens, 'length': length, 'h': hidden}


def copying_write(buffer, rows, new):
  """wm.models.transformer.write out of place: the whole buffer copied to write one slot a row."""
  import tensorflow as tf
  shape = tf.shape(buffer)
  slots = tf.reduce_prod(shape[1:-2])
  row = tf.repeat(tf.range(shape[0]), slots)
  head = tf.tile(tf.range(slots), [shape[0]])
  flat = tf.reshape(buffer, tf.stack([shape[0], slots, shape[-2], shape[-1]]))
  at = tf.stack([row, head, tf.gather(rows, row)], -1)
  updated = tf.tensor_scatter_nd_update(flat, at, tf.reshape(new, [-1, shape[-1]]))
  return tf.reshape(updated, shape)


def copying_step(model, z, action, state):
  """The cached step with `copying_write` in place of the in-place write."""
  from wm.models import transformer
  in_place, transformer.write = transformer.write, copying_write
  try:
    return model.step(z, action, state)  # traced once, inside step_loop's tf.function
  finally:
    transformer.write = in_place


def step_loop(step, model, steps):
  """A tf.function running `steps` steps from (z, state), M's mean latent fed back as the next z
  (a dependent chain, as in a dream); returns (z, state) to carry into the next call."""
  import tensorflow as tf

  @tf.function
  def run(z, state):
    action = tf.zeros([tf.shape(z)[0], model.action_size])
    for _ in tf.range(steps):
      prediction, state = step(z, action, state)
      z = prediction.means[..., 0]
    return z, state

  return run


def step_times(max_context, batch):
  """Median ms per step over the rounds at one max_context: {(cached or recompute, wall or
  cpu): ms}; cpu is the process's CPU time (all threads), less swayed by other jobs."""
  import numpy as np
  import tensorflow as tf

  from wm.models.transformer import Transformer
  model = Transformer(FLAGS.z_size, FLAGS.action_size, FLAGS.hidden_size, FLAGS.num_mixtures,
                      max_context=max_context)
  model.build_for_loading()
  z = tf.random.stateless_normal([batch, FLAGS.z_size], (0, 1))
  old_state = {'tokens': tf.zeros([batch, max_context, FLAGS.z_size + FLAGS.action_size]),
               'length': tf.zeros([batch], tf.int32), 'h': tf.zeros([batch, FLAGS.hidden_size])}
  runs = {'cached': [step_loop(model.step, model, max_context), max_context,
                     (z, model.initial_state(batch))],
          'copying': [step_loop(lambda *a: copying_step(model, *a), model, max_context),
                      max_context, (z, model.initial_state(batch))],
          'recompute': [step_loop(lambda *a: recompute_step(model, *a), model, FLAGS.steps),
                        FLAGS.steps, (z, old_state)]}
  times = {(name, clock): [] for name in runs for clock in ('wall', 'cpu')}
  for round_ in range(FLAGS.rounds + 2):  # two warm-up rounds: trace, then fill the window
    for name, (run, steps, carry) in runs.items():
      wall, cpu = time.perf_counter(), time.process_time()
      carry = run(*carry)
      carry[0].numpy()
      if round_ >= 2:
        times[name, 'wall'].append((time.perf_counter() - wall) * 1e3 / steps)
        times[name, 'cpu'].append((time.process_time() - cpu) * 1e3 / steps)
      runs[name][2] = carry
  return {key: float(np.median(t)) for key, t in times.items()}


def step_table() -> None:
  """Prints the --step_contexts table: ms per step, cached and recomputed, side by side."""
  batch = FLAGS.step_batch_size
  print(f'Transformer step, batch {batch}, width {FLAGS.hidden_size}, 2 layers, 4 heads, '
        f'z {FLAGS.z_size}, {FLAGS.num_mixtures} mixtures; ms per step (wall; CPU time of all '
        f'threads in brackets), median of {FLAGS.rounds} rounds; ratios of CPU time')
  print('| max_context | cached step (ms) | cache copied each step (ms) | full-window recompute '
        '(ms) | copied / cached | recompute / cached |')
  print('|---|---|---|---|---|---|')
  for max_context in map(int, FLAGS.step_contexts):
    t = step_times(max_context, batch)
    print(f'| {max_context} | {t["cached", "wall"]:.2f} ({t["cached", "cpu"]:.2f}) | '
          f'{t["copying", "wall"]:.2f} ({t["copying", "cpu"]:.2f}) | '
          f'{t["recompute", "wall"]:.1f} ({t["recompute", "cpu"]:.1f}) | '
          f'{t["copying", "cpu"] / t["cached", "cpu"]:.1f}x | '
          f'{t["recompute", "cpu"] / t["cached", "cpu"]:.1f}x |', flush=True)


def episode_lengths(run_dir: str):
  """Steps of every rollout in RUN/rollouts (the arrays' length; frames are not read)."""
  import numpy as np

  from wm import rollouts
  folder = os.path.join(run_dir, 'rollouts')
  lengths = []
  for index in rollout_indices(run_dir):
    with np.load(rollouts.path_for(folder, index)) as rollout:
      lengths.append(len(rollout['actions']))
  return np.array(lengths)


def bucket_batches(lengths, rng):
  """{side: [(width, real steps of each row, resets or None)]} over the same windows, drawn from
  the episodes' windows at random, batch_size rows a batch: padded, and bucketed (as
  wm/sequences.py's bucketed()) with --bucket_steps, packed (its packed()) with --pack."""
  import numpy as np

  from wm import sequences
  size, length, bucket = FLAGS.batch_size, FLAGS.sequence_length, FLAGS.bucket_steps
  pool = np.array([min(length, n - start) for n in lengths for start in range(0, n, length)])
  drawn = rng.choice(pool, FLAGS.steps * size)
  sides = {'padded': [(length, drawn[i:i + size], None) for i in range(0, len(drawn), size)]}
  if bucket:
    keys = sequences.bucket_of(drawn, bucket)
    sides['bucketed'] = []
    for key in np.unique(keys):
      rows = drawn[keys == key]
      width = int(sequences.bucket_end(key, bucket, length))
      sides['bucketed'] += [(width, rows[i:i + size], None)
                            for i in range(0, len(rows) - size + 1, size)]
  if FLAGS.pack:
    rows = packed_rows(drawn, length)
    sides['packed'] = [(length, np.array([r[0] for r in rows[i:i + size]]),
                        np.stack([r[1] for r in rows[i:i + size]]))
                       for i in range(0, len(rows) - size + 1, size)]
  return sides


def packed_rows(drawn, length):
  """[(real steps, resets [length])] of the rows wm/sequences.py's packed() lays `drawn`'s
  windows in (the rows still open after the last window are left out, as an endless training
  stream never reaches them: the rates are per real step of the rows timed)."""
  import numpy as np
  import tensorflow as tf

  from wm import sequences
  count = len(drawn)
  windows = {name: np.zeros((count, length, 1), np.float32) for name in ('z', 'actions',
                                                                          'z_next')}
  windows.update({name: np.zeros((count, length), np.float32) for name in ('reward', 'done')})
  windows['mask'] = (np.arange(length)[None] < np.asarray(drawn)[:, None]).astype(np.float32)
  rows = sequences.packed(tf.data.Dataset.from_tensor_slices(windows), length,
                          {'z': 1, 'actions': 1, 'z_next': 1})
  return [(int(row['mask'].sum()), row['reset']) for row in rows.as_numpy_iterator()]


def bucket_table() -> None:
  """Prints the --bucket_steps / --pack comparison: real steps/s of M's training, padded,
  bucketed and packed."""
  import numpy as np
  import tensorflow as tf

  from wm import sequences
  from wm.models.mdnrnn import MDNRNN
  from wm.stages.seq import Trainer

  lengths = episode_lengths(FLAGS.lengths_from)
  drawn = bucket_batches(lengths, np.random.default_rng(0))
  size, z, a = FLAGS.batch_size, FLAGS.z_size, FLAGS.action_size
  full = sequences.random_batch(size, FLAGS.sequence_length, z, a)

  def batch(width, rows, resets):
    mask = (np.arange(width)[None] < rows[:, None]).astype(np.float32)
    one = {**{key: value[:, :width] for key, value in full.items()}, 'mask': tf.constant(mask)}
    return one if resets is None else {**one, 'reset': tf.constant(resets, tf.float32)}

  sides = {name: [batch(*b) for b in batches] for name, batches in drawn.items()}
  real = {name: float(sum(np.sum(b['mask']) for b in batches)) for name, batches in sides.items()}
  computed = {name: float(sum(np.size(b['mask']) for b in batches))
              for name, batches in sides.items()}
  step = Trainer(MDNRNN(z, a, FLAGS.hidden_size, FLAGS.num_mixtures), 1e-3,
                 grad_clip=1.0).train_step
  for batches in sides.values():
    for one in {b['mask'].shape[1]: b for b in batches}.values():
      float(step(one)['loss'])  # trace and compile every width and kind before timing
  rates = {name: [] for name in sides}
  for _ in range(FLAGS.rounds):
    for name, batches in sides.items():
      start = time.perf_counter()
      for one in batches:
        loss = step(one)['loss']
      float(loss)
      rates[name].append(real[name] / (time.perf_counter() - start))
  print(f'M training on {FLAGS.lengths_from}\'s {len(lengths)} episodes (median '
        f'{np.median(lengths):.0f} steps, {np.mean(lengths > FLAGS.sequence_length):.0%} longer '
        f'than a window), windows of {FLAGS.sequence_length} from t = 0, batch {size}, z {z}, '
        f'LSTM {FLAGS.hidden_size}; real steps/s, median of {FLAGS.rounds} rounds')
  for name in sides:
    widths = sorted({b['mask'].shape[1] for b in sides[name]})
    print(f'  {name:<9s} {len(sides[name]):>3d} batches, widths {widths}: '
          f'{real[name] / computed[name]:.0%} of the computed steps real, '
          f'{np.median(rates[name]):>8,.0f} real steps/s  '
          f'({", ".join(f"{r:,.0f}" for r in rates[name])})')
  for name in sides:
    if name != 'padded':
      ratio = float(np.median(np.divide(rates[name], rates['padded'])))
      print(f'  {name} / padded: {ratio:.2f}x')


def main(argv):
  del argv
  if FLAGS.threads:
    import tensorflow as tf
    tf.config.threading.set_intra_op_parallelism_threads(FLAGS.threads)
    tf.config.threading.set_inter_op_parallelism_threads(FLAGS.threads)
  if FLAGS.step_contexts:
    step_table()
    return
  if FLAGS.bucket_steps or FLAGS.pack:
    bucket_table()
    return
  import numpy as np

  from wm import sequences
  from wm.models import fused_lstm
  from wm.models.mdnrnn import MDNRNN
  from wm.stages.seq import Trainer

  b, t, z, a = FLAGS.batch_size, FLAGS.sequence_length, FLAGS.z_size, FLAGS.action_size
  sides = [side for side in SIDES if side in FLAGS.sides]
  batch = sequences.random_batch(b, t, z, a)
  size = (z, a, FLAGS.hidden_size, FLAGS.num_mixtures)
  ours = MDNRNN(*size)
  ours.build_for_loading()  # its parameter count is the baselines' check, whichever runs first
  trainers = {'ours': lambda: Trainer(ours, 1e-3, grad_clip=1.0),
              'layer': lambda: Trainer(keras_layer_mdnrnn()(*size), 1e-3, grad_clip=1.0),
              'bf16': lambda: Trainer(MDNRNN(*size), 1e-3, grad_clip=1.0, precision='bfloat16')}
  baselines = {'fit': baseline_fit, 'step': baseline_step}
  steps = {}
  for name in sides:
    if name in baselines:
      steps[name], params = baselines[name](*size)
      assert params == ours.count_params(), (name, params, ours.count_params())
    else:
      steps[name] = trainers[name]().train_step
  if 'fit' in sides:
    steps.update(likelihood_steps(b, t, z, FLAGS.num_mixtures))
  results = {name: [] for name in steps}
  for _ in range(FLAGS.rounds):
    for name, step in steps.items():
      results[name].append(rate(step, batch, FLAGS.steps))
  median = {k: float(np.median(v)) for k, v in results.items()}

  def ratio(mine, theirs):
    return float(np.median(np.divide(results[mine], results[theirs])))

  print(f'M training, batch {b} x {t} steps, z {z}, LSTM {FLAGS.hidden_size}, '
        f'{FLAGS.num_mixtures} mixtures, {ours.count_params():,} parameters each')
  fused = ' (fused LSTM)' if fused_lstm.enabled() else ''
  labels = {'fit': 'tfp MixtureSameFamily Keras model, train_on_batch',
            'step': 'same model and tfp loss, tf.function step',
            'ours': 'MDNRNN, Trainer' + fused,
            'layer': 'MDNRNN, Trainer, Keras LSTM layer',
            'bf16': 'MDNRNN, Trainer' + fused + ', bfloat16 products'}
  for name in sides:
    rounds = ', '.join(f'{r:,.0f}' for r in results[name])
    print(f'  {labels[name]:<50s} {median[name]:>8,.0f} sequence-steps/s  ({rounds})')
  for mine, theirs, what in (('ours', 'fit', 'ours vs the tfp Keras model'),
                             ('ours', 'step', 'ours vs the tfp loss in our step'),
                             ('layer', 'fit', 'the Keras LSTM layer vs the tfp Keras model'),
                             ('bf16', 'ours', 'bfloat16 vs float32 (seq.precision)')):
    if mine in results and theirs in results:
      print(f'  ratio, {what + ":":<45s} {ratio(mine, theirs):.2f}x')
  if 'fit' not in sides:
    return
  print(f'The mixture NLL alone, forward + gradient, [{b}, {t}, {z}, {FLAGS.num_mixtures}]:')
  for name in ('nll_tfp', 'nll_ours'):
    rounds = ', '.join(f'{r:,.0f}' for r in results[name])
    label = 'tfp MixtureSameFamily.log_prob' if name == 'nll_tfp' else 'wm.models.mdn.log_prob'
    print(f'  {label:<50s} {median[name]:>8,.0f} sequence-steps/s  ({rounds})')
  print(f'  ratio: {ratio("nll_ours", "nll_tfp"):.2f}x')


def parse(argv: list[str]) -> list[str]:
  """cli.parse_flags (a mistake is one line and exit 2), refusing --config overrides: this
  script's own flags set what it times."""
  remaining = cli.parse_flags(argv)
  if cli.overrides():
    given = ', '.join(f'--config.{name}' for name in cli.overrides())
    cli.fail(UserError(f'benchmark_seq.py reads no config: {given} would '
                       'change nothing; its flags (--help) set what it times'))
  return remaining


if __name__ == '__main__':
  app.run(main, flags_parser=parse)
