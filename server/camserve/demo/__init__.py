"""The bundled demo: a cluttered-digits task, its training script and the shipped GAP classifier.

The trained model lives in ``repository/demo`` (``model.keras``, ``labels.txt``, ``config.json``) and
is what ``camserve serve`` loads when no repository is given. The generator (``digits``) is needed only
to train and to score the model; serving needs neither it nor scikit-learn.
"""

from __future__ import annotations

from pathlib import Path

REPOSITORY_DIR: Path = Path(__file__).resolve().parent / "repository"
"""The bundled model repository (one model, ``demo``)."""

MODEL_DIR: Path = REPOSITORY_DIR / "demo"
"""Folder of the shipped demo model."""

__all__ = ["MODEL_DIR", "REPOSITORY_DIR"]
