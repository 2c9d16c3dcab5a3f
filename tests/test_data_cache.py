"""The packed cache: round trip, reuse, invalidation, atomicity, parallel decoding."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

import fernoise.data.cache as cache_module
from data_fixtures import grey, image_bytes, labels_match_values, make_fer2013_csv, make_folders, write
from fernoise.data import DataError, PackedData, load_data, prepare
from fernoise.io import OutputError


def load(source, tmp_path, **options) -> PackedData:
    return load_data(source, cache_dir=tmp_path / "caches", progress=False, quiet=True, **options)


def test_prepare_writes_a_memory_mappable_cache(tmp_path, capsys):
    root = make_folders(tmp_path / "src", splits=("train", "val", "test"))
    out = tmp_path / "cache"
    data = prepare(root, out=out, progress=False)
    printed = capsys.readouterr().err
    assert "train" in printed and "neutral" in printed and "skipped: 0" in printed
    names = {p.name for p in out.iterdir()}
    assert {"meta.json", "summary.json", "summary.txt", "samples.png"} <= names
    assert {f"{kind}_{split}.npy" for kind in ("images", "labels") for split in ("train", "val", "test")} <= names
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]  # no temp dirs left behind
    images = np.load(out / "images_train.npy", mmap_mode="r")
    assert images.shape == (12, 48, 48, 1) and images.dtype == np.uint8
    assert isinstance(data.splits["train"].images, np.memmap)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["format"] == "folders" and meta["classes"] == ["neutral", "happy", "sad", "anger"]
    assert meta["size"] == 48 and meta["channels"] == 1 and len(meta["fingerprint"]) == 16
    assert meta["options"]["val_fraction"] == 0.1
    expected_mean = np.asarray(images, dtype=np.float64).mean() / 255
    assert meta["mean"][0] == pytest.approx(expected_mean, abs=1e-5)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["class_counts"]["test"] == {"neutral": 3, "happy": 3, "sad": 3, "anger": 3}
    assert "anger" in (out / "summary.txt").read_text()
    # a prepared cache is itself a valid source
    again = load_data(out, progress=False, quiet=True)
    assert again.reused and again.classes == data.classes
    assert np.array_equal(again.splits["val"].images, data.splits["val"].images)


def test_load_data_reuses_and_invalidates(tmp_path):
    root = make_folders(tmp_path / "src")
    first = load(root, tmp_path)
    assert not first.reused and first.path.parent == tmp_path / "caches"
    second = load(root, tmp_path)
    assert second.reused and second.meta["created"] == first.meta["created"]
    assert second.meta["fingerprint"] == first.meta["fingerprint"]
    # a file added: rebuilt in place
    write(root / "train" / "happy" / "new.png", image_bytes(grey(50)))
    third = load(root, tmp_path)
    assert not third.reused and third.path == first.path and len(third.splits["train"]) == 13
    # a file changed (same name, new content): rebuilt
    write(root / "train" / "happy" / "new.png", image_bytes(grey(80, size=20)))
    os.utime(root / "train" / "happy" / "new.png", ns=(1, 1))
    fourth = load(root, tmp_path)
    assert not fourth.reused and fourth.meta["fingerprint"] != third.meta["fingerprint"]
    assert load(root, tmp_path).reused
    # an option changed: a cache of its own
    bigger = load(root, tmp_path, size=32)
    assert not bigger.reused and bigger.path != first.path and bigger.splits["train"].images.shape[1] == 32
    assert load(root, tmp_path).reused


def test_archive_and_csv_fingerprints_use_the_file_stat(tmp_path):
    path = make_fer2013_csv(tmp_path / "fer2013.csv")
    assert not load(path, tmp_path).reused
    assert load(path, tmp_path).reused
    os.utime(path, ns=(10**18, 10**18))
    assert not load(path, tmp_path).reused


def test_default_cache_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("FERNOISE_CACHE", str(tmp_path / "envcache"))
    data = load_data(make_folders(tmp_path / "src"), progress=False, quiet=True)
    assert data.path.parent == tmp_path / "envcache"


def test_failure_mid_prepare_keeps_the_previous_cache(tmp_path, monkeypatch):
    root = make_folders(tmp_path / "src")
    out = tmp_path / "cache"
    old = prepare(root, out=out, progress=False, quiet=True)
    old_labels = np.asarray(old.splits["train"].labels).copy()
    write(root / "train" / "happy" / "new.png", image_bytes(grey(50)))

    def broken(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module, "_sample_grid", broken)  # fails after the arrays are written
    with pytest.raises(OSError):
        prepare(root, out=out, progress=False, quiet=True)
    intact = load_data(out, progress=False, quiet=True)
    assert len(intact.splits["train"]) == 12 and np.array_equal(intact.splits["train"].labels, old_labels)
    assert sorted(os.listdir(tmp_path)) == ["cache", "src"]  # the half-built directory is gone
    # a fresh destination: nothing at all is left
    with pytest.raises(OSError):
        prepare(root, out=tmp_path / "fresh", progress=False, quiet=True)
    assert not (tmp_path / "fresh").exists()


def test_meta_json_is_written_last(tmp_path, monkeypatch):
    written = []
    real = cache_module.write_text_atomic

    def spy(path, text):
        written.append(os.path.basename(path))
        real(path, text)

    monkeypatch.setattr(cache_module, "write_text_atomic", spy)
    prepare(make_folders(tmp_path / "src"), out=tmp_path / "cache", progress=False, quiet=True)
    assert written[-1] == "meta.json"


def test_damaged_cache_is_rebuilt_by_load_data(tmp_path):
    root = make_folders(tmp_path / "src")
    first = load(root, tmp_path)
    (first.path / "images_val.npy").write_bytes(b"garbage")
    with pytest.raises(DataError, match="damaged cache"):
        load_data(first.path, progress=False, quiet=True)
    rebuilt = load(root, tmp_path)
    assert not rebuilt.reused and len(rebuilt.splits["val"]) == 12


def test_refuses_to_replace_a_directory_that_is_not_a_cache(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "thesis.tex").write_text("precious")
    with pytest.raises(OutputError, match="not a fernoise data cache"):
        prepare(make_folders(tmp_path / "src"), out=out, progress=False, quiet=True)
    assert (out / "thesis.tex").read_text() == "precious"


def test_parallel_decoding_matches_serial(tmp_path, monkeypatch):
    root = make_folders(tmp_path / "src", per_class=40)
    write(root / "train" / "sad" / "broken.jpg", b"not a jpeg")
    serial = prepare(root, out=tmp_path / "serial", progress=False, quiet=True, workers=1, skip_bad=True)
    monkeypatch.setattr(cache_module, "_SERIAL_BELOW", 0)
    parallel = prepare(root, out=tmp_path / "parallel", progress=False, quiet=True, workers=2, skip_bad=True)
    for split in ("train", "val"):
        assert np.array_equal(serial.splits[split].images, parallel.splits[split].images)
        assert np.array_equal(serial.splits[split].labels, parallel.splits[split].labels)
    assert parallel.meta["skipped"] == serial.meta["skipped"] and len(parallel.meta["skipped"]) == 1
    assert labels_match_values(parallel)


def test_options_are_validated(tmp_path):
    root = make_folders(tmp_path / "src")
    for bad in ({"size": 4}, {"channels": 2}, {"val_fraction": 1.5}, {"affectnet_classes": 6}, {"margin": -1}):
        with pytest.raises(DataError):
            load(root, tmp_path, **bad)
    with pytest.raises(DataError, match="unknown class_map 'ferplus'"):
        load(root, tmp_path, class_map="ferplus")


def test_synthetic_is_generated_not_cached(tmp_path, monkeypatch):
    import fernoise.data.synthetic as synthetic

    real = synthetic.make_synthetic
    calls = []

    def small(split_sizes=None, size=48, channels=1, seed=0):
        calls.append((size, channels, seed))
        return real({"train": 70, "val": 14}, size=size, channels=channels, seed=seed)

    monkeypatch.setattr(synthetic, "make_synthetic", small)
    data = load("synthetic", tmp_path, size=32, split_seed=5)
    assert calls == [(32, 1, 5)] and data.size == 32 and not (tmp_path / "caches").exists()
    prepared = prepare("synthetic", out=tmp_path / "syn", size=32, split_seed=5, progress=False, quiet=True)
    assert prepared.meta["format"] == "synthetic" and len(prepared.splits["train"]) == 70
    assert np.array_equal(prepared.splits["val"].images, data.splits["val"].images)


def _load_in_child(root: str, caches: str, queue) -> None:
    data = load_data(root, cache_dir=caches, progress=False, quiet=True, workers=1)
    queue.put((data.reused, data.meta["created"], len(data.splits["train"])))


def test_processes_loading_an_uncached_source_at_once_build_it_once(tmp_path):
    import multiprocessing

    root = make_folders(tmp_path / "src")
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    children = [context.Process(target=_load_in_child, args=(str(root), str(tmp_path / "caches"), queue))
                for _ in range(3)]
    for child in children:
        child.start()
    results = [queue.get(timeout=120) for _ in children]
    for child in children:
        child.join(timeout=60)
    assert sorted(reused for reused, _, _ in results) == [False, True, True]  # one build, two reuses
    assert len({created for _, created, _ in results}) == 1 and {n for _, _, n in results} == {12}
    entries = sorted(p.name for p in (tmp_path / "caches").iterdir())
    assert len(entries) == 2 and entries[0] == f".{entries[1]}.lock"  # one cache, no temporaries left
