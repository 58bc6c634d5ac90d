"""The bundled demo: a cluttered-digits task, its training script and the shipped GAP classifier.

The trained model lives in ``repository/demo`` (``model.keras``, ``labels.txt``, ``config.json``) and
is what ``camserve serve`` loads when no repository is given; ``samples/digit6.png`` is the quick
start's image (``sample``). The training generator (``digits`` with ``strokes`` and ``sketch``) and the
differently made held-out set (``printed``) are needed only to train and to score the model; serving
needs none of them, nor scikit-learn or scikit-image.
"""

from __future__ import annotations

from pathlib import Path

REPOSITORY_DIR: Path = Path(__file__).resolve().parent / "repository"
"""The bundled model repository (one model, ``demo``)."""

MODEL_DIR: Path = REPOSITORY_DIR / "demo"
"""Folder of the shipped demo model."""

__all__ = ["MODEL_DIR", "REPOSITORY_DIR"]
