"""The training geometry: which volume sizes exist and how a training sub-volume sits in a
volume and in G1's embedding. Every other module asks here.

  S               the volume side: 64, 128 or 256 (HA-GAN: 128 or 256)
  embedding       G1's output, S/4 per side
  crop            the real training sub-volume x[r : r + S/8] (S/8 axial slices)
  slab            its embedding slices [r/4, r/4 + S/32)
  r               the crop start: a multiple of 4 in 0..7S/8, so that crop and slab cover
                  the same slices (the reference draws any r and misaligns them by up to 3)

This module imports nothing heavy: configs, tools and the networks all use it.
"""

from __future__ import annotations

SIZES = (64, 128, 256)
HAGAN_SIZES = (128, 256)  # the reference has no 64^3 HA-GAN
EMBED_FACTOR = 4  # volume voxels per embedding voxel, along each axis
CROP_FRACTION = 8  # a training crop is S/8 axial slices


def check_size(img_size: int, model: str = "crfgan", flag: str = "img_size") -> None:
    """Raises ValueError naming `flag` when `img_size` is not a size `model` is defined at."""
    if img_size not in SIZES:
        raise ValueError(f"--{flag} must be one of {', '.join(map(str, SIZES))}, got {img_size}")
    if model == "hagan" and img_size not in HAGAN_SIZES:
        raise ValueError(f"--model=hagan needs --{flag} {' or '.join(map(str, HAGAN_SIZES))} "
                         f"(the reference has no {img_size}^3 HA-GAN), got {img_size}")


def embedding_side(img_size: int) -> int:
    """Side of G1's embedding: S/4."""
    return img_size // EMBED_FACTOR


def crop_depth(img_size: int) -> int:
    """Axial slices of a training sub-volume: S/8."""
    return img_size // CROP_FRACTION


def slab_depth(img_size: int) -> int:
    """Embedding slices of a training sub-volume: S/32."""
    return crop_depth(img_size) // EMBED_FACTOR


def max_position(img_size: int) -> int:
    """The last crop start: 7S/8."""
    return img_size - crop_depth(img_size)


def num_positions(img_size: int) -> int:
    """How many crop starts there are (0, 4, ..., 7S/8): 7S/32 + 1."""
    return max_position(img_size) // EMBED_FACTOR + 1


def position(k: int):
    """The k-th crop start, 4k (works on ints and tensors alike)."""
    return EMBED_FACTOR * k


def crop_starts(img_size: int) -> range:
    """Starts of the CROP_FRACTION crops that tile a volume (HA-GAN's sub-encoder input)."""
    return range(0, img_size, crop_depth(img_size))


def normalized_position(position_value, img_size: int):
    """r / (7S/8): D's position input in [0, 1] (works on floats and float tensors)."""
    return position_value / float(max_position(img_size))
