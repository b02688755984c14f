"""Reading every supported format, and clear one-line errors for bad files."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pydicom
import pytest
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, SecondaryCaptureImageStorage, generate_uid

from anomaly.io import ImageReadError, read_image

GRADIENT = np.tile(np.linspace(0, 1, 48, dtype=np.float32), (40, 1))  # (40, 48), dark left


def write_dicom(path, pixels: np.ndarray, photometric: str = "MONOCHROME2", slope: float = 1.0,
                intercept: float = 0.0) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.PixelData = pixels.tobytes()
    ds.save_as(path, enforce_file_format=True)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".tif"])
def test_reads_8bit_formats(tmp_path, suffix):
    path = tmp_path / f"image{suffix}"
    cv2.imwrite(str(path), (GRADIENT * 255).astype(np.uint8))
    image = read_image(path)
    assert image.shape == (40, 48) and image.dtype == np.float32
    assert image[:, 0].mean() < 0.05 and image[:, -1].mean() > 0.95


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_reads_16bit_with_full_precision(tmp_path, suffix):
    path = tmp_path / f"image16{suffix}"
    pixels = (GRADIENT * 65535).astype(np.uint16)
    cv2.imwrite(str(path), pixels)
    image = read_image(path)
    np.testing.assert_allclose(image, pixels / 65535.0, atol=1e-6)


def test_colour_becomes_grayscale(tmp_path):
    path = tmp_path / "colour.png"
    rgb = np.zeros((40, 48, 3), np.uint8)
    rgb[..., 1] = 200
    cv2.imwrite(str(path), rgb)
    image = read_image(path)
    assert image.ndim == 2 and 0.4 < image.mean() < 0.6


def test_dicom_monochrome2_16bit(tmp_path):
    path = tmp_path / "mono2.dcm"
    write_dicom(path, (GRADIENT * 4000).astype(np.uint16))
    image = read_image(path)
    assert image.shape == (40, 48)
    assert image[:, 0].mean() < 0.01 and image[:, -1].mean() > 0.99


def test_dicom_monochrome1_is_inverted(tmp_path):
    path = tmp_path / "mono1.dcm"
    write_dicom(path, (GRADIENT * 4000).astype(np.uint16), photometric="MONOCHROME1")
    image = read_image(path)
    assert image[:, 0].mean() > 0.99 and image[:, -1].mean() < 0.01


def test_dicom_negative_rescale_slope_flips_order(tmp_path):
    path = tmp_path / "slope.dcm"
    write_dicom(path, (GRADIENT * 255).astype(np.uint8), slope=-2.0, intercept=100.0)
    image = read_image(path)
    assert image[:, 0].mean() > 0.99 and image[:, -1].mean() < 0.01


def test_dicom_8bit_without_extension_is_detected(tmp_path):
    path = tmp_path / "noext"
    write_dicom(path, (GRADIENT * 255).astype(np.uint8))
    renamed = tmp_path / "scan.dicom"
    path.rename(renamed)
    assert read_image(renamed).shape == (40, 48)
    assert pydicom.dcmread(renamed).Rows == 40


@pytest.mark.parametrize("content,needle", [
    (b"", "empty"),
    (b"this is not an image", "not a readable image"),
    (b"\x89PNG\r\n\x1a\n\x00\x00", "not a readable image"),
])
def test_bad_files_raise_one_line_error_naming_file(tmp_path, content, needle):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(ImageReadError) as info:
        read_image(path)
    message = str(info.value)
    assert "bad.png" in message and needle in message and "\n" not in message


def test_truncated_dicom(tmp_path):
    path = tmp_path / "cut.dcm"
    write_dicom(path, (GRADIENT * 4000).astype(np.uint16))
    path.write_bytes(path.read_bytes()[:400])
    with pytest.raises(ImageReadError, match="cut.dcm"):
        read_image(path)


def test_directory_and_missing_file(tmp_path):
    folder = tmp_path / "folder.png"
    folder.mkdir()
    with pytest.raises(ImageReadError, match="directory"):
        read_image(folder)
    with pytest.raises(ImageReadError, match="cannot be read"):
        read_image(tmp_path / "missing.png")


def test_tiny_image_is_refused(tmp_path):
    path = tmp_path / "tiny.png"
    cv2.imwrite(str(path), np.zeros((1, 1), np.uint8))
    with pytest.raises(ImageReadError, match="1x1"):
        read_image(path)


def test_our_pixel_limit_refuses_before_pillow_would(tmp_path):
    """120 MP: over our 100 MP rule, under Pillow's own bomb error (about 179 MP)."""
    from tests.test_robustness import png_header_only

    path = tmp_path / "big.png"
    path.write_bytes(png_header_only(12000, 10000))
    with pytest.raises(ImageReadError, match="12000x10000 pixels, more than the limit of 100000000"):
        read_image(path)


