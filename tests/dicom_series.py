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
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
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
    open(os.path.join(root, smith, "DICOMDIR"), "wb").write(b"\0" * 128 + b"DICM" + b"\0" * 64)
    open(os.path.join(root, doe, "notes ZZPHIFOLDER.txt"), "w").write("not DICOM")
    return root


def mhd_twin(path, seed=1):
    """The phantom of the kept series as one MetaImage file, same geometry."""
    return phantom.write_scan(volume(seed), path, SPEC.spacing_zyx, origin_xyz=ORIGIN)
