import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np
import pytest

from crfgan_tf import phantom

TINY = phantom.PhantomSpec(in_plane=48, num_slices=32, spacing_zyx=(2.5, 3.0, 3.0),
                           blank_slices=2, noise_hu=10.0)


@pytest.fixture(scope="session")
def tiny_archive(tmp_path_factory):
    """A LUNA16-like archive of 5 tiny phantom scans."""
    root = tmp_path_factory.mktemp("archive")
    paths = phantom.make_luna_archive(str(root), 5, TINY, seed=10)
    return str(root), paths
