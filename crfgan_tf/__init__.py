"""crfgan-tf: CRF-GAN for 3D chest CT synthesis in Keras 3 / TensorFlow.

Kept import-light on purpose: `crfgan_tf.phantom` and `crfgan_tf.preprocess` do not
import TensorFlow, so conversion workers start fast. Import submodules directly.
"""

__version__ = "0.1.0"
