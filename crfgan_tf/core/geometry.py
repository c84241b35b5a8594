"""The training geometry: which volume sizes exist and how a training sub-volume sits in a
volume and in G1's embedding. Every other module asks here.

  S               the volume side: 64, 128, 256 or 512 (HA-GAN: 128, 256 or 512)
  f               the embedding factor: volume voxels per embedding voxel along each axis,
                  4 (the reference's, at every size) or 8 (512 only: `EMBED_FACTORS`;
                  CRF-GAN's default there, `default_factor`)
  embedding       G1's output, S/f per side
  crop            the real training sub-volume x[r : r + S/8] (S/8 axial slices)
  slab            its embedding slices [r/f, r/f + S/(8f))
  r               the crop start: a multiple of f in 0..7S/8, so that crop and slab cover
                  the same slices (the reference draws any r and misaligns them by up to 3)

How the networks grow with S (docs/resolution.md has the parameter counts). The reference
defines 64, 128 and 256; going from 64 to 256 it adds, per doubling of S, one x2 up-sampling
stage to G1 and one stride-2 layer to D (D^L and the sub-encoder likewise for HA-GAN), while
G2 and hE, which map an embedding slab to its crop at a fixed 4x, stay the same. 512 follows
that rule one step further (`extra_stages(512) == 1`): G1 gains a sixth block (64 channels,
after a fifth up-sampling) so the embedding stays S/4 = 128^3, D gains a first layer of 8
channels, D^L and the sub-encoder a first stride-2 layer of 16 channels; G2, hE and the
CRF's formula do not change (the CRF has S/4 = 128 nodes). 64-256 are exactly the
reference's networks.

The other rule at 512 (embedding factor 8, CRF-GAN only): the embedding stays 64^3 (G1 is
the 256^3 trunk), G2 gains a third x2 up-sampling stage and hE a third stride-2 stage, the
CRF keeps 64 nodes, and crops start at multiples of 8. Measured side by side it trains
faster in as much memory, so it is CRF-GAN's default at 512 (`default_factor`; HA-GAN
keeps 4); docs/resolution.md has the comparison. `--embedding_factor=4` selects the first.

This module imports nothing heavy: configs, tools and the networks all use it.
"""

from __future__ import annotations

SIZES = (64, 128, 256, 512)
HAGAN_SIZES = (128, 256, 512)  # the reference has no 64^3 HA-GAN
REFERENCE_SIZES = (64, 128, 256)  # the sizes the PyTorch references define (512 is ours)
BASE_SIZE = 256  # the size whose networks the per-size tables start from
EMBED_FACTOR = 4  # volume voxels per embedding voxel, along each axis (the default)
EMBED_FACTORS = {4: SIZES, 8: (512,)}  # factor -> the sizes it is defined at
CROP_FRACTION = 8  # a training crop is S/8 axial slices


def check_size(img_size: int, model: str = "crfgan", flag: str = "img_size") -> None:
    """Raises ValueError naming `flag` when `img_size` is not a size `model` is defined at."""
    if img_size not in SIZES:
        raise ValueError(f"`{flag}` must be one of {', '.join(map(str, SIZES))}, got {img_size}")
    if model == "hagan" and img_size not in HAGAN_SIZES:
        raise ValueError(f"`model=hagan` needs `{flag}` {', '.join(map(str, HAGAN_SIZES))} "
                         f"(the reference has no {img_size}^3 HA-GAN), got {img_size}")


def check_factor(img_size: int, factor: int, model: str = "crfgan",
                 flag: str = "embedding_factor") -> None:
    """Raises ValueError naming `flag` when `factor` is not an embedding factor of `model`
    at `img_size` (4 everywhere; 8 for CRF-GAN at 512)."""
    if factor not in EMBED_FACTORS:
        raise ValueError(f"`{flag}` must be one of {', '.join(map(str, EMBED_FACTORS))}, "
                         f"got {factor}")
    if img_size not in EMBED_FACTORS[factor]:
        raise ValueError(f"`{flag}={factor}` needs `img_size` "
                         f"{', '.join(map(str, EMBED_FACTORS[factor]))}, got {img_size}")
    if factor != EMBED_FACTOR and model != "crfgan":
        raise ValueError(f"`{flag}={factor}` is defined for `model=crfgan` only "
                         f"(HA-GAN's sub-encoder and G^L assume S/{EMBED_FACTOR})")


