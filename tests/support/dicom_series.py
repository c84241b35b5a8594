"""A hospital export as DICOM, made from the phantoms: every rule of crfgan_tf/data/dicom.py
has a series here, and every patient-data tag and folder name holds a known string
(PHI_VALUES) that nothing the pipeline writes or prints may contain
(tests/data/test_dicom.py, test_dicom_phi.py)."""

import dataclasses
import os
import shutil


from crfgan_tf.data import dicom, dicom_write, phantom

SPEC = phantom.PhantomSpec(in_plane=32, num_slices=40, spacing_zyx=(2.5, 4.0, 4.0),
                           blank_slices=2, noise_hu=10.0)
ORIGIN = (-64.0, -64.0, -30.0)
# Patient data in every tag PS3.15's Basic Profile removes that a CT header commonly has.
PHI_TAGS = {
    "PatientName": "ZZPHI^PATIENTNAME", "PatientID": "ZZPHIPATIENTID",
    "PatientBirthDate": "19230417", "PatientSex": "O", "PatientAddress": "ZZPHI ADDRESS",
    "OtherPatientIDs": "ZZPHIOTHERID", "AccessionNumber": "ZZPHIACCESSION",
    "InstitutionName": "ZZPHI INSTITUTION", "InstitutionAddress": "ZZPHI INST ADDRESS",
    "ReferringPhysicianName": "ZZPHI^REFERRER", "PerformingPhysicianName": "ZZPHI^PERFORMER",
    "OperatorsName": "ZZPHI^OPERATOR", "StationName": "ZZPHISTATION",
    "StudyID": "ZZPHISTUDYID", "StudyDate": "19991231", "StudyTime": "235959.987654",
    "StudyDescription": "ZZPHI STUDY DESCRIPTION", "SeriesDescription": "ZZPHI SERIES DESC",
    "DeviceSerialNumber": "ZZPHISERIAL",
}
PATIENT_FOLDERS = ("ZZPHIFOLDER_SMITH^JOHN", "ZZPHIFOLDER DOE JANE")
PHI_VALUES = [v for k, v in PHI_TAGS.items() if k != "PatientSex"] + list(PATIENT_FOLDERS)


def series_uid(seed):
    return dicom_write.uid(f"{seed}/series")


def case_id(seed):
    """The case id conversion gives the series written with `seed` (the default: hash)."""
    return dicom.hashed_id(series_uid(seed))


def volume(seed=1):
    return phantom.make_phantom(seed, SPEC)


def _write(root, folder, seed, vol=None, **kw):
    kw.setdefault("tags", PHI_TAGS)
    return dicom_write.write_series(volume() if vol is None else vol, os.path.join(root, folder),
                                    kw.pop("spacing", SPEC.spacing_zyx), ORIGIN, seed=seed, **kw)


def _no_image(path, seed):
    """A structured report: a series without pixels."""
    import pydicom
    from pydicom.dataset import Dataset, FileMetaDataset

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.88.11"
    meta.MediaStorageSOPInstanceUID = dicom_write.uid(f"{seed}/sr")
    meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.SeriesInstanceUID = "SR", series_uid(seed)
    ds.StudyInstanceUID = dicom_write.uid(f"{seed}/study")
    for k, v in PHI_TAGS.items():
        setattr(ds, k, v)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    ds.save_as(path, enforce_file_format=True)


def _unsupported(paths):
    """Rewrites a series as MPEG2 video (a transfer syntax GDCM does not decode)."""
    import pydicom
    from pydicom.encaps import encapsulate

    for path in paths:
        ds = pydicom.dcmread(path)
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.4.100"
        ds.PixelData = encapsulate([b"\0" * 64])
        ds["PixelData"].VR = "OB"
        ds.save_as(path, enforce_file_format=True)


# seed -> (decision of the default conversion, what the series is)
EXPECTED = {
    "thin": "kept",  # shuffled names, InstanceNumber reversed
    "thick": "skipped_series_policy",  # the same study at 5 mm
    "scout": "skipped_localizer",
    "rescale": "kept",  # per-slice slopes and intercepts
    "jpeg": "kept", "jpeg2000": "kept",
    "mpeg2": "refused_undecodable",  # found by the worker
    "gap": "refused_missing_slices",
    "jitter": "kept",  # uneven within tolerance: resampled
    "uneven": "refused_uneven_spacing",
    "tilt": "refused_gantry_tilt",
    "mixed": "refused_mixed_geometry",
    "dup_same": "kept",  # one slice twice, identical: dropped
    "dup_diff": "refused_duplicate_position",  # found by the worker
    "derived": "skipped_derived", "mr": "skipped_modality",
    "short": "skipped_too_few_slices", "report": "skipped_no_image",
    "multiframe": "skipped_multiframe",  # an enhanced CT: all frames in one file
}
SMITH_STUDY = ("thin", "thick", "scout")  # one study, three series
FAILED = {"mpeg2", "gap", "uneven", "tilt", "mixed", "dup_diff"}


