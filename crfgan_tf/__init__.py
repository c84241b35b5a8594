"""crfgan-tf: CRF-GAN for 3D chest CT synthesis in Keras 3 / TensorFlow.

The stable public API is the names of `__all__` (docs/api.md), loaded on first use:
`import crfgan_tf` imports no TensorFlow and changes nothing in the process (entry points
call `crfgan_tf.utils.runtime.configure()` themselves). Anything else is importable from
its subpackage (docs/architecture.md) but may move between minor releases.

  config, models   TrainConfig, build_model, build_networks, CRFGAN, HAGAN, count_parameters
  training         run_training, read_config
  generation       export_generator, load_generator, generate_volumes, latents, sample_volumes
  evaluation       open_source, load_extractor, extract_features, fid_mmd,
                   frechet_distance, fid_from_features, mmd, ms_ssim_3d
  data             PhantomSpec, make_phantoms, ConvertConfig, run_conversion, read_volumes,
                   synthetic_batch
"""

import importlib

from crfgan_tf import _moved

__version__ = "0.3.0"  # CHANGELOG.md; setup.py reads it from here

# public name -> (module, attribute): the one list of the stable API
_PUBLIC = {
    # the run contract and the models
    "TrainConfig": ("crfgan_tf.run.config", "TrainConfig"),
    "read_config": ("crfgan_tf.run.rundir", "read_config"),
    "build_model": ("crfgan_tf.run.factory", "build_model"),
    "build_networks": ("crfgan_tf.run.factory", "build_networks"),
    "SubVolumeGAN": ("crfgan_tf.models.base", "SubVolumeGAN"),
    "CRFGAN": ("crfgan_tf.models.crfgan", "CRFGAN"),
    "HAGAN": ("crfgan_tf.models.hagan", "HAGAN"),
    "count_parameters": ("crfgan_tf.models.params", "count_parameters"),
    # training
    "run_training": ("crfgan_tf.training.loop", "train"),
    # generation
    "export_generator": ("crfgan_tf.generation.export", "export"),
    "load_generator": ("crfgan_tf.generation.sample", "load"),
    "generate_volumes": ("crfgan_tf.generation.sample", "generate"),
    "latents": ("crfgan_tf.generation.sample", "latents"),
    "sample_volumes": ("crfgan_tf.generation.sample", "sample"),
    # evaluation
    "open_source": ("crfgan_tf.evaluation.sources", "open_source"),
    "load_extractor": ("crfgan_tf.evaluation.features", "load_extractor"),
    "extract_features": ("crfgan_tf.evaluation.features", "extract_features"),
    "fid_mmd": ("crfgan_tf.evaluation.fid_mmd", "fid_mmd"),
    "frechet_distance": ("crfgan_tf.evaluation.metrics", "frechet_distance"),
    "fid_from_features": ("crfgan_tf.evaluation.metrics", "fid_from_features"),
    "mmd": ("crfgan_tf.evaluation.metrics", "mmd"),
    "ms_ssim_3d": ("crfgan_tf.evaluation.metrics", "ms_ssim_3d"),
    # data
    "PhantomSpec": ("crfgan_tf.data.phantom", "PhantomSpec"),
    "make_phantoms": ("crfgan_tf.data.phantom", "make_luna_archive"),
    "ConvertConfig": ("crfgan_tf.data.convert", "ConvertConfig"),
    "run_conversion": ("crfgan_tf.data.convert", "run_conversion"),
    "read_volumes": ("crfgan_tf.data.records", "read_volumes"),
    "synthetic_batch": ("crfgan_tf.data.pipeline", "synthetic_batch"),
}

__all__ = sorted(_PUBLIC) + ["__version__"]

_moved.install()  # the 0.2 module paths (crfgan_tf._moved.MOVED), with a warning


def __getattr__(name):
    if name in _PUBLIC:
        module, attribute = _PUBLIC[name]
        value = getattr(importlib.import_module(module), attribute)
        globals()[name] = value  # once
        return value
    raise AttributeError(f"module 'crfgan_tf' has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_PUBLIC))
