"""The export of a run's checkpoint: G1, G2 and the encoder as a SavedModel with the
`generate` signature, which runs G2 slab by slab in bounded memory
(networks.generator.Head.by_slabs), the `encode` and `reconstruct` signatures of real
volumes, and the metadata generation needs (from the run directory's data.json); beside
it the same networks as a weights package (generation.package: data only, safe to share)
and the model card (generation.model_card). `FORMATS` says which of the two are written;
the card always is."""

from __future__ import annotations

import json
import os

import keras
import tensorflow as tf

from crfgan_tf.core import intensity
from crfgan_tf.generation import model_card, package
from crfgan_tf.models import options
from crfgan_tf.run import config as config_lib
from crfgan_tf.run import factory, rundir
from crfgan_tf.utils import fileio

EXPORT_FORMAT = "crfgan-tf-generator/1"
SIGNATURES = ("generate", "encode", "reconstruct")
# what an export directory holds besides the model card: "both" (the SavedModel and the
# weights package), "weights" (the package alone), "savedmodel" (the SavedModel alone)
FORMATS = ("both", "weights", "savedmodel")


def pooled_features(embedding):
    """The feature vector of an embedding (batch, n, n, n, C): per channel the mean and then
    the standard deviation over the n^3 grid, (batch, 2C)."""
    mean, var = tf.nn.moments(embedding, axes=[1, 2, 3])
    return tf.concat([mean, tf.sqrt(var)], axis=-1)


class GeneratorModule(tf.Module):
    """What the SavedModel holds: G1, G2, the encoder hE (and HA-GAN's sub-encoder), metadata
    and three signatures:
      - `generate(z)` float32 [b, latent], or for a conditional model (num_classes > 0)
        `generate(z, label)` with label int32 [b]; both return {"volume": [b, S, S, S]};
      - `encode(volume)`, volume float32 [b, S, S, S] in [-1, 1]: {"embedding": hE(volume)
        [b, S/4, S/4, S/4, C], "features": pooled_features [b, 2C]} and, for HA-GAN, "latent":
        its sub-encoder's z [b, latent];
      - `reconstruct(volume)`: {"volume": G2(hE(volume)) [b, S, S, S]}, G2 slab by slab."""

    def __init__(self, trunk, head, latent_dim: int, img_size: int, slab: int, metadata: dict,
                 num_classes: int = 0, encoder=None, sub_encoder=None):
        super().__init__(name="crfgan_generator")
        self.trunk, self.head = trunk, head
        self.encoder, self.sub_encoder = encoder, sub_encoder
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
        if encoder is not None:
            volume_spec = [tf.TensorSpec([None, img_size, img_size, img_size], tf.float32,
                                         name="volume")]
            self.encode = tf.function(self._encode, input_signature=volume_spec)
            self.reconstruct = tf.function(self._reconstruct, input_signature=volume_spec)

    def _encode(self, volume):
        embedding = tf.cast(self.encoder(volume[..., None], training=False), tf.float32)
        out = {"embedding": embedding, "features": pooled_features(embedding)}
        if self.sub_encoder is not None:
            out["latent"] = tf.cast(self.sub_encoder(embedding, training=False), tf.float32)
        return out

    def _reconstruct(self, volume):
        return {"volume": self.head.by_slabs(self.encoder(volume[..., None], training=False),
                                             self.slab)}

    def _generate(self, z):
        embedding = self.trunk(z, training=False)
        return {"volume": self.head.by_slabs(embedding, self.slab)}

    def _generate_conditional(self, z, label):
        check = tf.debugging.assert_less(
            label, self.classes, message=f"label must be in 0..{self.classes - 1}")
        with tf.control_dependencies([check, tf.debugging.assert_non_negative(label)]):
            onehot = tf.one_hot(label, self.classes, dtype=z.dtype)
        return self._generate(tf.concat([z, onehot], axis=-1))


