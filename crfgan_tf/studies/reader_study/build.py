"""Building the 2AFC reader study: pairs of slices drawn from real and generated volumes,
rendered at a display window into the readers' page (page.html) and the separate key.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import json
import os
from importlib import resources
from typing import Optional

import numpy as np

from crfgan_tf.core import intensity
from crfgan_tf.evaluation.sources import Source
from crfgan_tf.studies.reader_study import ANSWER_COLUMNS, DIFFICULTY, PROMPTS, StudyError
from crfgan_tf.utils import fileio

PLANES = intensity.PLANES

def plane_length(shape, plane: str) -> int:
    return shape[PLANES.index(plane)]


def render_png(hu_slice: np.ndarray, window=intensity.LUNG_WINDOW) -> bytes:
    """A slice in HU -> 8-bit grey PNG at `window` (default lung window W1500 L-600)."""
    return intensity.png_bytes(intensity.display(hu_slice, window))


def load_hu_volumes(source: Source, count: int, window, label: str, log=print) -> list:
    """The first `count` volumes of `source` as int16 in the window's units (HU for CT)."""
    out = []
    for volume in source.volumes():
        out.append(intensity.from_unit(volume, window))
        log(f"2afc: {label} volume {len(out)}/{count}")
        if len(out) == count:
            break
    if not out:
        raise StudyError(f"{source.spec}: no volumes")
    return out


def _pick(rng, n: int, count: int) -> list:
    """`count` indices into n items: without repetition while they last, then again."""
    picks = []
    while len(picks) < count:
        picks += list(rng.permutation(n))
    return [int(i) for i in picks[:count]]


def check_output_dir(output_dir: str, overwrite: bool = False) -> None:
    """Refuses an `output_dir` that holds a study already (its collected answers are only
    analysable with its own key) unless `overwrite`, and one that cannot be written.

    Raises:
      StudyError: naming `output_dir` and, for an existing study, its id and `overwrite`.
      fileio.OutputError: the directory cannot be written.
    """
    key = os.path.join(output_dir, "key", "key.json")
    page = os.path.join(output_dir, "readers", "study.html")
    if not overwrite and (os.path.exists(key) or os.path.exists(page)):
        try:
            with open(key) as f:
                study_id = json.load(f).get("study_id", "?")
        except (OSError, ValueError):
            study_id = "?"
        raise StudyError(
            f"`output_dir` {output_dir!r} already holds a study ({study_id}); answers collected "
            "for it can only be analysed with its key. Use another `output_dir`, or pass "
            "`overwrite` to replace it")
    fileio.ensure_output_dir(output_dir, "`output_dir`")


def make_study(volumes: dict, output_dir: str, section1_pairs: int = 10,
               section2_pairs: int = 30, model_names=("model A", "model B"), seed: int = 0,
               planes=PLANES, position_range=(0.3, 0.7), display_window=intensity.LUNG_WINDOW,
               sources: Optional[dict] = None, log=print, overwrite: bool = False) -> dict:
    """Builds the study from HU volumes and writes `output_dir`/readers/study.html and
    `output_dir`/key/key.json. Returns the key.

    Args:
      volumes: {"real": [...], "model_a": [...], "model_b": [...]} lists of (z, y, x) HU
        arrays, all of one shape; "model_b" may be missing when section2_pairs is 0.
      position_range: slice positions are drawn uniformly in this fraction of the axis
        (the central part, where the lungs are).
      overwrite: replace a study already in `output_dir` (see check_output_dir).
    """
    shape = _check_study_input(volumes, section1_pairs, section2_pairs, planes, position_range)
    check_output_dir(output_dir, overwrite)
    rng = np.random.default_rng(seed)

    def pairs(section, first, second, n):
        if n == 0:
            return []
        picks = (_pick(rng, len(volumes[first]), n), _pick(rng, len(volumes[second]), n))
        out = []
        for i, j in zip(*picks):
            plane = str(rng.choice(list(planes)))
            fraction = float(rng.uniform(*position_range))
            index = min(int(fraction * plane_length(shape, plane)), plane_length(shape, plane) - 1)
            sides = [{"source": first, "volume": i}, {"source": second, "volume": j}]
            if rng.random() < 0.5:
                sides.reverse()
            out.append({"section": section, "plane": plane, "slice_index": index,
                        "left": sides[0], "right": sides[1]})
        return out

    questions = pairs(1, "real", "model_a", section1_pairs) + \
        pairs(2, "model_a", "model_b", section2_pairs)
    reader_items, digest = [], hashlib.sha256()
    for n, q in enumerate(questions, start=1):
        q["id"] = f"q{n:02d}"
        item = {"id": q["id"], "section": q["section"]}
        for side in ("left", "right"):
            s = q[side]
            png = render_png(intensity.slice_at(volumes[s["source"]][s["volume"]], q["plane"],
                                      q["slice_index"]), display_window)
            digest.update(png)
            item[side] = "data:image/png;base64," + base64.b64encode(png).decode()
        reader_items.append(item)
    study_id = digest.hexdigest()[:16]

    key = {"study_id": study_id, "created": datetime.datetime.now(datetime.timezone.utc)
           .isoformat(timespec="seconds"), "seed": seed,
           "model_a": model_names[0], "model_b": model_names[1],
           "sources": sources or {}, "volume_shape": list(shape),
           "display_window": list(display_window), "position_range": list(position_range),
           "section1_pairs": section1_pairs, "section2_pairs": section2_pairs,
           "questions": questions}
    _write_study(output_dir, key, reader_items, log)
    return key


