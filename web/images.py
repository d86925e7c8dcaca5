"""PNG files of the latest validation strips (LR | output | GT), encoded once per validation.

Encoding runs in a thread (it takes milliseconds per strip and must not stall the event loop);
concurrent requests for the same strip share one encoding. The cache holds only the latest
validation: a new validation count replaces it.
"""

from __future__ import annotations

import asyncio
import io
from typing import Any

import numpy as np
from PIL import Image

from vsr_async.runtime.store import StatsStore


def encode_png(strip: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(strip, dtype=np.uint8)).save(
        buffer, format="PNG", compress_level=3
    )
    return buffer.getvalue()


class StripImages:
    def __init__(self, store: StatsStore) -> None:
        self.store = store
        self._count = -1
        self._encoded: dict[int, asyncio.Future[bytes]] = {}

    @property
    def validation_count(self) -> int:
        return self.store.validation.count

    def describe(self) -> dict[str, Any]:
        """The strips of the latest validation: index, image name, size (for the panel)."""
        v = self.store.validation
        strips = v.result.strips if v.result is not None else ()
        names = [m.name for m in v.result.images] if v.result is not None else []
        return {
            "validation_count": v.count,
            "validation_step": v.step,
            "images": [
                {
                    "index": i,
                    "name": names[i] if i < len(names) else f"image {i}",
                    "width": int(strip.shape[1]),
                    "height": int(strip.shape[0]),
                    "url": f"/api/validation/images/{i}.png",
                }
                for i, strip in enumerate(strips)
            ],
        }

    def has(self, index: int) -> bool:
        result = self.store.validation.result
        return result is not None and 0 <= index < len(result.strips)

    async def png(self, index: int) -> bytes | None:
        """The PNG of strip `index` of the latest validation; None if there is no such strip."""
        v = self.store.validation
        strips = v.result.strips if v.result is not None else ()
        if not 0 <= index < len(strips):
            return None
        if v.count != self._count:
            self._count, self._encoded = v.count, {}
        future = self._encoded.get(index)
        if future is None:
            future = asyncio.ensure_future(asyncio.to_thread(encode_png, strips[index]))
            self._encoded[index] = future
        try:
            return await asyncio.shield(future)
        except Exception:
            self._encoded.pop(index, None)  # a failed encoding is tried again next time
            raise
