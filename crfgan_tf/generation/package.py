"""The weights package: a trained generator as data only, safe to share and to load.

A SavedModel is a program: loading one runs its graph (TensorFlow's security guidance
says to treat it as code). A package holds only arrays and JSON, and is loaded by
rebuilding the networks from this project's code and copying the arrays into them:

  <dir>/package.json                 format, crfgan-tf version, the architecture (the
                                     TrainConfig fields that decide the networks), the
                                     export metadata, and per network its file, sha256,
                                     size, variables and parameters
  <dir>/<network key>.weights.h5     Keras 3's weights file of each network (HDF5 arrays
                                     under the network's layers; no code, no pickle)

Keras's `.weights.h5` rather than safetensors: it is what `keras.Model.save_weights`
writes and `load_weights` reads, so a package's networks load into the networks that
`crfgan_tf.build_networks(config)` builds with Keras alone, and it needs no dependency
beyond h5py, which Keras already brings. Reading checks, in order: the format, every
file's sha256 against package.json, the architecture fields, then each variable's shape
and count; any mismatch refuses the package, naming the file (and the tensor).

The checksums detect a damaged or altered file; they are no signature: whoever can
change a file can change package.json too. Compare package.json's sha256 with the one
its publisher states.
"""

from __future__ import annotations

import json
import os
from typing import Optional, Sequence

from crfgan_tf.run import config as config_lib
from crfgan_tf.run import factory
from crfgan_tf.utils import fileio

PACKAGE_FILE = "package.json"
PACKAGE_FORMAT = "crfgan-tf-weights/1"
WEIGHTS_SUFFIX = ".weights.h5"
# the TrainConfig fields that decide the networks' variables; a package holds these and
# a run initialised from it must have the same
ARCHITECTURE_FIELDS = ("model", "img_size", "embedding_factor", "latent_dim", "width",
                       "num_classes", "head_width")
# fields added after packages were first written, with the value those packages meant
ARCHITECTURE_DEFAULTS = {"head_width": 0.0}


class PackageError(ValueError):
    """A weights package that is missing, damaged, altered or does not fit; names the file."""


def is_package(path: str) -> bool:
    return os.path.isfile(os.path.join(path, PACKAGE_FILE))


def architecture(config: config_lib.TrainConfig) -> dict:
    return {k: getattr(config, k) for k in ARCHITECTURE_FIELDS}


def write(directory: str, config: config_lib.TrainConfig, networks: dict, metadata: dict,
          version: str) -> dict:
    """Writes the package of `networks` ({checkpoint key: keras.Model}) into `directory`
    (which exists): each network's weights file, then package.json last, each atomically,
    so a directory with package.json holds a whole package. Returns package.json's dict."""
    entries = {}
    for key, network in networks.items():
        if network is None:
            continue
        name = key + WEIGHTS_SUFFIX
        path = os.path.join(directory, name)
        with fileio.atomic_output(path, WEIGHTS_SUFFIX) as tmp:
            network.save_weights(tmp)
        entries[key] = {"file": name, "sha256": fileio.sha256(path), "bytes": os.path.getsize(path),
                        "variables": len(network.weights),
                        "parameters": int(sum(int(v.numpy().size) for v in network.weights))}
    manifest = {"format": PACKAGE_FORMAT, "crfgan_tf_version": version,
                "architecture": architecture(config), "metadata": metadata,
                "networks": entries}
    fileio.atomic_write(os.path.join(directory, PACKAGE_FILE), json.dumps(manifest, indent=2))
    return manifest