def training_metadata(config: config_lib.TrainConfig, model_dir: str, log=print) -> dict:
    """The SavedModel's metadata: the architecture, and the training data's window,
    modality, output spacing, class names and case digests (manifest.case_digest: a shared
    model never carries the case ids) from the run's data.json. A run started
    before data.json existed has them read from its records (as they are now), and
    without those the CT defaults are used, with a warning naming what is missing."""
    meta = {"format": EXPORT_FORMAT, "model": config.model, "img_size": config.img_size,
            "embedding_factor": config.embedding_factor, "latent_dim": config.latent_dim,
            "width": config.width, "num_classes": config.num_classes,
            "head_width": config.head_width}
    data = rundir.read_data_metadata(model_dir)
    source = os.path.join(model_dir, rundir.DATA_FILE)
    if data is None:
        from crfgan_tf.data import records

        try:
            data = records.records_metadata(records.list_record_files(config.train_records),
                                            config.num_classes)
            source = data["records"]
        except (FileNotFoundError, records.RecordsError):
            data = {"window": list(intensity.CT_WINDOW), "modality": "ct",
                    "output_spacing": [1.0, 1.0, 1.0]}
            source = "defaults"
            log(f"export: WARNING: {model_dir} has no {rundir.DATA_FILE} (a run started before "
                f"it was written) and its training records ({config.train_records}) are gone: "
                f"the SavedModel gets the CT window {list(intensity.CT_WINDOW)} and 1 mm spacing")
    meta.update(window=data["window"], modality=data["modality"],
                output_spacing=data["output_spacing"],
                metadata_source=source if source == "defaults" else _within(source, model_dir))
    if config.num_classes:
        meta["class_names"] = data.get("class_names") or [str(k) for k in range(config.num_classes)]
    if "train_case_ids" in data:  # runs started before it was recorded have none
        # digests, not the ids (file stems may name a patient): manifest.case_digest
        from crfgan_tf.data import manifest

        meta["train_case_digests"] = sorted({manifest.case_digest(c)
                                             for c in data["train_case_ids"]})
    return meta


def _within(path: str, model_dir: str) -> str:
    """`path` relative to the run directory when inside it, else its file name: what an
    export (which is shared) says of a file on the exporter's machine."""
    rel = os.path.relpath(os.path.abspath(path), os.path.abspath(model_dir))
    return rel if not rel.startswith(os.pardir) else os.path.basename(path)


def load_generator(model_dir: str, step=None, encoders: bool = False, ema: bool = True):
    """(config, trunk, head, checkpoint path) of a training run, weights restored; with
    `encoders`, (config, trunk, head, encoder, sub-encoder or None, checkpoint path).

    step: None (the latest), an int, or "best" (model_dir/best, from `eval_every`).
    ema: a run trained with `ema_decay` gives G's moving average (what its evaluations
    measured); False: the trained weights themselves."""
    config = rundir.read_config(model_dir)
    if config is None:
        raise FileNotFoundError(f"{model_dir!r} has no {rundir.CONFIG_FILE}: not a training "
                                "run directory")
    ckpt = rundir.checkpoint_path(model_dir, step)
    keras.mixed_precision.set_global_policy("float32")  # generate in float32 whatever trained
    # G1 and G2 are all that generation needs, for CRF-GAN and HA-GAN alike.
    parts = factory.build_networks(config, factory.GENERATION_KEYS
                                   + (factory.ENCODING_KEYS if encoders else ()))
    keys = dict(parts)
    if ema and config.ema_decay:  # the moving average, checkpointed beside G1 and G2
        for key in factory.GENERATION_KEYS:
            keys[key + options.EMA_SUFFIX] = keys.pop(key)
    tf.train.Checkpoint(**keys).read(ckpt).expect_partial().assert_existing_objects_matched()
    trunk, head = parts[options.TRUNK_KEY], parts[options.HEAD_KEY]
    if encoders:
        return (config, trunk, head, parts[options.ENCODER_KEY],
                parts.get(options.SUB_ENCODER_KEY), ckpt)
    return config, trunk, head, ckpt


