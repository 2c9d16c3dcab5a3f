"""Where FER2013's faces lie in their 48x48 images: the framing that fernoise.detect.crop_face copies.

Reads every ``--every``-th training image of the FER2013 archive (the ``folders`` layout of
``fer2013-trainval.tar.gz``), enlarges it 4x (bicubic) and pads it by its repeated edge to
three times its side, so that both detectors see the face at a size they handle, then runs
both detectors of :mod:`fernoise.detect` and prints the median place of

* YuNet's five landmarks (right eye, left eye, nose tip, right and left mouth corner), as
  fractions of the 48-pixel side: ``FER2013_LANDMARKS``;
* the 48x48 image around the Haar box: its centre as a fraction of the box from the box's
  top-left corner, and its side as a multiple of the box's side: ``FER2013_HAAR_FRAME``,

and how often each detector found the face (the one whose centre lies in the 48x48 image).

    python benchmarks/fer2013_framing.py [--archive ../shared/data/fer2013-trainval.tar.gz] [--every 5]
"""
from __future__ import annotations

import argparse
import io
import tarfile

import cv2
import numpy as np
from PIL import Image

from fernoise.detect import HaarFaceDetector, YuNetFaceDetector

SCALE, SIDE = 4, 48
PAD = SCALE * SIDE  # on each side: the face is the middle third of the detectors' input


def padded(grey48: np.ndarray) -> Image.Image:
    big = cv2.resize(grey48, (SCALE * SIDE, SCALE * SIDE), interpolation=cv2.INTER_CUBIC)
    return Image.fromarray(cv2.copyMakeBorder(big, PAD, PAD, PAD, PAD, cv2.BORDER_REPLICATE))


def to_unit(values: np.ndarray) -> np.ndarray:
    """Coordinates in the padded image as fractions of the original 48-pixel side."""
    return (np.asarray(values, dtype=np.float64) - PAD) / (SCALE * SIDE)


def central(faces: list) -> object:
    """The face whose box centre lies inside the original image (the largest if several), or None."""
    inside = [f for f in faces if 0 <= to_unit(f.box[0] + f.box[2] / 2) <= 1 and 0 <= to_unit(f.box[1] + f.box[3] / 2) <= 1]
    return max(inside, key=lambda f: f.box[2] * f.box[3], default=None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", default="../shared/data/fer2013-trainval.tar.gz")
    parser.add_argument("--every", type=int, default=5, help="use every k-th training image (default 5)")
    args = parser.parse_args()
    yunet, haar = YuNetFaceDetector(), HaarFaceDetector()
    landmarks, frames, seen = [], [], 0
    with tarfile.open(args.archive) as archive:
        for member in archive:
            if not (member.isfile() and "/train/" in member.name and member.name.lower().endswith((".jpg", ".png"))):
                continue
            seen += 1
            if seen % args.every:
                continue
            with Image.open(io.BytesIO(archive.extractfile(member).read())) as img:
                image = padded(np.asarray(img.convert("L")))
            face = central(yunet(image))
            if face is not None:
                landmarks.append(to_unit(face.landmarks))
            box = central(haar(image))
            if box is not None:
                x, y, w = to_unit(box.box[0]), to_unit(box.box[1]), box.box[2] / (SCALE * SIDE)
                frames.append(((0.5 - x) / w, (0.5 - y) / w, 1 / w))
    used = seen // args.every
    marks = np.median(np.stack(landmarks), axis=0)
    frame = np.median(np.array(frames), axis=0)
    print(f"{used} FER2013 training images (every {args.every}-th of {seen})")
    print(f"YuNet found the face in {len(landmarks)} ({100 * len(landmarks) / used:.1f}%), "
          f"Haar in {len(frames)} ({100 * len(frames) / used:.1f}%)")
    print("FER2013_LANDMARKS = " + np.array2string(marks, precision=4, separator=", ", floatmode="fixed"))
    print(f"FER2013_HAAR_FRAME = ({frame[0]:.4f}, {frame[1]:.4f}, {frame[2]:.4f})")
    print("landmark spread (interquartile range, fraction of the side): "
          + np.array2string(np.subtract(*np.percentile(np.stack(landmarks), [75, 25], axis=0)), precision=3))


if __name__ == "__main__":
    main()
