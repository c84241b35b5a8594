"""The training geometry: which volume sizes exist and how a training sub-volume sits in a
volume and in G1's embedding. Every other module asks here.

  S               the volume side: 64, 128, 256 or 512 (HA-GAN: 128, 256 or 512)
  embedding       G1's output, S/4 per side
  crop            the real training sub-volume x[r : r + S/8] (S/8 axial slices)
  slab            its embedding slices [r/4, r/4 + S/32)
  r               the crop start: a multiple of 4 in 0..7S/8, so that crop and slab cover
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

This module imports nothing heavy: configs, tools and the networks all use it.
"""

from __future__ import annotations

SIZES = (64, 128, 256, 512)
HAGAN_SIZES = (128, 256, 512)  # the reference has no 64^3 HA-GAN
REFERENCE_SIZES = (64, 128, 256)  # the sizes the PyTorch references define (512 is ours)
BASE_SIZE = 256  # the size whose networks the per-size tables start from
EMBED_FACTOR = 4  # volume voxels per embedding voxel, along each axis
CROP_FRACTION = 8  # a training crop is S/8 axial slices


def check_size(img_size: int, model: str = "crfgan", flag: str = "img_size") -> None:
    """Raises ValueError naming `flag` when `img_size` is not a size `model` is defined at."""
    if img_size not in SIZES:
        raise ValueError(f"--{flag} must be one of {', '.join(map(str, SIZES))}, got {img_size}")
    if model == "hagan" and img_size not in HAGAN_SIZES:
        raise ValueError(f"--model=hagan needs --{flag} {', '.join(map(str, HAGAN_SIZES))} "
                         f"(the reference has no {img_size}^3 HA-GAN), got {img_size}")


def extra_stages(img_size: int) -> int:
    """Doublings of S past 256: -2 at 64, -1 at 128, 0 at 256, 1 at 512. A network that
    sees the whole volume or the full-resolution crop has this many more stride-2 (or x2
    up-sampling) stages than at 256; negative: that many fewer."""
    return (img_size // BASE_SIZE).bit_length() - 1 if img_size >= BASE_SIZE \
        else -((BASE_SIZE // img_size).bit_length() - 1)


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
