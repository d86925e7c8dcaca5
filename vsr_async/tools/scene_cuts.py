"""Hard scene cuts, found by a frame-difference test on small luma thumbnails.

A training window that spans a cut shows the model two unrelated scenes as if one moved into
the other; `prepare` never makes one. The test, per frame t > 0:

    d(t) = mean |Y(t) − Y(t−1)| over 64-pixel-wide luma thumbnails (area-averaged, 0–255)
    cut at t  ⇔  d(t) ≥ threshold  and  d(t) ≥ RATIO · median of the last RECENT d within the shot

The thumbnails average away noise, compression and small motion (a pan of a few pixels moves a
thumbnail by a fraction of a pixel). The second condition keeps a long fast pan, whose every
frame differs a lot from the one before, from being cut at every frame: a cut must stand out
from the shot's usual frame-to-frame change. Gradual transitions (fades, dissolves) are not
detected; prepare's users are expected to cut those out, or to accept the few windows they
spoil.
"""

from __future__ import annotations

import itertools
from collections import deque
from statistics import median

import numpy as np

THUMB_WIDTH = 64
CUT_THRESHOLD = 30.0
"""Default threshold on d(t), 0–255 scale (the tests' hard cut between two photographs: ~88;
their pans of 2 % of the frame width per frame: ~10)."""
RATIO = 3.0
RECENT = 8


class CutDetector:
    """Feed the thumbnails in order; `push` says whether that frame starts a new shot."""

    def __init__(self, threshold: float = CUT_THRESHOLD) -> None:
        self.threshold = threshold
        self._previous: np.ndarray | None = None
        self._recent: deque[float] = deque(maxlen=RECENT)

    def push(self, thumb: np.ndarray) -> bool:
        current = thumb.astype(np.float32)
        previous, self._previous = self._previous, current
        if previous is None:
            return False
        d = float(np.abs(current - previous).mean())
        typical = median(self._recent) if self._recent else 0.0
        if d >= self.threshold and d >= RATIO * typical:
            self._recent.clear()  # a new shot: its own motion sets the new baseline
            return True
        self._recent.append(d)
        return False


def shots(frame_count: int, cuts: tuple[int, ...] | list[int]) -> list[tuple[int, int]]:
    """[start, end) of every shot of a video with `frame_count` frames and these cuts."""
    bounds = [0, *sorted(c for c in cuts if 0 < c < frame_count), frame_count]
    return [(a, b) for a, b in itertools.pairwise(bounds) if b > a]
