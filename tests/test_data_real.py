"""The real FER2013 archive (``fer2013-trainval.tar.gz``) read in place; skipped when absent."""
from __future__ import annotations

import collections
import io
import tarfile

import numpy as np
import pytest
from PIL import Image

from fernoise.data import canonical_name, load_data

# FER2013's published class counts (Training and PublicTest), in canonical label order.
EXPECTED = {
    "train": {"neutral": 4965, "happy": 7215, "sad": 4830, "surprise": 3171, "fear": 4097, "disgust": 436, "anger": 3995},
    "val": {"neutral": 607, "happy": 895, "sad": 653, "surprise": 415, "fear": 496, "disgust": 56, "anger": 467},
}


@pytest.mark.realdata
def test_fer2013_archive_is_read_completely_and_correctly(fer2013_archive, tmp_path):
    data = load_data(fer2013_archive, cache_dir=tmp_path, progress=False, quiet=True)
    assert data.meta["format"] == "folders"
    assert data.classes == list(EXPECTED["train"])
    assert {name: len(split) for name, split in data.splits.items()} == {"train": 28709, "val": 3589}
    assert data.meta["class_counts"] == EXPECTED
    for name, split in data.splits.items():
        assert np.array_equal(np.bincount(split.labels, minlength=7), list(EXPECTED[name].values()))
        assert split.images.shape == (len(split), 48, 48, 1) and split.images.dtype == np.uint8
    assert data.channels == 1 and 0.45 < data.mean[0] < 0.58 and 0.2 < data.std[0] < 0.4
    assert data.meta["skipped"] == [] and data.meta["notes"] == []

    # the reader's counts equal a direct count of the archive's members, and pixels are untouched
    direct: collections.Counter = collections.Counter()
    first = None
    with tarfile.open(fer2013_archive) as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and parts[-1].lower().endswith(".jpg"):
                direct[(parts[-3], canonical_name(parts[-2]))] += 1
                if first is None and parts[-3] == "train":
                    first = (canonical_name(parts[-2]), np.asarray(Image.open(io.BytesIO(tar.extractfile(member).read()))))
    assert {(s, c): n for s, counts in data.meta["class_counts"].items() for c, n in counts.items()} == dict(direct)
    label, pixels = first
    assert data.classes[data.splits["train"].labels[0]] == label
    assert np.array_equal(data.splits["train"].images[0, :, :, 0], pixels)

    again = load_data(fer2013_archive, cache_dir=tmp_path, progress=False, quiet=True)
    assert again.reused and again.path == data.path
