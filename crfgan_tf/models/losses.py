"""Losses as small pure functions, distribution-correct.

Each returns the per-replica share of the global-batch mean: the sum of per-example losses
divided by the global batch size. Summed over replicas (what tf.distribute's optimizers do
with gradients) this is the mean over the global batch, so one replica and N replicas
give the same update (tensorflow/models `base_task.py` makes the same point).
"""

from __future__ import annotations

import tensorflow as tf


def per_replica_mean(per_example: tf.Tensor, global_batch_size: int) -> tf.Tensor:
    """sum(per_example) / global_batch_size, in float32."""
    return tf.reduce_sum(tf.cast(per_example, tf.float32)) / float(global_batch_size)


def bce_with_logits(logits: tf.Tensor, target: float) -> tf.Tensor:
    """Per-example binary cross-entropy of logits (batch, 1) against a constant label."""
    logits = tf.cast(tf.reshape(logits, [-1]), tf.float32)
    return tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.fill(tf.shape(logits), target),
                                                   logits=logits)


def discriminator_loss(real_logits, fake_logits, global_batch_size):
    """BCE(D(x_crop), 1) + BCE(D(G(z)_crop), 0)."""
    return (per_replica_mean(bce_with_logits(real_logits, 1.0), global_batch_size)
            + per_replica_mean(bce_with_logits(fake_logits, 0.0), global_batch_size))


def crf_weight(step, start: float = 0.5, decay_steps: int = 60000):
    """w = max(start - start * step / decay_steps, 0): the CRF's share of G's logit."""
    step = tf.cast(step, tf.float32)
    return tf.maximum(start - start * step / float(decay_steps), 0.0)


def r1_penalty(gradients, gamma: float, global_batch_size):
    """(gamma / 2) * the per-replica mean over examples of ||grad||^2, the squared norm of
    D's real-logit gradient summed over every input in `gradients` (a list of (batch, ...)
    tensors): R1 (Mescheder et al., "Which training methods for GANs do actually
    converge?", 2018), as StyleGAN2-ADA applies it on small data."""
    squared = 0.0
    for g in gradients:
        g = tf.cast(g, tf.float32)
        squared += tf.reduce_sum(tf.square(g), axis=list(range(1, len(g.shape))))
    return 0.5 * gamma * per_replica_mean(squared, global_batch_size)


def generator_loss(fake_logits, crf_logits, weight, global_batch_size):
    """BCE(w * CRF(G1(z), D(fake)) + (1 - w) * D(fake), 1)."""
    mixed = weight * tf.cast(crf_logits, tf.float32) + (1.0 - weight) * tf.cast(fake_logits, tf.float32)
    return per_replica_mean(bce_with_logits(mixed, 1.0), global_batch_size)


def crf_loss(crf_fake_logits, crf_real_logits, global_batch_size):
    """BCE(CRF(G1(z), D(fake)), 0) + BCE(CRF(hE(x), D(x_crop)), 1)."""
    return (per_replica_mean(bce_with_logits(crf_fake_logits, 0.0), global_batch_size)
            + per_replica_mean(bce_with_logits(crf_real_logits, 1.0), global_batch_size))


def reconstruction_loss(reconstruction, target, global_batch_size):
    """L1: per-example mean |G2(hE(x_crop)) - x_crop|, averaged over the global batch."""
    diff = tf.abs(tf.cast(reconstruction, tf.float32) - tf.cast(target, tf.float32))
    per_example = tf.reduce_mean(tf.reshape(diff, [tf.shape(diff)[0], -1]), axis=1)
    return per_replica_mean(per_example, global_batch_size)


def class_loss(class_logits, labels, global_batch_size):
    """The auxiliary classifier's loss: per-example softmax cross-entropy of the class
    logits (batch, N) against integer labels (batch,) (PyTorch's F.cross_entropy)."""
    per_example = tf.nn.sparse_softmax_cross_entropy_with_logits(
        labels=tf.cast(tf.reshape(labels, [-1]), tf.int32),
        logits=tf.cast(class_logits, tf.float32))
    return per_replica_mean(per_example, global_batch_size)
