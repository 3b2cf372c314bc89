"""A few Horovod training steps of the seed's model on random data, to record a HOROVOD_TIMELINE.

    HOROVOD_TIMELINE=/tmp/t.json horovodrun -np 2 -H localhost:2 --gloo \
        python tests/programs/timeline_train.py [STEPS]

Each step: forward, backward, one DistributedGradientTape allreduce of the ~49.9 KB of gradients.
"""

import sys

import horovod.tensorflow as hvd
import numpy as np
import tensorflow as tf

hvd.init()  # Horovod: one process per rank
tf.config.threading.set_intra_op_parallelism_threads(1)
steps = int(sys.argv[1]) if len(sys.argv) > 1 else 30
rng = np.random.default_rng(hvd.rank())
x = tf.constant(rng.random((32, 60, 2), dtype=np.float32))
y = tf.constant(rng.random((32, 1), dtype=np.float32))
layers = tf.keras.layers
model = tf.keras.Sequential([tf.keras.Input((60, 2)), layers.LSTM(50), layers.Dropout(0.3),
                             layers.Dense(32, activation="relu"), layers.Dense(1, activation="relu")])
optimizer = tf.keras.optimizers.Adam(1e-3)


@tf.function
def train_step():
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean(tf.square(model(x, training=True) - y))
    tape = hvd.DistributedGradientTape(tape)  # Horovod: allreduce the gradients
    optimizer.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
    return loss


train_step()
hvd.broadcast_variables(model.variables, root_rank=0)  # Horovod: same start on every rank
for _ in range(steps):
    train_step()
if hvd.rank() == 0:
    print(f"{steps} steps on {hvd.size()} ranks; parameters: {model.count_params()}")
