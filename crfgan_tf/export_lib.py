"""SavedModel export with bounded-memory, slab-wise full-resolution generation.

At inference G2 runs on the whole G1 embedding (the reference does it in one shot, which
at 256^3 holds a 256^3 x 32-channel intermediate, 2 GiB per volume). Here G2 runs over the
embedding in axial slabs with a one-slice halo, in two passes because G2's GroupNorm
normalises over the whole volume:

  pass 1: per slab, G2's first conv on the slab plus halo; accumulate the GroupNorm sums
          over the slab's own (exact) slices;
  pass 2: per slab, the same conv, normalise with the whole-volume statistics, ReLU,
          up-sample, output conv, tanh; keep the slab's own slices.

The result equals the one-shot G2 (tests check it) while memory grows with the slab size,
not the volume.
"""

from __future__ import annotations

import json
import os
import statistics

import keras
import tensorflow as tf

from crfgan_tf import config as config_lib
from crfgan_tf import fileio, rundir

EXPORT_FORMAT = "crfgan-tf-generator/1"


def _head_layers(head: keras.Model) -> dict:
    names = ("block1_conv", "block1_gn", "out_conv")  # both convs up-sample and pad
    return {n: head.get_layer(n) for n in names}


def head_by_slabs(head: keras.Model, embedding: tf.Tensor, slab: int) -> tf.Tensor:
    """G2 on the whole embedding, `slab` embedding slices at a time; equals head(embedding).

    Args:
      head: the G2 model of `crfgan_tf.networks.build_head`.
      embedding: (batch, N, N, N, C).
      slab: embedding slices per slab (>= 1; the last slab may be shorter).

    Returns:
      (batch, 4N, 4N, 4N) float32 volume in [-1, 1].
    """
    layers = _head_layers(head)
    gn = layers["block1_gn"]
    n = embedding.shape[1]
    dtype = head.compute_dtype
    embedding = tf.cast(embedding, dtype)
    bounds = [(a, min(a + slab, n)) for a in range(0, n, slab)]

    def first_conv(a, b):
        lo, hi = max(a - 1, 0), min(b + 1, n)  # one embedding slice of halo each side
        x = layers["block1_conv"](embedding[:, lo:hi])
        return x, a - lo

    groups = gn.groups
    total = tf.zeros([tf.shape(embedding)[0], groups], tf.float64)
    total_sq = tf.zeros_like(total)
    count = 0
    for a, b in bounds:  # pass 1: whole-volume GroupNorm statistics
        x, off = first_conv(a, b)
        own = tf.cast(x[:, 2 * off: 2 * off + 2 * (b - a)], tf.float64)
        shape = tf.shape(own)
        grouped = tf.reshape(own, [shape[0], -1, groups, own.shape[-1] // groups])
        total += tf.reduce_sum(grouped, axis=[1, 3])
        total_sq += tf.reduce_sum(tf.square(grouped), axis=[1, 3])
        count += (b - a) * 2 * own.shape[2] * own.shape[3] * (own.shape[-1] // groups)
    mean = total / count
    var = tf.maximum(total_sq / count - tf.square(mean), 0.0)
    inv = tf.math.rsqrt(var + gn.epsilon)

    outputs = []
    for a, b in bounds:  # pass 2: normalise, finish G2, keep the slab's own slices
        x, off = first_conv(a, b)
        c = x.shape[-1]
        xg = tf.reshape(tf.cast(x, tf.float32), tf.concat([tf.shape(x)[:4], [groups, c // groups]], 0))
        m = tf.cast(mean, tf.float32)[:, None, None, None, :, None]
        s = tf.cast(inv, tf.float32)[:, None, None, None, :, None]
        x = tf.reshape((xg - m) * s, tf.shape(x))
        x = x * tf.cast(gn.gamma, tf.float32) + tf.cast(gn.beta, tf.float32)
        x = tf.nn.relu(tf.cast(x, dtype))
        x = layers["out_conv"](x)
        outputs.append(tf.tanh(tf.cast(x[:, 4 * off: 4 * off + 4 * (b - a)], tf.float32)))
    return tf.concat(outputs, axis=1)[..., 0]


class GeneratorModule(tf.Module):
    """What the SavedModel holds: G1, G2, metadata and the `generate` signature:
    `generate(z)` float32 [b, latent], or for a conditional model (num_classes > 0)
    `generate(z, label)` with label int32 [b]; both return {"volume": [b, S, S, S]}."""

    def __init__(self, trunk, head, latent_dim: int, img_size: int, slab: int, metadata: dict,
                 num_classes: int = 0):
        super().__init__(name="crfgan_generator")
        self.trunk, self.head = trunk, head
        self.slab = slab
        self.classes = num_classes
        self.num_classes = tf.Variable(num_classes, trainable=False, name="num_classes")
        self.latent_dim = tf.Variable(latent_dim, trainable=False, name="latent_dim")
        self.img_size = tf.Variable(img_size, trainable=False, name="img_size")
        self.window = tf.Variable(metadata["window"], dtype=tf.float32, trainable=False,
                                  name="window")
        self.output_spacing = tf.Variable(metadata["output_spacing"], dtype=tf.float32,
                                          trainable=False, name="output_spacing")
        self.metadata_json = tf.Variable(json.dumps(metadata), trainable=False,
                                         name="metadata_json")
        z_spec = tf.TensorSpec([None, latent_dim], tf.float32, name="z")
        if num_classes:
            self.generate = tf.function(
                self._generate_conditional,
                input_signature=[z_spec, tf.TensorSpec([None], tf.int32, name="label")])
        else:
            self.generate = tf.function(self._generate, input_signature=[z_spec])

    def _generate(self, z):
        embedding = self.trunk(z, training=False)
        return {"volume": head_by_slabs(self.head, embedding, self.slab)}

    def _generate_conditional(self, z, label):
        check = tf.debugging.assert_less(
            label, self.classes, message=f"label must be in 0..{self.classes - 1}")
        with tf.control_dependencies([check, tf.debugging.assert_non_negative(label)]):
            onehot = tf.one_hot(label, self.classes, dtype=z.dtype)
        return self._generate(tf.concat([z, onehot], axis=-1))


def training_metadata(config: config_lib.TrainConfig) -> dict:
    """Window, modality and a representative output spacing from the records' manifest."""
    meta = {"format": EXPORT_FORMAT, "model": config.model, "img_size": config.img_size,
            "latent_dim": config.latent_dim, "width": config.width,
            "window": [-1024.0, 600.0], "modality": "ct",
            "output_spacing": [1.0, 1.0, 1.0], "num_classes": config.num_classes}
    from crfgan_tf import data

    try:
        files = data.list_record_files(config.train_records)
    except FileNotFoundError:
        return dict(meta, metadata_source="defaults (training records not found)")
    manifest = os.path.join(os.path.dirname(files[0]), "manifest.json")
    first = next(iter(data.read_volumes(files[0])), None)
    if first is not None:
        meta.update(window=list(first.window), modality=first.modality,
                    output_spacing=list(first.output_spacing))
    if os.path.exists(manifest):
        with open(manifest) as f:
            manifest = json.load(f)
        if config.num_classes and manifest.get("classes"):
            names = manifest["classes"]["names"]
            meta["class_names"] = [names[k] if k < len(names) and names[k] else str(k)
                                   for k in range(config.num_classes)]
        cases = [c for c in manifest["cases"].values() if c.get("status") == "ok"]
        if cases:  # the median spacing of the training set: what a typical sample covers
            meta["output_spacing"] = [statistics.median(c["output_spacing"][k] for c in cases)
                                      for k in range(3)]
    meta["metadata_source"] = files[0]
    return meta


def load_generator(model_dir: str, step=None):
    """(config, trunk, head, checkpoint path) of a training run, weights restored.

    step: None (the latest), an int, or "best" (model_dir/best, from --eval_every)."""
    from crfgan_tf import train_lib
    from crfgan_tf.networks import build_head, build_trunk

    config = rundir.read_config(model_dir)
    if config is None:
        raise FileNotFoundError(f"{model_dir!r} has no {rundir.CONFIG_FILE}: not a training "
                                "run directory")
    ckpt_dir = os.path.join(model_dir, rundir.CHECKPOINT_DIR)
    if step == "best":
        best_dir = os.path.join(model_dir, rundir.BEST_DIR)
        ckpt = tf.train.latest_checkpoint(best_dir)
        if ckpt is None:
            raise FileNotFoundError(f"no best checkpoint in {best_dir!r}: it is written by "
                                    "in-training evaluation (--eval_every)")
    elif step is None:
        ckpt = tf.train.latest_checkpoint(ckpt_dir)
        if ckpt is None:
            raise FileNotFoundError(f"no checkpoint in {ckpt_dir!r}")
    else:
        ckpt = os.path.join(ckpt_dir, f"ckpt-{step}")
        if not tf.io.gfile.exists(ckpt + ".index"):
            raise FileNotFoundError(f"no checkpoint for step {step} ({ckpt})")
    train_lib.set_precision("float32")  # export and sample in float32 whatever trained
    # G1 and G2 are all that generation needs, for CRF-GAN and HA-GAN alike.
    trunk = build_trunk(config.img_size, config.latent_dim, config.width,
                        num_classes=config.num_classes)
    head = build_head(config.img_size, config.width)
    tf.train.Checkpoint(generator_trunk=trunk, generator_head=head).read(ckpt).expect_partial() \
        .assert_existing_objects_matched()
    return config, trunk, head, ckpt


def export(model_dir: str, export_dir: str, step=None, slab: int = 8,
           log=print) -> dict:
    """Writes a SavedModel with the `generate` signature; returns its metadata."""
    if slab < 1:
        raise ValueError(f"--slab must be >= 1, got {slab}")
    config, trunk, head, ckpt = load_generator(model_dir, step)
    if "://" not in export_dir:  # a local path: fail before the work, not after it
        fileio.ensure_output_dir(os.path.dirname(os.path.abspath(export_dir)), "--export_dir")
        if os.path.exists(export_dir) and not os.path.isdir(export_dir):
            raise fileio.OutputError(f"--export_dir {export_dir!r} is a file")
    metadata = training_metadata(config)
    metadata.update(checkpoint=ckpt, slab=slab)
    module = GeneratorModule(trunk, head, config.latent_dim, config.img_size, slab, metadata,
                             config.num_classes)
    tmp = export_dir.rstrip("/") + ".tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    tf.saved_model.save(module, tmp, signatures={"generate": module.generate})
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    tf.io.gfile.rename(tmp, export_dir)  # a half-written export never has the final name
    classes = f", {config.num_classes} classes" if config.num_classes else ""
    log(f"export: {ckpt} -> {export_dir} ({config.img_size}^3, latent {config.latent_dim}"
        f"{classes}, slab {slab})")
    return metadata
