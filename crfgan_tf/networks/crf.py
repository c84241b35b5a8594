"""The CRF over the embedding's axial slices (replaces HA-GAN's low-resolution GAN)."""

from __future__ import annotations

import keras
from keras import ops

NODE_MODES = ("slices", "channels")


class SliceCRF(keras.layers.Layer):
    """Mean-field CRF whose nodes are the N axial slices of an embedding.

    Pairwise potential psi_ij = cos(f_i, f_j) * W_sym[i, j], with f_i the flattened i-th
    slice, cos computed with an epsilon (an all-zero slice gives 0, not NaN), and
    W_sym = (W + W^T) / 2; W is N x N and zero at start. Every node gets the same unary,
    the discriminator's logit. `iterations` mean-field updates
        q_i <- unary + sum_j (2 sigmoid(q_j) - 1) psi_ij
    then the output is the mean of q over nodes. With W = 0 the output is the unary.

    Args:
      num_nodes: N = S / 4, the embedding side.
      iterations: mean-field iterations (10).
      nodes: "slices" (the paper: node i = axial slice i) or "channels" (the reference
        code's flattening without moving the depth axis: node i = a group of channels
        over the whole volume), for comparison.
      epsilon: added to the feature norms.

    Call args:
      embedding: (batch, N, N, N, C) channels-last.
      unary: (batch, 1) logits.

    Returns:
      (batch, 1) float32 logits.
    """

    def __init__(self, num_nodes, iterations=10, nodes="slices", epsilon=1e-8, **kwargs):
        kwargs.setdefault("dtype", "float32")  # numerically sensitive: always float32
        super().__init__(**kwargs)
        if nodes not in NODE_MODES:
            raise ValueError(f"nodes must be one of {NODE_MODES}, got {nodes!r}")
        self.num_nodes = num_nodes
        self.iterations = iterations
        self.nodes = nodes
        self.epsilon = epsilon

    def build(self, *args, **kwargs):
        self.w = self.add_weight(name="w", shape=(self.num_nodes, self.num_nodes),
                                 initializer="zeros", dtype="float32")

    def symmetric_weights(self):
        return (self.w + ops.transpose(self.w)) / 2.0

    def node_features(self, embedding):
        """(batch, N, features) node features of an embedding."""
        emb = ops.cast(embedding, "float32")
        if self.nodes == "channels":
            emb = ops.transpose(emb, (0, 4, 1, 2, 3))  # channels-first, then flatten
        return ops.reshape(emb, (ops.shape(emb)[0], self.num_nodes, -1))

    def call(self, embedding, unary):
        feats = self.node_features(embedding)
        norms = ops.sqrt(ops.sum(ops.square(feats), axis=-1, keepdims=True))
        unit = feats / (norms + self.epsilon)
        similarity = ops.matmul(unit, ops.transpose(unit, (0, 2, 1)))  # (batch, N, N)
        psi = similarity * self.symmetric_weights()[None]
        unary = ops.cast(unary, "float32")  # (batch, 1), broadcast to every node
        q = ops.repeat(unary, self.num_nodes, axis=1)
        for _ in range(self.iterations):
            message = ops.squeeze(ops.matmul(psi, (2.0 * ops.sigmoid(q) - 1.0)[..., None]), -1)
            q = unary + message
        return ops.mean(q, axis=1, keepdims=True)

    def compute_output_shape(self, embedding_shape, unary_shape=None):
        return (embedding_shape[0], 1)

    def get_config(self):
        config = super().get_config()
        config.update(num_nodes=self.num_nodes, iterations=self.iterations, nodes=self.nodes,
                      epsilon=self.epsilon)
        return config
