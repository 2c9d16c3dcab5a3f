"""One vocabulary for expression classes across data sets.

Every reader maps its own labels (AffectNet codes, FER2013 codes, folder names,
RAF-DB numbers) onto :data:`CANONICAL_CLASSES`, so a model trained on one data
set can be evaluated on another by class name.
"""
from __future__ import annotations

from typing import Iterable, Mapping

# Label order of every PackedData: a data set's classes are the subset it uses, in this order.
CANONICAL_CLASSES: tuple[str, ...] = (
    "neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt",
)


class DataError(ValueError):
    """Bad or unreadable input data; the message names the file (and line) and what is wrong."""


_SYNONYMS: dict[str, str] = {
    **{name: name for name in CANONICAL_CLASSES},
    "neutrality": "neutral", "calm": "neutral", "ne": "neutral",
    "happiness": "happy", "joy": "happy", "joyful": "happy", "ha": "happy",
    "sadness": "sad", "unhappy": "sad", "sa": "sad",
    "surprised": "surprise", "surprising": "surprise", "su": "surprise",
    "fearful": "fear", "afraid": "fear", "scared": "fear", "fe": "fear",
    "disgusted": "disgust", "di": "disgust",
    "angry": "anger", "an": "anger",
    "contemptuous": "contempt", "co": "contempt",
}

# Numeric label codes of the published data sets, as documented by their authors.
AFFECTNET_CODES: dict[int, str] = {
    0: "neutral", 1: "happy", 2: "sad", 3: "surprise", 4: "fear", 5: "disgust", 6: "anger", 7: "contempt",
}
AFFECTNET_NON_EXPRESSION: dict[int, str] = {8: "None", 9: "Uncertain", 10: "No-Face"}
FER2013_CODES: dict[int, str] = {
    0: "anger", 1: "disgust", 2: "fear", 3: "happy", 4: "sad", 5: "surprise", 6: "neutral",
}

# Named mappings for data sets whose class folders are numbers (``class_map="rafdb"``).
CLASS_MAPS: dict[str, dict[str, str]] = {
    "rafdb": {"1": "surprise", "2": "fear", "3": "disgust", "4": "happy", "5": "sad", "6": "anger", "7": "neutral"},
}


def _key(name: str) -> str:
    return name.strip().lower().replace("-", "").replace("_", "").replace(" ", "")


def canonical_name(name: str) -> str:
    """The canonical class for ``name`` (case and synonyms tolerated); DataError if unknown."""
    found = _SYNONYMS.get(_key(str(name)))
    if found is None:
        raise DataError(
            f"unknown class name {name!r}; known names: {', '.join(CANONICAL_CLASSES)} "
            f"(synonyms such as angry, happiness, sadness, surprised, fearful, disgusted are accepted)"
        )
    return found


def resolve_class_map(class_map: str | Mapping[str, str] | None) -> dict[str, str] | None:
    """Turn ``class_map`` (a name from CLASS_MAPS or folder->class mapping) into folder->canonical name."""
    if class_map is None:
        return None
    if isinstance(class_map, str):
        if class_map.lower() not in CLASS_MAPS:
            raise DataError(f"unknown class_map {class_map!r}; named maps: {', '.join(CLASS_MAPS)}")
        return dict(CLASS_MAPS[class_map.lower()])
    return {str(folder): canonical_name(name) for folder, name in class_map.items()}


def ordered_classes(names: Iterable[str]) -> list[str]:
    """The distinct canonical names in ``names``, in canonical label order."""
    present = set(names)
    return [name for name in CANONICAL_CLASSES if name in present]