def _write_study(output_dir: str, key: dict, reader_items: list, log) -> None:
    """readers/study.html (the page) and key/ (key.json and a README), atomically."""
    readers_dir = os.path.join(output_dir, "readers")
    key_dir = os.path.join(output_dir, "key")
    os.makedirs(readers_dir, exist_ok=True)
    os.makedirs(key_dir, exist_ok=True)
    fileio.atomic_write(os.path.join(readers_dir, "study.html"),
                        render_html(key["study_id"], reader_items))
    fileio.atomic_write(os.path.join(key_dir, "key.json"), json.dumps(key, indent=1))
    fileio.atomic_write(os.path.join(key_dir, "README.txt"),
                        "The answer key of the 2AFC study: which image of each pair is real or "
                        "from which model.\nDo not give this folder to readers; give them "
                        "readers/study.html only.\n")
    log(f"2afc: study {key['study_id']}: {key['section1_pairs']} + {key['section2_pairs']} "
        f"pairs -> {os.path.join(readers_dir, 'study.html')} (key: {key_dir})")


def _check_study_input(volumes: dict, section1_pairs: int, section2_pairs: int, planes,
                       position_range) -> tuple:
    """Raises StudyError for input a study cannot be built from; returns the volume shape."""
    if section1_pairs < 0 or section2_pairs < 0 or section1_pairs + section2_pairs == 0:
        raise StudyError("need at least one pair (section1_pairs, section2_pairs >= 0)")
    if section1_pairs and not (volumes.get("real") and volumes.get("model_a")):
        raise StudyError("section 1 needs real volumes and model A volumes")
    if section2_pairs and not (volumes.get("model_a") and volumes.get("model_b")):
        raise StudyError("section 2 needs model A and model B volumes")
    bad = [p for p in planes if p not in PLANES]
    if bad or not planes:
        raise StudyError(f"planes must be among {PLANES}, got {list(planes)}")
    if not 0.0 <= position_range[0] < position_range[1] <= 1.0:
        raise StudyError(f"position range must satisfy 0 <= low < high <= 1, got {position_range}")
    shapes = {name: {v.shape for v in vols} for name, vols in volumes.items() if vols}
    all_shapes = set().union(*shapes.values())
    if len(all_shapes) != 1:
        raise StudyError(f"all volumes must have one shape to compare slices at the same "
                         f"position, got {shapes}")
    shape = all_shapes.pop()
    return shape


def render_html(study_id: str, items: list) -> str:
    """The readers' page (the package's page.html, filled in): one question at a time,
    answers kept in memory only, CSV export."""
    data = json.dumps({"studyId": study_id, "columns": list(ANSWER_COLUMNS),
                       "prompts": {str(k): v for k, v in PROMPTS.items()},
                       "difficulty": {str(k): v for k, v in DIFFICULTY.items()},
                       "questions": items})
    page = resources.files("crfgan_tf.studies.reader_study").joinpath("page.html").read_text("utf-8")
    return (page.replace("__STUDY__", data.replace("</", "<\\/"))
            .replace("__INTRO__", _intro({item.get("section") for item in items}))
            .replace("__TITLE__", html.escape(f"Chest CT reader study {study_id}")))


INTRO = "You will see pairs of CT slices shown at a lung window, one pair at a time."
INTRO_SECTIONS = {
    1: ("one image of each pair is from a real scan and one was generated; pick the real one "
        "and rate how difficult the choice was."),
    2: "both images were generated; pick the one that looks more like a real CT."}


def _intro(sections: set) -> str:
    """The page's opening: only the sections the study has (numbered when both)."""
    present = [k for k in (1, 2) if k in sections]
    if len(present) == 1:
        text = INTRO_SECTIONS[present[0]]
        return f"{INTRO} {text[0].upper()}{text[1:]}"
    return INTRO + "".join(f" Section {k}: {INTRO_SECTIONS[k]}" for k in present)