def make_export(root):
    """Writes the export (every seed of EXPECTED) under `root`; returns root."""
    smith, doe = PATIENT_FOLDERS
    study = dicom_write.uid("smith/study")
    thin = f"{smith}/CT_CHEST"
    _write(root, thin, "thin", shuffled_names=True, study_uid=study, series_number=2)
    thick = dataclasses.replace(SPEC, in_plane=64, num_slices=20, spacing_zyx=(5.0, 2.0, 2.0))
    _write(root, f"{smith}/CT_5MM", "thick", phantom.make_phantom(1, thick),
           spacing=thick.spacing_zyx, study_uid=study, series_number=3)  # more voxels
    _write(root, thin, "scout", volume()[:3], image_type=("ORIGINAL", "PRIMARY", "LOCALIZER"),
           study_uid=study, series_number=1)
    slopes = [(2.5, -1000.0), (1.0, 0.0), (0.5, -3.3), (1.0, -1024.0)]
    _write(root, f"{doe}/rescale", "rescale", rescale=lambda k: slopes[k % 4])
    _write(root, f"{doe}/jpeg", "jpeg", compression="jpeg")
    _write(root, f"{doe}/jpeg2000", "jpeg2000", compression="jpeg2000")
    _unsupported(_write(root, f"{doe}/mpeg2", "mpeg2"))
    count = SPEC.num_slices
    _write(root, f"{doe}/gap", "gap", slice_offsets=[k * 2.5 + (5.0 if k >= 12 else 0)
                                                     for k in range(count)])
    _write(root, f"{doe}/jitter", "jitter", slice_offsets=[k * 2.5 + (0.2 if k in (7, 15) else 0)
                                                           for k in range(count)])
    _write(root, f"{doe}/uneven", "uneven", slice_offsets=[k * 2.5 + (1.0 if k == 9 else 0)
                                                           for k in range(count)])
    _write(root, f"{doe}/tilt", "tilt", tilt_deg=20.0)
    mixed = _write(root, f"{doe}/mixed", "mixed")
    os.remove(mixed[5])
    _write(root, f"{doe}/mixed_extra", "mixed", volume()[5:6, :24, :24],
           slice_offsets=[5 * 2.5])  # one slice of another size, same series
    same = _write(root, f"{doe}/dup_same", "dup_same")
    shutil.copy(same[8], same[8] + ".copy")
    _write(root, f"{doe}/dup_diff", "dup_diff")
    _write(root, f"{doe}/dup_diff_extra", "dup_diff", volume()[8:9] + 100,
           slice_offsets=[8 * 2.5])  # another slice at slice 8's position, other pixels
    _write(root, f"{doe}/derived", "derived", image_type=("DERIVED", "SECONDARY", "AXIAL"))
    _write(root, f"{doe}/mr", "mr", modality="MR")
    _write(root, f"{doe}/short", "short", volume()[:10])
    _no_image(os.path.join(root, doe, "report", "sr.dcm"), "report")
    import pydicom

    (frames,) = _write(root, f"{doe}/enhanced", "multiframe", volume()[:1])
    enhanced = pydicom.dcmread(frames)
    enhanced.NumberOfFrames = 40
    enhanced.save_as(frames, enforce_file_format=True)
    open(os.path.join(root, smith, "DICOMDIR"), "wb").write(b"\0" * 128 + b"DICM" + b"\0" * 64)
    open(os.path.join(root, doe, "notes ZZPHIFOLDER.txt"), "w").write("not DICOM")
    with open(os.path.join(root, doe, "ZZPHIFOLDER broken"), "wb") as fh:  # DICM, no header
        fh.write(b"\0" * 128 + b"DICM" + b"\xff" * 40)
    return root


def mhd_twin(path, seed=1):
    """The phantom of the kept series as one MetaImage file, same geometry."""
    return phantom.write_scan(volume(seed), path, SPEC.spacing_zyx, origin_xyz=ORIGIN)


# LIDC-IDRI: phantoms with nodules as DICOM series, each with the readers' XML beside it.
LIDC_SPEC = phantom.PhantomSpec(in_plane=128, num_slices=48, spacing_zyx=(2.0, 1.25, 1.25),
                                blank_slices=2, noise_hu=10.0)
LIDC_ORIGIN = (-80.0, -80.0, -100.0)
# scan -> (seed, nodule diameter mm, [per nodule: {reader: malignancy}], point marks)
LIDC_SCANS = {
    "A": (21, 10.0, [{0: 4, 1: 5, 2: 4, 3: 3}], True),  # 4 readers: malignant (median 4)
    "B": (22, 8.0, [{0: 5, 1: 5}], False),  # 2 readers: not a nodule by 3 of 4
    "C": (23, 8.0, [{0: 2, 1: 2, 2: 3}, {0: 3, 1: 3, 2: 3, 3: 4}], False),  # worst: 3
    "D": (24, 2.4, [{0: None, 1: None, 2: None, 3: None}], False),  # < 3 mm: point marks
}


