"""Readers and detection for every layout, and every kind of bad input they must report."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_fixtures import (
    class_value,
    grey,
    image_bytes,
    labels_match_values,
    make_affectnet,
    make_affectnet2021,
    make_fer2013_csv,
    make_folders,
    tar_directory,
    write,
    zip_directory,
)
from fernoise.data import CANONICAL_CLASSES, DataError, canonical_name, detect_format, prepare
from fernoise.data.decode import decode_image, to_8bit

FER7 = ["neutral", "happy", "sad", "surprise", "fear", "disgust", "anger"]


def build(source: Path, tmp_path: Path, **options):
    return prepare(source, out=tmp_path / "cache", progress=False, quiet=True, **options)


def counts(data, split: str) -> dict[str, int]:
    return data.meta["class_counts"][split]


# --------------------------------------------------------------------------- vocabulary


def test_canonical_names_and_synonyms():
    assert CANONICAL_CLASSES == ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
    for name, want in [("Angry", "anger"), ("happiness", "happy"), ("SADNESS", "sad"), ("surprised", "surprise"),
                       ("fearful", "fear"), ("disgusted", "disgust"), ("contemptuous", "contempt"), ("neutral", "neutral")]:
        assert canonical_name(name) == want
    with pytest.raises(DataError, match="known names: neutral, happy"):
        canonical_name("bored")


# --------------------------------------------------------------------------- image folders


def test_folders_with_splits(tmp_path):
    root = make_folders(tmp_path / "src", splits=("train", "validation", "test"))
    assert detect_format(root) == "folders"
    data = build(root, tmp_path)
    assert data.classes == ["neutral", "happy", "sad", "anger"]  # canonical order, only those present
    assert set(data.splits) == {"train", "val", "test"}
    assert all(len(s) == 12 for s in data.splits.values())
    assert data.channels == 1 and data.splits["train"].images.shape == (12, 48, 48, 1)
    assert data.splits["train"].images.dtype == np.uint8 and data.splits["train"].labels.dtype == np.int64
    assert all(labels_match_values(data, split) for split in data.splits)
    assert counts(data, "val") == {"neutral": 3, "happy": 3, "sad": 3, "anger": 3}


def test_folders_without_splits_carve_stratified_val(tmp_path):
    root = make_folders(tmp_path / "ck", splits=None, classes=("anger", "contempt", "happy"), per_class=10)
    first = build(root, tmp_path, val_fraction=0.2, split_seed=3)
    assert first.classes == ["happy", "anger", "contempt"]
    assert counts(first, "val") == {"happy": 2, "anger": 2, "contempt": 2}
    assert counts(first, "train") == {"happy": 8, "anger": 8, "contempt": 8}
    assert any("carved a stratified val split" in note and "split_seed=3" in note for note in first.meta["notes"])
    assert labels_match_values(first, "val")
    again = prepare(root, out=tmp_path / "again", progress=False, quiet=True, val_fraction=0.2, split_seed=3)
    assert np.array_equal(np.asarray(again.splits["val"].images), np.asarray(first.splits["val"].images))


def test_rafdb_numbered_folders_need_class_map(tmp_path):
    values = {str(k): class_value(CANONICAL_CLASSES.index(c)) for k, c in
              zip(range(1, 8), ["surprise", "fear", "disgust", "happy", "sad", "anger", "neutral"])}
    root = make_folders(tmp_path / "raf", splits=("train", "test"), classes=list(values), values=values, per_class=2)
    with pytest.raises(DataError, match="class_map='rafdb'"):
        build(root, tmp_path)
    data = build(root, tmp_path, class_map="rafdb")
    assert data.classes == FER7
    assert set(data.splits) == {"train", "val", "test"}
    assert labels_match_values(data, "test")


def test_unknown_class_folder_lists_known_names(tmp_path):
    root = make_folders(tmp_path / "src", classes=("happy", "bored"))
    with pytest.raises(DataError, match=r"bored.*known names: neutral, happy, sad"):
        build(root, tmp_path)


def test_empty_class_folder(tmp_path):
    root = make_folders(tmp_path / "src")
    (root / "train" / "fear").mkdir()
    with pytest.raises(DataError, match=r"train/fear.*empty class folder"):
        build(root, tmp_path)
    data = build(root, tmp_path, skip_bad=True)
    assert "fear" not in data.classes
    assert [s["reason"] for s in data.meta["skipped"]] == ["empty class folder (no image files)"]


def test_empty_split_and_no_train(tmp_path):
    root = make_folders(tmp_path / "src", splits=("val",))
    data = build(root, tmp_path)  # evaluation needs no training images (training refuses: test_evaluate.py)
    assert list(data.splits) == ["val"] and data.meta["source_splits"] == ["val"] and data.meta["stats_split"] == "val"
    empty = tmp_path / "empty"
    (empty / "test" / "fear").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: no images found in the folders layout"):
        build(empty, tmp_path / "again", skip_bad=True)
    (root / "train").mkdir()
    (root / "train" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="empty train split"):
        build(root, tmp_path)


def test_non_image_files_are_ignored_and_reported(tmp_path):
    root = make_folders(tmp_path / "src")
    (root / "train" / "happy" / "README.txt").write_text("not a face")
    (root / "train" / "happy" / ".DS_Store").write_bytes(b"\0")
    data = build(root, tmp_path)
    assert len(data.splits["train"]) == 12
    assert [Path(p).name for p in data.meta["ignored"]] == ["README.txt"]


# --------------------------------------------------------------------------- archives


@pytest.mark.parametrize("kind", ["tar.gz", "zip"])
def test_archives_read_in_place(tmp_path, kind):
    tree = make_folders(tmp_path / "tree" / "fer2013")
    archive = tmp_path / f"fer2013-trainval.{kind}"
    (tar_directory if kind == "tar.gz" else zip_directory)(tree, archive, "fer2013")
    assert detect_format(archive) == "folders"
    data = build(archive, tmp_path)
    direct = prepare(tree, out=tmp_path / "direct", progress=False, quiet=True)
    assert data.classes == direct.classes
    for split in ("train", "val"):
        assert np.array_equal(np.sort(data.splits[split].labels), np.sort(direct.splits[split].labels))
        assert labels_match_values(data, split)
    assert str(archive) in data.meta["source"]


def test_corrupt_archive(tmp_path):
    bad = write(tmp_path / "data.tar.gz", b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match="cannot read archive"):
        build(bad, tmp_path)


# --------------------------------------------------------------------------- FER2013 CSV


@pytest.mark.parametrize("icml", [False, True])
def test_fer2013_csv(tmp_path, icml):
    path = make_fer2013_csv(tmp_path / "src" / ("icml_face_data.csv" if icml else "fer2013.csv"), icml=icml)
    assert detect_format(path.parent) == "fer2013-csv"
    data = build(path.parent, tmp_path)
    assert data.classes == FER7
    assert {k: len(v) for k, v in data.splits.items()} == {"train": 28, "val": 14, "test": 14}
    assert all(labels_match_values(data, split) for split in data.splits)
    assert counts(data, "val")["anger"] == 2


def test_fer2013_csv_file_path_and_resize(tmp_path):
    path = make_fer2013_csv(tmp_path / "fer2013.csv")
    data = build(path, tmp_path, size=64, channels=3)
    assert data.splits["train"].images.shape == (28, 64, 64, 3)
    assert labels_match_values(data)


@pytest.mark.parametrize("emotion, pixels, message", [
    ("x1", None, "emotion 'x1' is not an integer"),
    ("9", None, "emotion label 9 out of range 0-6"),
    (None, ["abc"] + ["7"] * 2303, "non-numeric pixel value 'abc'"),
    (None, ["7"] * 2303, "expected 2304 pixel values"),
    (None, ["300"] + ["7"] * 2303, "pixel value 300 out of range"),
])
def test_fer2013_csv_bad_rows_name_file_and_line(tmp_path, emotion, pixels, message):
    path = make_fer2013_csv(tmp_path / "fer2013.csv")
    lines = path.read_text().splitlines()
    fields = lines[3].split(",")
    fields[0] = emotion or fields[0]
    fields[1] = " ".join(pixels) if pixels else fields[1]
    lines[3] = ",".join(fields)
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"fer2013.csv:4: {message}"):
        build(path, tmp_path)
    data = build(path, tmp_path, skip_bad=True)
    assert len(data.splits["train"]) == 27
    assert data.meta["skipped"][0]["item"].endswith("fer2013.csv:4")


def test_fer2013_csv_missing_column(tmp_path):
    path = tmp_path / "fer2013.csv"
    path.write_text("emotion,Usage\n0,Training\n")
    with pytest.raises(DataError, match=r"fer2013.csv:1: missing column\(s\) pixels"):
        build(path, tmp_path)


# --------------------------------------------------------------------------- AffectNet


@pytest.mark.parametrize("val_header", [True, False])
def test_affectnet_original(tmp_path, val_header):
    root = make_affectnet(tmp_path / "affectnet", val_header=val_header)
    assert detect_format(root) == "affectnet"
    data = build(root, tmp_path)
    assert data.classes == FER7
    assert len(data.splits["train"]) == 7 * 2 + 1 and len(data.splits["val"]) == 7 * 2
    assert data.meta["dropped"] == {
        "AffectNet code 7 (Contempt; pass affectnet_classes=8 to keep it)": 4,
        "AffectNet code 8 (None)": 4, "AffectNet code 9 (Uncertain)": 4, "AffectNet code 10 (No-Face)": 4,
    }
    assert data.meta["clipped_boxes"] == 1
    # the crop is the face box exactly: uniform grey of the class value, none of the dark background
    train = np.asarray(data.splits["train"].images)
    expected = np.array([class_value(k) for k in data.splits["train"].labels])
    assert np.abs(train.reshape(len(train), -1).astype(int) - expected[:, None]).max() <= 2
    assert any("no header line" in note for note in data.meta["notes"]) == (not val_header)


def test_affectnet_eight_classes_and_margin(tmp_path):
    root = make_affectnet(tmp_path / "affectnet")
    data = build(root, tmp_path, affectnet_classes=8, margin=0.25)
    assert data.classes == list(CANONICAL_CLASSES)
    assert counts(data, "train")["contempt"] == 2
    # with a margin the dark background shows around the face
    assert np.asarray(data.splits["val"].images)[:, 0, 0, 0].max() < 10


def test_affectnet_bad_rows(tmp_path):
    root = make_affectnet(tmp_path / "affectnet", codes=(0, 1, 2, 3, 4, 5, 6))
    with open(root / "training.csv", "a") as handle:
        handle.write("0/t0.png,16,16,32,32,,11,0,0\n")  # code out of range
        handle.write("missing/x.png,16,16,32,32,,1,0,0\n")  # image not there
        handle.write("0/t1.png,500,500,20,20,,1,0,0\n")  # box entirely outside the image
    with pytest.raises(DataError, match=r"training.csv:17: expression code 11 out of range 0-10"):
        build(root, tmp_path)
    data = build(root, tmp_path, skip_bad=True)
    reasons = [s["reason"] for s in data.meta["skipped"]]
    assert reasons[0] == "expression code 11 out of range 0-10"
    assert reasons[1].startswith("image file not found")
    assert "lies outside the 64x64 image" in reasons[2]
    assert data.meta["skipped"][2]["item"].endswith("training.csv:19 (" + str(root / "Manually_Annotated_Images/0/t1.png") + ")")
    assert len(data.splits["train"]) == 15


def test_affectnet_missing_column(tmp_path):
    root = make_affectnet(tmp_path / "affectnet", codes=(0,))
    text = (root / "training.csv").read_text().replace("face_width", "width").replace("subDirectory_filePath", "path")
    (root / "training.csv").write_text(text)
    with pytest.raises(DataError, match=r"training.csv: missing column\(s\) subDirectory_filePath, face_width"):
        build(root, tmp_path)


def test_affectnet2021(tmp_path):
    root = make_affectnet2021(tmp_path / "an2021")
    assert detect_format(root) == "affectnet2021"
    data = build(root, tmp_path)
    assert data.classes == FER7 and len(data.splits["train"]) == 14 and len(data.splits["val"]) == 14
    assert labels_match_values(data, "val")
    eight = prepare(root, out=tmp_path / "eight", progress=False, quiet=True, affectnet_classes=8)
    assert counts(eight, "train")["contempt"] == 2


def test_affectnet2021_missing_annotation(tmp_path):
    root = make_affectnet2021(tmp_path / "an2021")
    (root / "train_set" / "annotations" / "3_exp.npy").unlink()
    with pytest.raises(DataError, match=r"3.jpg: missing annotation file .*3_exp.npy"):
        build(root, tmp_path)
    data = build(root, tmp_path, skip_bad=True)
    assert len(data.splits["train"]) == 13 and len(data.meta["skipped"]) == 1


# --------------------------------------------------------------------------- detection and paths


def test_missing_path_and_unknown_layout(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        build(tmp_path / "nope", tmp_path)
    (tmp_path / "junk" / "a").mkdir(parents=True)
    (tmp_path / "junk" / "a" / "b.txt").write_text("x")
    with pytest.raises(DataError, match=r"not a known data set layout; looked for:\n  affectnet: .*\n  affectnet2021"):
        build(tmp_path / "junk", tmp_path)
    root = make_folders(tmp_path / "folders")
    with pytest.raises(DataError, match="not the affectnet layout"):
        build(root, tmp_path, format="affectnet")
    with pytest.raises(DataError, match="unknown format 'imagenet'"):
        build(root, tmp_path, format="imagenet")


# --------------------------------------------------------------------------- bad images


def _corrupt_jpeg() -> bytes:
    data = bytearray(image_bytes(grey(100, 32), "JPEG"))
    data[2:40] = b"x" * 38  # SOI kept, header segments destroyed
    return bytes(data)


BAD_IMAGES = {
    "corrupt.jpg": (_corrupt_jpeg(), "not an image file"),
    "truncated.png": (image_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)))[:300],
                      "corrupt or truncated image"),
    "truncated.jpg": (image_bytes(Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)),
                                  "JPEG")[:400], "corrupt or truncated image"),
    "zero.png": (b"", "empty file"),
    "text.jpg": (b"this is not an image\n", "not an image file"),
}


def test_bad_image_files_are_named(tmp_path):
    root = make_folders(tmp_path / "src")
    for name, (data, _) in BAD_IMAGES.items():
        write(root / "train" / "happy" / name, data)
    with pytest.raises(DataError) as info:
        build(root, tmp_path)
    message = str(info.value)
    assert f"{len(BAD_IMAGES)} image(s) could not be decoded" in message and "--skip-bad" in message
    for name, (_, reason) in BAD_IMAGES.items():
        assert any(name in line and reason in line for line in message.splitlines()), (name, message)
    data = build(root, tmp_path, skip_bad=True)
    assert len(data.splits["train"]) == 12
    assert sorted(Path(s["item"]).name for s in data.meta["skipped"]) == sorted(BAD_IMAGES)
    assert not (tmp_path / "cache.tmp").exists()


def test_bad_image_in_a_single_decode():
    for data, reason in BAD_IMAGES.values():
        with pytest.raises(DataError, match=reason):
            decode_image(data, size=48)


# --------------------------------------------------------------------------- modes and geometry


def _decoded(img: Image.Image, fmt: str = "PNG", channels=None, **save) -> np.ndarray:
    return decode_image(image_bytes(img, fmt, **save), size=8, channels=channels)[0]


def test_mode_conversions_give_sensible_values():
    # CMYK: pure cyan ink -> no red, full green and blue
    cyan = _decoded(Image.new("CMYK", (16, 16), (255, 0, 0, 0)), "JPEG", quality=95)
    assert cyan.shape == (8, 8, 3) and cyan[..., 0].max() < 30 and cyan[..., 1:].min() > 220
    # 16-bit grey at half scale -> 128, not clipped to 255 or wrapped
    half = Image.fromarray(np.full((16, 16), 32896, dtype=np.uint16))
    assert np.abs(_decoded(half).astype(int) - 128).max() <= 1
    # 32-bit integer and float images
    assert np.abs(_decoded(Image.fromarray(np.full((16, 16), 65535, dtype=np.int32)), "TIFF").astype(int) - 255).max() <= 1
    assert np.abs(_decoded(Image.fromarray(np.full((16, 16), 0.5, dtype=np.float32)), "TIFF").astype(int) - 128).max() <= 1
    # palette: colours come from the palette, not the indices
    pal = Image.new("P", (16, 16), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    assert _decoded(pal)[0, 0].tolist() == [200, 10, 10]
    # palette with a transparent entry and RGBA/LA: composited on black
    pal.info["transparency"] = 1
    assert _decoded(pal, transparency=1).max() == 0
    rgba = Image.new("RGBA", (16, 16), (250, 100, 0, 128))
    assert np.abs(_decoded(rgba)[0, 0].astype(int) - [125, 50, 0]).max() <= 2
    la = Image.new("LA", (16, 16), (200, 255))
    assert _decoded(la).shape == (8, 8, 1) and int(_decoded(la)[0, 0, 0]) == 200
    # mode 1 (bilevel)
    assert int(_decoded(Image.new("1", (16, 16), 1))[0, 0, 0]) == 255
    # forced channels
    assert _decoded(Image.new("RGB", (16, 16), (255, 0, 0)), channels=1)[0, 0, 0] == 76
    assert _decoded(grey(90), channels=3)[0, 0].tolist() == [90, 90, 90]
    assert to_8bit(Image.new("YCbCr", (4, 4))).mode == "RGB"


def test_colour_and_grey_detection(tmp_path):
    root = make_folders(tmp_path / "src")
    data = build(root, tmp_path)
    assert data.channels == 1
    # grey content stored as RGB JPEG is still grey; one truly colour image widens the cache
    write(root / "train" / "happy" / "rgb_grey.jpg", image_bytes(Image.new("RGB", (16, 16), (90, 90, 90)), "JPEG"))
    assert prepare(root, out=tmp_path / "c2", progress=False, quiet=True).channels == 1
    write(root / "train" / "happy" / "red.png", image_bytes(Image.new("RGB", (16, 16), (200, 0, 0))))
    colour = prepare(root, out=tmp_path / "c3", progress=False, quiet=True)
    assert colour.channels == 3 and len(colour.mean) == 3
    images = np.asarray(colour.splits["train"].images)
    assert any((im[..., 0] == 200).all() and (im[..., 1] == 0).all() for im in images)
    greys = [im for im in images if (im[..., 0] == im[..., 1]).all()]
    assert len(greys) == 13  # the grey faces were replicated into RGB
    assert labels_match_values(colour, "val")


def test_huge_and_tiny_images(monkeypatch):
    from PIL import JpegImagePlugin

    drafts = []
    real_draft = JpegImagePlugin.JpegImageFile.draft

    def spy(self, mode, size):
        result = real_draft(self, mode, size)
        drafts.append(self.size)
        return result

    monkeypatch.setattr(JpegImagePlugin.JpegImageFile, "draft", spy)
    big = Image.new("L", (6000, 6000), 77)
    out, _ = decode_image(image_bytes(big, "JPEG", quality=80), size=48)
    assert out.shape == (48, 48, 1) and np.abs(out.astype(int) - 77).max() <= 2
    assert drafts and max(drafts[-1]) <= 750  # decoded at 1/8 scale, not 6000x6000
    one = decode_image(image_bytes(Image.new("L", (1, 1), 140)), size=48)[0]
    assert one.shape == (48, 48, 1) and (one == 140).all()


def test_exif_orientation_is_applied():
    arr = np.zeros((20, 40), dtype=np.uint8)
    arr[:, :20] = 255  # left half white in storage
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: white goes to the top
    out = decode_image(image_bytes(img, "JPEG", exif=exif.tobytes(), quality=95), size=40)[0][..., 0]
    assert out[:10].mean() > 200 and out[-10:].mean() < 50


def test_png_draft_not_needed_for_reduce():
    # a large PNG (no draft) is still reduced, not rejected
    out, _ = decode_image(image_bytes(Image.new("RGB", (3000, 2000), (10, 20, 30))), size=32)
    assert out.shape == (32, 32, 3) and out[0, 0].tolist() == [10, 20, 30]