def test_header_that_no_parser_knows_is_refused_not_decoded(tmp_path):
    path = tmp_path / "odd.png"
    path.write_bytes(b"\x00" * 64)
    with pytest.raises(ImageReadError, match="not a readable image"):
        read_image(path)


def test_many_frame_dicom_counts_every_frame(tmp_path):
    path = tmp_path / "frames.dcm"
    write_dicom(path, np.zeros((40, 48), np.uint16))
    dataset = pydicom.dcmread(path)
    dataset.Rows, dataset.Columns, dataset.NumberOfFrames = 5000, 5000, 5  # 125 MP in all
    dataset.save_as(path)
    with pytest.raises(ImageReadError, match="5000x5000 x 5 frames pixels, more than the limit"):
        read_image(path)


@pytest.mark.parametrize("syntax", ["RLELossless", "JPEGLSLossless", "JPEG2000Lossless"])
def test_compressed_dicom_decodes_like_the_uncompressed_file(tmp_path, syntax):
    """Hospital exports: each compressed transfer syntax pydicom can also write."""
    import pydicom.uid

    plain, packed = tmp_path / "plain.dcm", tmp_path / "packed.dcm"
    write_dicom(plain, (GRADIENT * 4000).astype(np.uint16))
    dataset = pydicom.dcmread(plain)
    dataset.compress(getattr(pydicom.uid, syntax))
    dataset.save_as(packed)
    assert pydicom.dcmread(packed).file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
    np.testing.assert_array_equal(read_image(packed), read_image(plain))


def test_multi_frame_dicom_uses_the_first_frame(tmp_path):
    path = tmp_path / "frames.dcm"
    first = (GRADIENT * 4000).astype(np.uint16)
    write_dicom(path, first)
    dataset = pydicom.dcmread(path)
    frames = np.stack([first, first[:, ::-1]])  # the second frame is mirrored
    dataset.NumberOfFrames = 2
    dataset.PixelData = frames.tobytes()
    dataset.save_as(path)
    image = read_image(path)
    assert image.shape == (40, 48) and image[:, 0].mean() < image[:, -1].mean()  # frame 0


def test_a_file_over_the_size_limit_is_refused_before_it_is_read(tmp_path, monkeypatch):
    import anomaly.io

    path = tmp_path / "big.png"
    path.write_bytes(b"\x89PNG" + b"\0" * 3 * 2**20)
    monkeypatch.setattr(anomaly.io, "MAX_FILE_MB", 2.0)
    read = []
    monkeypatch.setattr(Path, "read_bytes", lambda self: read.append(self) or b"")
    with pytest.raises(ImageReadError, match=r"big\.png: is 3 MB, more than the limit of 2 MB"):
        read_image(path)
    assert read == []  # refused on its size alone


@pytest.mark.parametrize("frames, samples, match", [
    (-1, 1, "declares -1 frames"), (10**9, 1, "declares 1000000000 frames"),
    (1, 9, "9 samples per pixel"), (3000, 3, "more than the limit")])