def default_step(model_dir: str, step=None, log=print):
    """The step crfgan-export takes: `step` as given (an int or "best"); "latest" -> None
    (the latest checkpoint); None -> "best" where the run kept a best checkpoint
    (in-training evaluation), else None. Logs the choice."""
    if step == "latest":
        return None
    if step is not None:
        return step
    best_file = os.path.join(model_dir, rundir.BEST_FILE)
    if not os.path.exists(best_file) or not tf.train.latest_checkpoint(
            os.path.join(model_dir, rundir.BEST_DIR)):
        return None
    with open(best_file) as f:
        best = json.load(f)
    log(f"export: the run's best step by its evaluation, {best['step']} ({best['metric']} "
        f"{best['value']:.4g}); `--step=latest` exports the last checkpoint")
    return "best"


def export(model_dir: str, export_dir: str, step=None, slab: int = 8,
           log=print, fmt: str = "both", license_text: str = "",
           memorization_report: str = "", ema: bool = True) -> dict:
    """Writes the export of a checkpoint (a SavedModel with the `generate` signature and/or
    a weights package, by `fmt`, and the model card); returns its metadata. The directory
    is built beside `export_dir` and renamed into place whole.

    step: None (the run's best step where in-training evaluation kept one, else the
    latest: default_step), "best", "latest" or an int. ema: G's moving average where the
    run kept one (load_generator)."""
    from crfgan_tf import __version__

    step = default_step(model_dir, step, log)
    if slab < 1:
        raise ValueError(f"`slab` must be >= 1, got {slab}")
    if fmt not in FORMATS:
        raise ValueError(f"`format` must be one of {FORMATS}, got {fmt!r}")
    if memorization_report and not os.path.isfile(memorization_report):
        raise FileNotFoundError(f"`memorization_report` {memorization_report!r} is not a file "
                                "(crfgan-memorization writes memorization.json)")
    config, trunk, head, encoder, sub_encoder, ckpt = load_generator(model_dir, step,
                                                                     encoders=True, ema=ema)
    if "://" not in export_dir:  # a local path: fail before the work, not after it
        fileio.ensure_output_dir(os.path.dirname(os.path.abspath(export_dir)), "`export_dir`")
        if os.path.exists(export_dir) and not os.path.isdir(export_dir):
            raise fileio.OutputError(f"`export_dir` {export_dir!r} is a file")
    metadata = training_metadata(config, model_dir, log)
    # the checkpoint as the run directory names it ("best/ckpt-N"): an export is shared,
    # and a path on this machine may hold a user's or a patient's name
    metadata.update(checkpoint=_within(ckpt, model_dir), slab=slab)
    if config.ema_decay:  # which of the run's two generators this is
        metadata["generator_weights"] = "moving average" if ema else "trained"
    networks = {options.TRUNK_KEY: trunk, options.HEAD_KEY: head,
                options.ENCODER_KEY: encoder, options.SUB_ENCODER_KEY: sub_encoder}
    tmp = export_dir.rstrip("/") + ".tmp"
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    if fmt in ("both", "savedmodel"):
        module = GeneratorModule(trunk, head, config.latent_dim, config.img_size, slab,
                                 metadata, config.num_classes, encoder, sub_encoder)
        tf.saved_model.save(module, tmp, signatures={name: getattr(module, name)
                                                     for name in SIGNATURES})
    else:
        tf.io.gfile.makedirs(tmp)
    manifest_sha = None
    if fmt in ("both", "weights"):
        package.write(tmp, config, networks, metadata, __version__)
        manifest_sha = fileio.sha256(os.path.join(tmp, package.PACKAGE_FILE))
    parameters = {k: int(sum(int(v.numpy().size) for v in n.weights))
                  for k, n in networks.items() if n is not None}
    card = model_card.build(config, model_dir, metadata, rundir.checkpoint_step(ckpt), parameters,
                            __version__, license_text, memorization_report, manifest_sha)
    model_card.write(tmp, card)
    if tf.io.gfile.exists(export_dir):
        tf.io.gfile.rmtree(export_dir)
    tf.io.gfile.rename(tmp, export_dir)  # a half-written export never has the final name
    classes = f", {config.num_classes} classes" if config.num_classes else ""
    kinds = {"both": "SavedModel + weights package", "weights": "weights package",
             "savedmodel": "SavedModel"}[fmt]
    log(f"export: {ckpt} -> {export_dir} ({kinds} and model card {card['id']}; "
        f"{config.img_size}^3, latent {config.latent_dim}{classes}, slab {slab})")
    return metadata
