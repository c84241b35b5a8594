"""crfgan-tf: CRF-GAN (memory-efficient 3D GAN for 256^3 chest CT) in Keras 3 / TensorFlow."""

import re
import runpy

from setuptools import find_packages, setup

# The one version number is crfgan_tf.__version__ (importing the package would need its
# dependencies before they are installed).
VERSION = re.search(r'__version__ = "([^"]+)"',
                    open("crfgan_tf/__init__.py", encoding="utf-8").read()).group(1)

# Every command of crfgan_tf/cli/ has a console script crfgan-<command> (crfgan-train,
# crfgan-convert, ...): the one registry is crfgan_tf/cli/registry.py, read here without
# importing the package (its dependencies are not installed yet).
REGISTRY = runpy.run_path("crfgan_tf/cli/registry.py")

setup(
    name="crfgan-tf",
    version=VERSION,
    description="CRF-GAN for 3D chest CT synthesis in Keras 3 / TensorFlow",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    license="Apache-2.0",
    license_files=["LICENSE"],
    classifiers=[
        "Programming Language :: Python :: 3",
        "Operating System :: POSIX :: Linux",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
    # only crfgan_tf: data_prep/ and tools/ are the checkout's `python -m` shims
    packages=find_packages(include=["crfgan_tf", "crfgan_tf.*"]),
    package_data={"crfgan_tf.studies.reader_study": ["page.html"]},
    entry_points={"console_scripts": REGISTRY["entry_points"]()},
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
        "h5py>=3.10",  # the weights package's .weights.h5 files (Keras writes them with it)
    ],
    extras_require={
        # pytest-xdist: `make test` runs the suite on both cores (--dist=loadfile)
        "test": ["pytest>=8", "pytest-xdist>=3.5"],
        # The reference pipeline's resize, only for tools/bench_convert.py's comparison.
        "bench": ["scikit-image>=0.22"],
        # Only tools/import_medicalnet.py (reading MedicalNet's .pth) and its equivalence test.
        "medicalnet": ["torch>=2.1"],
        # NVIDIA GPUs on Linux: TensorFlow's CUDA 12.5 and cuDNN 9 libraries as pip wheels
        # (`make install-gpu`; docs/installation.md)
        "gpu": ["tensorflow[and-cuda]>=2.21,<2.22"],
    },
)
