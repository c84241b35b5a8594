"""What a training run shows in TensorBoard and on the console: the progress line and the
scalars every `log_every` steps, and the image summaries every `image_every` steps."""

from __future__ import annotations

import time

import numpy as np
import tensorflow as tf

from crfgan_tf.core import geometry, intensity
from crfgan_tf.data import records
from crfgan_tf.models import SubVolumeGAN
from crfgan_tf.run import config as config_lib
from crfgan_tf.utils import runtime
from crfgan_tf.utils.progress import Progress


class Reporter:
    """Every `log_every` steps: the progress line and the TensorBoard scalars."""

    def __init__(self, config, model: SubVolumeGAN, writer, step: int, log):
        self.model, self.writer = model, writer
        self.progress = Progress(config.train_steps, log, "step", "it", start=step)
        self.learning_rates = {phase: getattr(config, field)
                               for phase, field in type(model).LEARNING_RATES.items()}
        self.window_t0, self.window_step = time.time(), step

    def report(self, step: int, metrics: dict) -> None:
        rate = (step - self.window_step) / max(time.time() - self.window_t0, 1e-9)
        self.window_t0, self.window_step = time.time(), step
        shown = list(self.model.LOSS_PHASE) + [k for k in ("d_class_loss", "g_class_loss")
                                                if k in metrics]
        self.progress.report(step, " ".join(f"{k} {metrics[k]:.4f}" for k in shown))
        with self.writer.as_default(step=step):
            for k, v in metrics.items():
                tf.summary.scalar(k, v)
            for phase, lr in self.learning_rates.items():
                tf.summary.scalar(f"learning_rate/{phase}", lr)
            tf.summary.scalar("iterations_per_sec", rate)
            if self.model.augment_p is not None:
                tf.summary.scalar("augment_p", self.model.augment_p)
            tf.summary.scalar("peak_memory_bytes", runtime.peak_memory_bytes())


def write_images(model: SubVolumeGAN, writer, step: int, config: config_lib.TrainConfig) -> None:
    """Mid-slices (axial, coronal, sagittal) of a real crop, a generated crop and a whole
    generated volume (G2 slab by slab, as export runs it: bounded memory), from a fixed z
    so that images are comparable across steps."""
    volume = records.parse_volume(next(iter(records.raw_record_dataset(
        records.list_record_files(config.train_records)).take(1))), config.img_size)
    real_crop = volume[: geometry.crop_depth(config.img_size)].numpy()
    z = tf.random.stateless_normal([1, config.latent_dim], seed=[config.seed, 7])
    label = tf.constant([config.num_classes - 1]) if config.num_classes else None  # last class
    trunk, head = model.generation_networks()  # G's moving average, where kept
    embedding = trunk(model.trunk_input(z, label), training=False)
    fake_crop = head(embedding[:, : model.slab_depth], training=False)
    whole = head.by_slabs(embedding, max(1, model.slab_depth))
    with writer.as_default(step=step):
        for name, vol in (("real_crop", real_crop),
                          ("generated_crop", np.asarray(fake_crop)[0, ..., 0]),
                          ("generated_volume", np.asarray(whole)[0])):
            for view, img in intensity.mid_slices(np.asarray(vol, np.float32)).items():
                tf.summary.image(f"{name}/{view}",
                                 intensity.display(img, intensity.UNIT_WINDOW)[None, ..., None])
