"""A new run's initial weights from another model (`init_from`): fine-tuning.

SOURCE is one of
  - a run directory: its latest checkpoint, `DIR@STEP` that step's, `DIR@best` the best
    in-training evaluation's; it holds every network (G1, G2, D, hE, the CRF, HA-GAN's
    low-resolution networks). A run written by crfgan-import-reference is one: the
    reference's published checkpoints are fine-tuned this way;
  - an export directory: its weights package (generation.package, checksums checked) or,
    without one, its SavedModel's variables, read as data (its graph is not loaded);
    either holds G1, G2 and the encoders only.

The networks taken are chosen by `init_networks` (groups of models.options.INIT_GROUPS,
or "all": every network the source holds); the others start from the seed, and every
optimizer starts fresh, at step 0. The architecture (generation.package.ARCHITECTURE_FIELDS)
must be the source's; the data, learning rates, augmentation and schedule may differ. A
mismatch names the field and flag, or, for a tensor of another shape, the tensor too.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Optional

import tensorflow as tf

from crfgan_tf.generation import package
from crfgan_tf.models import options
from crfgan_tf.run import config as config_lib
from crfgan_tf.run import rundir
from crfgan_tf.training.checkpointing import architecture_flag, shape_mismatch
from crfgan_tf.utils import fileio

KINDS = ("run", "package", "savedmodel")
# every network key of either model, in the models' order
_ALL_NETWORKS = tuple(k for group in options.INIT_GROUPS.values() for k in group)
# the GeneratorModule attributes that hold the exported networks in a SavedModel
_SAVEDMODEL_ATTRIBUTES = {options.TRUNK_KEY: "trunk", options.HEAD_KEY: "head",
                          options.ENCODER_KEY: "encoder", options.SUB_ENCODER_KEY: "sub_encoder"}


@dataclasses.dataclass
class Source:
    """A resolved `init_from`."""

    kind: str  # one of KINDS
    path: str  # the run or export directory
    step: Optional[int]  # the checkpoint's step (an export's: the step it was exported at)
    location: str  # what is read: the checkpoint prefix, or the export directory
    architecture: dict  # generation.package.ARCHITECTURE_FIELDS of the source
    networks: tuple  # checkpoint keys of the networks it holds
    sha256: str  # of the checkpoint's index, package.json, or the SavedModel's index

    def record(self, taken) -> dict:
        """config.json's init_source (and the model card's)."""
        return {"kind": self.kind, "path": os.path.abspath(self.path), "step": self.step,
                "read": os.path.abspath(self.location), "sha256": self.sha256,
                "networks": list(taken)}


class InitError(rundir.RunDirError):
    """An `init_from` that cannot be read or does not fit; nothing was written."""


def _top_level(prefix: str) -> set:
    """The names of the objects at the root of a checkpoint's object graph (a network's
    variables may be stored under another path, such as an optimizer's list, so the
    variable names do not tell)."""
    from tensorflow.core.protobuf import trackable_object_graph_pb2

    graph = trackable_object_graph_pb2.TrackableObjectGraph()
    graph.ParseFromString(tf.train.load_checkpoint(prefix).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH"))
    return {child.local_name for child in graph.nodes[0].children}


def _split(spec: str):
    """(path, step) of SOURCE: DIR, DIR@STEP or DIR@best."""
    if os.path.exists(spec) or "@" not in spec:
        return spec, None
    path, step = spec.rsplit("@", 1)
    if step == "best":
        return path, "best"
    if step.isdigit():
        return path, int(step)
    raise InitError(f"`init_from` {spec!r}: after '@' comes a step number or 'best', got {step!r}")


def resolve(spec: str) -> Source:
    """The Source `spec` names (see the module docstring).

    Raises:
      InitError: nothing readable there (says what was expected).
    """
    path, step = _split(spec)
    if not os.path.isdir(path):
        raise InitError(f"`init_from` {path!r} is not a directory (a run directory, or an "
                        "export directory of crfgan-export)")
    if os.path.isfile(os.path.join(path, rundir.CONFIG_FILE)):
        return _run_source(path, step)
    if step is not None:
        raise InitError(f"`init_from` {spec!r}: '@{step}' selects a checkpoint of a run "
                        f"directory; {path!r} is an export (it holds one step)")
    if package.is_package(path):
        return _package_source(path)
    if os.path.isfile(os.path.join(path, "saved_model.pb")):
        return _savedmodel_source(path)
    raise InitError(f"`init_from` {path!r} holds no {rundir.CONFIG_FILE} (a run directory), "
                    f"{package.PACKAGE_FILE} (a weights package) or saved_model.pb (a "
                    "SavedModel)")


def _run_source(path: str, step) -> Source:
    config = rundir.read_config(path)
    try:
        ckpt = rundir.checkpoint_path(path, step)
    except FileNotFoundError as err:
        raise InitError(f"`init_from` {path!r}: {err}") from None
    held = _top_level(ckpt)
    return Source("run", path, rundir.checkpoint_step(ckpt), ckpt, package.architecture(config),
                  tuple(k for k in _ALL_NETWORKS if k in held), fileio.sha256(ckpt + ".index"))


def _package_source(path: str) -> Source:
    try:
        manifest = package.read_manifest(path)
        package.verify(path, manifest)
        arch = package.config_of(manifest)
    except package.PackageError as err:
        raise InitError(f"`init_from`: {err}") from None
    step = rundir.checkpoint_step(manifest["metadata"].get("checkpoint", ""))
    return Source("package", path, step, path, package.architecture(arch),
                  tuple(manifest["networks"]),
                  fileio.sha256(os.path.join(path, package.PACKAGE_FILE)))


def _savedmodel_source(path: str) -> Source:
    prefix = os.path.join(path, "variables", "variables")
    try:
        meta = json.loads(tf.train.load_variable(
            prefix, "metadata_json/.ATTRIBUTES/VARIABLE_VALUE").decode())
    except Exception as err:  # noqa: BLE001 - not a checkpoint, or no metadata in it
        raise InitError(f"`init_from` {path!r} is a SavedModel without crfgan-tf metadata "
                        f"({str(err).splitlines()[0][:200]}); export the run with crfgan-export")
    held = _top_level(prefix)
    networks = tuple(k for k, attr in _SAVEDMODEL_ATTRIBUTES.items() if attr in held)
    return Source("savedmodel", path, rundir.checkpoint_step(meta.get("checkpoint", "")), prefix,
                  {k: meta.get(k, package.ARCHITECTURE_DEFAULTS.get(k))
                   for k in package.ARCHITECTURE_FIELDS}, networks,
                  fileio.sha256(prefix + ".index"))


def check_architecture(source: Source, config: config_lib.TrainConfig) -> None:
    """Raises InitError naming every architecture field (flag) where `config` differs."""
    here = package.architecture(config)
    diff = {k: (source.architecture.get(k), here[k]) for k in here
            if source.architecture.get(k) != here[k]}
    if diff:
        fields = ", ".join(f"`{k}`: {a!r} there, {b!r} here" for k, (a, b) in sorted(diff.items()))
        raise InitError(
            f"`init_from` {source.path!r} holds networks of another architecture ({fields}). "
            "Set " + ", ".join(f"`{k}={a}`" for k, (a, _) in sorted(diff.items()))
            + ": the architecture must be the source's (data, learning rates, augmentation "
            "and schedule may differ). Nothing was written.")


def selected(source: Source, config: config_lib.TrainConfig, model_keys) -> tuple:
    """The checkpoint keys to take: the groups of `init_networks` that the model has.

    Raises:
      InitError: a group named explicitly is not in the source (an export holds no
        discriminator or CRF).
    """
    explicit = config.init_networks.strip() != "all"
    keys = []
    for group in config.init_groups():
        wanted = [k for k in options.INIT_GROUPS[group] if k in model_keys]
        missing = [k for k in wanted if k not in source.networks]
        if missing and explicit:
            raise InitError(
                f"`init_networks`: `init_from` {source.path!r} ({source.kind}) holds no "
                f"{', '.join(missing)} (it holds {', '.join(source.networks)}); an export "
                "holds the generator and the encoders only: name those groups, or give a "
                "run directory")
        keys += [k for k in wanted if k in source.networks]
    return tuple(keys)


def apply(source: Source, modules: dict, keys: tuple) -> None:
    """Copies the networks `keys` of `source` into `modules` ({key: network} of the model).

    Raises:
      InitError: a tensor of another shape (named, with the flag most likely to explain it),
        or a source file that does not fit.
    """
    targets = {k: modules[k] for k in keys}
    if source.kind == "package":
        try:
            manifest = package.read_manifest(source.path)
            package.load_into(source.path, manifest, targets)
        except package.PackageError as err:
            raise InitError(f"`init_from`: {err}") from None
        return
    names = targets if source.kind == "run" else \
        {_SAVEDMODEL_ATTRIBUTES[k]: v for k, v in targets.items()}
    try:
        tf.train.Checkpoint(**names).read(source.location).expect_partial() \
            .assert_existing_objects_matched()
    except Exception as err:  # noqa: BLE001 - TensorFlow reports a mismatch in several types
        mismatch = shape_mismatch(err)
        if mismatch is None:
            raise InitError(f"`init_from` {source.location}: cannot be read into the networks "
                            f"{', '.join(keys)}: {str(err).splitlines()[0][:300]}") from None
        name, stored, built = mismatch
        raise InitError(f"`init_from` {source.location}: tensor {name} is {stored} there and "
                        f"{built} in the networks these settings build; check "
                        f"{architecture_flag(name, stored, built)}. Nothing was written.") from None