def default_factor(img_size: int, model: str = "crfgan") -> int:
    """The embedding factor of a model at a size when none is given: 8 for CRF-GAN at 512
    (docs/resolution.md: 0.8x the time per iteration of factor 4 in as much working
    memory), 4 everywhere else (the references' 64-256, HA-GAN at 512)."""
    return 8 if (model == "crfgan" and img_size == 512) else EMBED_FACTOR


def resolve_factor(img_size: int, factor: int, model: str = "crfgan") -> int:
    """`factor`, or default_factor when it is 0 ("the size's default")."""
    return factor or default_factor(img_size, model)


def factor_stages(factor: int = EMBED_FACTOR) -> int:
    """x2 stages between the embedding and the volume: 2 at factor 4, 3 at factor 8. G2
    up-samples, and hE strides, this many times."""
    return factor.bit_length() - 1


def extra_stages(img_size: int) -> int:
    """Doublings of S past 256: -2 at 64, -1 at 128, 0 at 256, 1 at 512. A network that
    sees the whole volume or the full-resolution crop has this many more stride-2 (or x2
    up-sampling) stages than at 256; negative: that many fewer."""
    return (img_size // BASE_SIZE).bit_length() - 1 if img_size >= BASE_SIZE \
        else -((BASE_SIZE // img_size).bit_length() - 1)


def embedding_side(img_size: int, factor: int = EMBED_FACTOR) -> int:
    """Side of G1's embedding: S/f."""
    return img_size // factor


def crop_depth(img_size: int) -> int:
    """Axial slices of a training sub-volume: S/8."""
    return img_size // CROP_FRACTION


def slab_depth(img_size: int, factor: int = EMBED_FACTOR) -> int:
    """Embedding slices of a training sub-volume: S/(8f) (S/32 at f = 4)."""
    return crop_depth(img_size) // factor


def max_position(img_size: int) -> int:
    """The last crop start: 7S/8."""
    return img_size - crop_depth(img_size)


def num_positions(img_size: int, factor: int = EMBED_FACTOR) -> int:
    """How many crop starts there are (0, f, ..., 7S/8): 7S/(8f) + 1 (7S/32 + 1 at f = 4)."""
    return max_position(img_size) // factor + 1


def position(k: int, factor: int = EMBED_FACTOR):
    """The k-th crop start, fk (works on ints and tensors alike)."""
    return factor * k


def crop_starts(img_size: int) -> range:
    """Starts of the CROP_FRACTION crops that tile a volume (HA-GAN's sub-encoder input)."""
    return range(0, img_size, crop_depth(img_size))


def normalized_position(position_value, img_size: int):
    """r / (7S/8): D's position input in [0, 1] (works on floats and float tensors)."""
    return position_value / float(max_position(img_size))


# MedicalNet features (crfgan_tf.evaluation.features), in every command and study that
# takes them: volumes with a larger side are averaged down to the feature side first.
FEATURE_SIDE = 256
MIN_FEATURE_SIDE = 16  # MedicalNet down-samples 16x


def block_mean(volume, factor: int):
    """(d, h, w) -> (d/f, h/f, w/f): the mean of each f^3 block, in float32 (no float64
    temporary). The one down-sampling by block means of the feature extractor and the
    downstream classifier's input.

    Raises:
      ValueError: `factor` does not divide every side.
    """
    import numpy as np

    d, h, w = volume.shape
    if factor < 1 or d % factor or h % factor or w % factor:
        raise ValueError(f"factor {factor} must divide every side of the volume "
                         f"{tuple(volume.shape)}")
    f = factor
    return volume.reshape(d // f, f, h // f, f, w // f, f).mean(axis=(1, 3, 5),
                                                               dtype=np.float32)


def centred_origin_xyz(shape_zyx, spacing_zyx) -> list:
    """The (x, y, z) origin in mm that centres a (z, y, x) volume of `spacing_zyx` on 0:
    where every written sample (NIfTI, MHA, NRRD, npy and DICOM) puts its first voxel."""
    return [-(n - 1) / 2.0 * float(s) for n, s in zip(reversed(shape_zyx), reversed(spacing_zyx))]
