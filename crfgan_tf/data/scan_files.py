"""Checks of scan files that ITK's readers do not make: a MetaImage whose data file is
missing or short, NaN/inf in a NIfTI file's float data (ITK turns them into 0). Reads the
files' own headers; numpy only."""

from __future__ import annotations

import os
from typing import Optional

import numpy as np

_MET_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4,
              "MET_UINT": 4, "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8,
              "MET_ULONG_LONG": 8, "MET_FLOAT": 4, "MET_DOUBLE": 8}


def metaimage_data_problem(path: str) -> Optional[str]:
    """Why the data file of a MetaImage header cannot hold its image (missing, or shorter
    than DimSize x ElementType says), or None when its size is right or cannot be judged
    (compressed, inline, an unknown type)."""
    header = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                if "=" in line:
                    key, value = line.split("=", 1)
                    header[key.strip()] = value.strip()
    except OSError:
        return None
    name = header.get("ElementDataFile", "")
    size = _MET_BYTES.get(header.get("ElementType", ""))
    if (not name or name.upper() in ("LOCAL", "LIST") or size is None
            or header.get("CompressedData", "False").lower() == "true"):
        return None
    try:
        dims = [int(v) for v in header.get("DimSize", "").split()]
        channels = int(header.get("ElementNumberOfChannels", "1"))
    except ValueError:
        return None
    data = os.path.join(os.path.dirname(path), name)
    expected = int(np.prod(dims)) * size * channels
    if not os.path.exists(data):
        return f"its data file {data} is missing"
    actual = os.path.getsize(data)
    if actual < expected:
        return (f"its data file {data} is truncated: {actual} bytes, expected {expected} "
                f"(DimSize {' x '.join(map(str, dims))} of {header['ElementType']})")
    return None


# NIfTI-1/2 datatype codes of floating-point voxels -> numpy dtype
_NIFTI_FLOATS = {16: "f4", 64: "f8", 1536: "f16"}


def nifti_nonfinite_count(path: str, chunk_bytes: int = 1 << 24) -> int:
    """Non-finite (NaN, inf) voxels in a NIfTI file's stored float data, read from the file
    itself (ITK's reader silently turns them into 0). 0 for integer data."""
    import gzip
    import struct

    opener = gzip.open if path.lower().endswith(".gz") else open
    with opener(path, "rb") as f:
        head = f.read(540)
        for endian in "<>":
            sizeof_hdr = struct.unpack(endian + "i", head[:4])[0]
            if sizeof_hdr in (348, 540):
                break
        else:
            return 0  # not NIfTI as we know it: ITK read it; nothing more to check
        if sizeof_hdr == 348:
            dims = struct.unpack(endian + "8h", head[40:56])
            datatype = struct.unpack(endian + "h", head[70:72])[0]
            offset = int(struct.unpack(endian + "f", head[108:112])[0])
        else:
            datatype = struct.unpack(endian + "h", head[12:14])[0]
            dims = struct.unpack(endian + "8q", head[16:80])
            offset = struct.unpack(endian + "q", head[168:176])[0]
        kind = _NIFTI_FLOATS.get(datatype)
        if kind is None or kind == "f16":
            return 0
        dtype = np.dtype(endian + kind)
        count = int(np.prod([max(1, d) for d in dims[1:1 + max(1, dims[0])]]))
        f.seek(offset)  # gzip files seek forward by decompressing
        bad, left = 0, count
        step = max(1, chunk_bytes // dtype.itemsize)
        while left > 0:
            values = np.frombuffer(f.read(min(step, left) * dtype.itemsize), dtype)
            if values.size == 0:
                break
            bad += int(values.size - np.count_nonzero(np.isfinite(values)))
            left -= values.size
    return bad