def lidc_uid(scan):
    return dicom_write.uid(f"lidc/{scan}/series")


def lidc_contours(centre, diameter, spec, shift_px=0):
    """The outer border of a nodule's painted voxels (phantom._draw_nodules' ball), slice by
    slice: {slice index: [(x px, y px), ...]}, as LIDC readers draw it."""
    import numpy as np
    from scipy import ndimage

    radius = diameter / 2.0 / np.asarray(spec.spacing_zyx)
    out = {}
    for z in range(int(np.floor(centre[0] - radius[0])), int(np.ceil(centre[0] + radius[0])) + 1):
        yy, xx = np.mgrid[0:spec.in_plane, 0:spec.in_plane]
        ball = (((z - centre[0]) / radius[0]) ** 2 + ((yy - centre[1]) / radius[1]) ** 2
                + ((xx - centre[2]) / radius[2]) ** 2) <= 1.0
        if ball.any():
            border = ndimage.binary_dilation(ball) & ~ball
            ys, xs = np.nonzero(border)
            out[z] = [(int(x) + shift_px, int(y)) for y, x in zip(ys, xs)]
    return out


def _xml(uid, sessions):
    """An LIDC read message: sessions = [[(contours {z mm: [(x, y)]}, malignancy|None)]]."""
    ns = "http://www.nih.gov"
    parts = [f'<?xml version="1.0" encoding="UTF-8"?>\n<LidcReadMessage xmlns="{ns}">',
             f"<ResponseHeader><Version>1.8.1</Version><SeriesInstanceUid>{uid}"
             "</SeriesInstanceUid></ResponseHeader>"]
    for k, marks in enumerate(sessions):
        parts.append(f"<readingSession><servicingRadiologistID>reader{k}</servicingRadiologistID>")
        for j, (contours, rating) in enumerate(marks):
            parts.append(f"<unblindedReadNodule><noduleID>{k}-{j}</noduleID>")
            if rating is not None:
                parts.append(f"<characteristics><subtlety>4</subtlety><malignancy>{rating}"
                             "</malignancy></characteristics>")
            for z, points in contours.items():
                parts.append(f"<roi><imageZposition>{z:.6f}</imageZposition><imageSOP_UID>x"
                             "</imageSOP_UID><inclusion>TRUE</inclusion>")
                parts += [f"<edgeMap><xCoord>{x}</xCoord><yCoord>{y}</yCoord></edgeMap>"
                          for x, y in points]
                parts.append("</roi>")
            parts.append("</unblindedReadNodule>")
        parts.append("<nonNodule><nonNoduleID>n</nonNoduleID><imageZposition>0.0"
                     "</imageZposition><locus><xCoord>5</xCoord><yCoord>5</yCoord></locus>"
                     "</nonNodule></readingSession>")
    return "\n".join(parts + ["</LidcReadMessage>"])


def make_lidc(root):
    """Writes LIDC_SCANS as `LIDC-IDRI-000k/<series>/` with the XML beside the slices;
    returns {scan: [(centre (z, y, x) voxels, diameter mm)]}."""
    drawn = {}
    for k, (scan, (seed, diameter, nodules, points)) in enumerate(sorted(LIDC_SCANS.items())):
        vol, found = phantom.make_phantom_with_nodules(seed, LIDC_SPEC, len(nodules),
                                                       (diameter, diameter))
        folder = os.path.join(root, f"LIDC-IDRI-{k + 1:04d}", "series")
        dicom_write.write_series(vol, folder, LIDC_SPEC.spacing_zyx, LIDC_ORIGIN,
                                 seed=f"lidc/{scan}", tags=PHI_TAGS)
        sessions = [[] for _ in range(4)]
        for (centre, d), readers in zip(found, nodules):
            for reader, rating in readers.items():
                if diameter < 3.0:  # readers mark small nodules with one point
                    z = LIDC_ORIGIN[2] + round(centre[0]) * LIDC_SPEC.spacing_zyx[0]
                    sessions[reader].append(({z: [(round(centre[2]), round(centre[1]))]}, None))
                    continue
                contours = lidc_contours(centre, d, LIDC_SPEC, shift_px=reader % 2)
                sessions[reader].append(({LIDC_ORIGIN[2] + z * LIDC_SPEC.spacing_zyx[0]: pts
                                          for z, pts in contours.items()}, rating))
        if points:  # reader 1 also marks a < 3 mm nodule elsewhere: not a nodule
            sessions[1].append(({LIDC_ORIGIN[2] + 20 * 2.0: [(30, 40)]}, None))
        with open(os.path.join(folder, f"{100 + k}.xml"), "w") as fh:
            fh.write(_xml(lidc_uid(scan), sessions))
        drawn[scan] = found
    return drawn
