"""The sample image of README's quick start: ``python -m camserve.demo.sample`` rewrites it.

One held-out cluttered-digits image (handwriting never seen in training, three kinds of clutter, little
noise so the PNG stays small), enlarged 4x with nearest-neighbour so the overlay that ``camserve
explain`` writes at the image's own size is easy to look at. The server shrinks it back to 64x64 with
area averaging, which undoes a 4x nearest-neighbour enlargement exactly: the model sees the generated
image pixel for pixel.

The file ships inside the package (``camserve/demo/samples/``, pyproject's package-data) and in the
repository at ``server/camserve/demo/samples/``, where the quick start names it.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

from camserve.demo.canvas import Box
from camserve.demo.digits import generate

SAMPLES_DIR: Path = Path(__file__).resolve().parent / "samples"
SAMPLE_SEED: int = 2026
SAMPLE_INDEX: int = 116
"""The sample is image ``SAMPLE_INDEX`` of ``generate(SAMPLE_INDEX + 1, "heldout", seed=SAMPLE_SEED)``:
picked by eye among that set's mid-sized digits with three kinds of clutter and little noise."""
SAMPLE_LABEL: int = 6
UPSCALE: int = 4
SAMPLE_PATH: Path = SAMPLES_DIR / f"digit{SAMPLE_LABEL}.png"
"""The shipped PNG, (256, 256, 3) RGB."""


def sample() -> tuple[np.ndarray, int, Box]:
    """(image (256, 256, 3) uint8 RGB, label, box (x0, y0, x1, y1) in the enlarged image's pixels)."""
    data = generate(SAMPLE_INDEX + 1, "heldout", seed=SAMPLE_SEED)
    image, label, box = data.images[SAMPLE_INDEX], int(data.labels[SAMPLE_INDEX]), data.boxes[SAMPLE_INDEX]
    if label != SAMPLE_LABEL:  # the generator changed: pick a new sample and rename the file
        raise RuntimeError(f"sample {SAMPLE_INDEX} is now a {label}, not a {SAMPLE_LABEL}")
    big = np.repeat(np.repeat(image, UPSCALE, axis=0), UPSCALE, axis=1)
    x0, y0, x1, y1 = (int(v) * UPSCALE for v in box)
    return big, label, (x0, y0, x1, y1)


def main(argv: list[str] | None = None) -> int:
    image, label, box = sample()
    SAMPLES_DIR.mkdir(parents=True, exist_ok=True)
    bgr = cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    if not cv2.imwrite(str(SAMPLE_PATH), bgr, [cv2.IMWRITE_PNG_COMPRESSION, 9]):
        raise SystemExit(f"error: cannot write {SAMPLE_PATH}")
    size = SAMPLE_PATH.stat().st_size
    print(f"wrote {SAMPLE_PATH} ({image.shape[1]}x{image.shape[0]}, digit {label}, box {box}, {size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