def read_manifest(directory: str) -> dict:
    """package.json of `directory`, its format checked.

    Raises:
      PackageError: there is none, it is not JSON, or it is not a crfgan-tf package.
    """
    path = os.path.join(directory, PACKAGE_FILE)
    if not os.path.isfile(path):
        raise PackageError(f"no weights package at {directory!r} (expected {PACKAGE_FILE})")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, ValueError) as err:
        raise PackageError(f"{path} is not readable JSON ({err})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != PACKAGE_FORMAT:
        raise PackageError(f"{path} is not a crfgan-tf weights package (format "
                           f"{manifest.get('format') if isinstance(manifest, dict) else None!r}, "
                           f"expected {PACKAGE_FORMAT!r})")
    for key in ("architecture", "metadata", "networks"):
        if not isinstance(manifest.get(key), dict):
            raise PackageError(f"{path} has no `{key}` table")
    return manifest


def verify(directory: str, manifest: dict, keys: Optional[Sequence[str]] = None) -> None:
    """Checks each network file named by `keys` (default: all) against its sha256.

    Raises:
      PackageError: a file is missing or its content is not what package.json states.
    """
    for key, entry in manifest["networks"].items():
        if keys is not None and key not in keys:
            continue
        path = os.path.join(directory, entry["file"])
        if os.path.basename(entry["file"]) != entry["file"]:
            raise PackageError(f"{os.path.join(directory, PACKAGE_FILE)}: network file "
                               f"{entry['file']!r} is not a plain file name of the package")
        if not os.path.isfile(path):
            raise PackageError(f"{path} is missing from the weights package")
        if fileio.sha256(path) != entry["sha256"]:
            raise PackageError(
                f"{path} does not match its checksum in {PACKAGE_FILE} (altered or damaged): "
                "refused. Get the package again from its source")


def config_of(manifest: dict, model_dir: str = "(weights package)") -> config_lib.TrainConfig:
    """The TrainConfig of a package's networks (its architecture; the rest defaults)."""
    arch = dict(ARCHITECTURE_DEFAULTS, **manifest["architecture"])
    missing = [k for k in ARCHITECTURE_FIELDS if k not in arch]
    if missing:
        raise PackageError(f"{PACKAGE_FILE} lacks the architecture field(s) {missing}")
    return config_lib.TrainConfig(model_dir=model_dir, **{k: arch[k] for k in ARCHITECTURE_FIELDS})


def load_into(directory: str, manifest: dict, networks: dict) -> list:
    """Copies the package's arrays into `networks` ({key: keras.Model}, built by
    factory.build_networks for the package's architecture); the files must have passed
    verify(). Returns the keys loaded.

    Raises:
      PackageError: a network of `networks` is not in the package, or a file does not fit
        its network (the file and the tensor named).
    """
    loaded = []
    for key, network in networks.items():
        if network is None:
            continue
        entry = manifest["networks"].get(key)
        if entry is None:
            raise PackageError(f"{os.path.join(directory, PACKAGE_FILE)} holds no `{key}` "
                               f"(it holds {sorted(manifest['networks'])})")
        path = os.path.join(directory, entry["file"])
        if entry.get("variables") != len(network.weights):
            raise PackageError(f"{path} holds {entry.get('variables')} variables; the `{key}` "
                               f"these settings build has {len(network.weights)}")
        try:
            network.load_weights(path)
        except Exception as err:  # noqa: BLE001 - Keras reports a mismatch as ValueError text
            raise PackageError(f"{path} does not fit the `{key}` network of its "
                               f"{PACKAGE_FILE}: {_first_line(err)}") from None
        loaded.append(key)
    return loaded


def _first_line(err: Exception) -> str:
    text = str(err)
    for line in text.splitlines():
        if "Target variable" in line or "shape" in line:
            return line.strip()[:400]
    return text.splitlines()[0][:400] if text else type(err).__name__


def read(directory: str,
         keys: Sequence[str] = factory.GENERATION_KEYS + factory.ENCODING_KEYS) -> tuple:
    """(config, {key: network}, manifest) of a package: verified, networks rebuilt from
    code and loaded (keys the package's model does not have are skipped; float32).

    Raises:
      PackageError: see read_manifest, verify, load_into.
    """
    import keras

    manifest = read_manifest(directory)
    config = config_of(manifest)
    try:
        config.validate()
    except ValueError as err:
        raise PackageError(f"{os.path.join(directory, PACKAGE_FILE)}: its architecture is "
                           f"not one this version builds ({err})") from None
    keys = [k for k in keys if k in manifest["networks"]]
    verify(directory, manifest, keys)
    keras.mixed_precision.set_global_policy("float32")
    networks = factory.build_networks(config, keys)
    load_into(directory, manifest, networks)
    return config, networks, manifest