def test_dicom_with_absurd_frames_or_samples_is_refused(tmp_path, frames, samples, match):
    meta = FileMetaDataset()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.MediaStorageSOPClassUID = generate_uid()
    meta.MediaStorageSOPInstanceUID = generate_uid()
    dataset = pydicom.Dataset()
    dataset.file_meta = meta
    dataset.Rows, dataset.Columns = 128, 128
    dataset.NumberOfFrames = frames
    dataset.SamplesPerPixel = samples
    dataset.BitsAllocated, dataset.BitsStored, dataset.HighBit = 8, 8, 7
    dataset.PixelRepresentation = 0
    dataset.PhotometricInterpretation = "MONOCHROME2"
    dataset.PixelData = b"\0" * 128 * 128
    path = tmp_path / "odd.dcm"
    dataset.save_as(path, enforce_file_format=True)
    with pytest.raises(ImageReadError, match=match):
        read_image(path)


def test_paths_that_look_like_formulas_are_written_as_text(tmp_path):
    from anomaly.io import from_spreadsheet_safe, spreadsheet_safe

    for text in ("=HYPERLINK(1)", "+1", "-2", "@SUM", "plain/a.png"):
        safe = spreadsheet_safe(text)
        assert not safe.startswith(("=", "+", "-", "@")) and from_spreadsheet_safe(safe) == text


def test_find_images_follows_linked_folders_once_and_says_which_it_cannot_read(
        tmp_path, monkeypatch, caplog):
    import errno
    import logging
    import os

    import anomaly.io as io

    (tmp_path / "elsewhere" / "study").mkdir(parents=True)
    cv2.imwrite(str(tmp_path / "elsewhere" / "study" / "a.png"), np.zeros((40, 40), np.uint8))
    (tmp_path / "export").mkdir()
    cv2.imwrite(str(tmp_path / "export" / "b.png"), np.zeros((40, 40), np.uint8))
    (tmp_path / "export" / "linked").symlink_to(tmp_path / "elsewhere")
    (tmp_path / "export" / "linked" / "study" / "back").symlink_to(tmp_path / "export")
    (tmp_path / "export" / "again").symlink_to(tmp_path / "elsewhere")  # the same folder
    found = io.find_images(tmp_path / "export")
    assert [p.name for p in found] == ["a.png", "b.png"]  # no loop, no film twice

    real_walk = os.walk

    def walk_with_a_locked_folder(top, onerror=None, followlinks=False):
        onerror(PermissionError(errno.EACCES, "Permission denied", str(Path(top) / "locked")))
        return real_walk(top, onerror=onerror, followlinks=followlinks)

    monkeypatch.setattr(io.os, "walk", walk_with_a_locked_folder)
    with caplog.at_level(logging.WARNING, logger="anomaly.io"):
        assert io.find_images(tmp_path / "export") == found
    assert "skipped folder" in caplog.text and "locked" in caplog.text
    assert "Permission denied" in caplog.text


@pytest.mark.parametrize("frames", [2, 9])
def test_multi_frame_colour_dicom_uses_the_grey_of_its_first_frame(tmp_path, frames):
    path = tmp_path / "colour.dcm"
    write_dicom(path, (GRADIENT * 200).astype(np.uint8))
    dataset = pydicom.dcmread(path)
    first = np.repeat((GRADIENT * 200).astype(np.uint8)[..., None], 3, axis=2)
    rest = [first[:, ::-1]] * (frames - 1)  # later frames mirrored
    dataset.SamplesPerPixel, dataset.PlanarConfiguration = 3, 0
    dataset.PhotometricInterpretation = "RGB"
    dataset.NumberOfFrames = frames
    dataset.PixelData = np.stack([first, *rest]).tobytes()
    dataset.save_as(path)
    image = read_image(path)
    assert image.shape == (40, 48) and image[:, 0].mean() < image[:, -1].mean()  # frame 0


def test_a_dicom_with_several_rescale_slopes_is_refused_in_one_line(tmp_path):
    path = tmp_path / "slopes.dcm"
    write_dicom(path, (GRADIENT * 4000).astype(np.uint16))
    dataset = pydicom.dcmread(path)
    dataset.RescaleSlope = [1.0, 2.0]
    dataset.save_as(path)
    with pytest.raises(ImageReadError, match="slopes.dcm: has a RescaleSlope"):
        read_image(path)
