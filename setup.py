"""crfgan-tf: CRF-GAN (memory-efficient 3D GAN for 256^3 chest CT) in Keras 3 / TensorFlow."""

import re

from setuptools import find_packages, setup

# The one version number is crfgan_tf.__version__ (importing the package would need its
# dependencies before they are installed).
VERSION = re.search(r'__version__ = "([^"]+)"',
                    open("crfgan_tf/__init__.py", encoding="utf-8").read()).group(1)

# Every command of crfgan_tf/cli/: console scripts crfgan-train, crfgan-convert, ...
# (docs/installation.md, "Commands"; tests/test_layout.py keeps this list equal to cli/).
COMMANDS = ("train", "export", "sample", "convert", "make_phantoms", "luna16_labels", "lidc_labels",
            "fid_mmd", "make_2afc", "analyze_2afc", "class_contrast", "count_params",
            "import_reference", "import_medicalnet", "profile_memory", "plan_memory",
            "deviation_effects", "bench_convert", "bench_input", "bench_generate",
            "bench_features", "bench_device", "encode", "downstream", "memorization")

setup(
    name="crfgan-tf",
    version=VERSION,
    description="CRF-GAN for 3D chest CT synthesis in Keras 3 / TensorFlow",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    # only crfgan_tf: data_prep/ and tools/ are the checkout's `python -m` shims
    packages=find_packages(include=["crfgan_tf", "crfgan_tf.*"]),
    package_data={"crfgan_tf.reader_study": ["page.html"]},
    entry_points={"console_scripts": [
        f"crfgan-{name.replace('_', '-')} = crfgan_tf.cli.{name}:run" for name in COMMANDS]},
    install_requires=[
        "tensorflow>=2.21,<2.22",  # ships Keras 3; tensorflow-addons does not import under it
        "keras>=3.10,<4",
        "numpy>=1.26,<3",
        "SimpleITK>=2.3,<3",
        "pydicom>=3.0,<4",  # DICOM headers (only the tags it needs: none is patient data)
        "scipy>=1.11,<2",
        "absl-py>=2.0,<3",
        "tensorboard>=2.21,<2.22",  # tf.summary needs it; TF 2.21 no longer installs it
        "tensorboard-plugin-profile>=2.15",  # the profiler tab for --profile_steps traces
        "matplotlib>=3.7",  # the memory/batch-size plot of tools.profile_memory
    ],
    extras_require={
        # pytest-xdist: `make test` runs the suite on both cores (--dist=loadfile)
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
        # The reference pipeline's resize, only for tools/bench_convert.py's comparison.
        "bench": ["scikit-image>=0.22"],
        # Only tools/import_medicalnet.py (reading MedicalNet's .pth) and its equivalence test.
        "medicalnet": ["torch>=2.1"],
    },
)
