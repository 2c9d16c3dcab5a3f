"""Data sets: readers, packed caches, batch augmentation and batch iteration."""
from __future__ import annotations

from fernoise.data.augment import Augmenter, normalize
from fernoise.data.cache import load_data, prepare
from fernoise.data.classes import CANONICAL_CLASSES, DataError, canonical_name
from fernoise.data.formats import detect_format
from fernoise.data.loader import class_weights, fits_on_device, iterate_batches, num_batches, to_device
from fernoise.data.packed import PackedData, Split

__all__ = [
    "CANONICAL_CLASSES", "Augmenter", "DataError", "PackedData", "Split", "canonical_name", "class_weights",
    "detect_format", "fits_on_device", "iterate_batches", "load_data", "normalize", "num_batches", "prepare",
    "to_device",
]
