"""Signal handling: SIGINT/SIGTERM stop the run at the next step boundary, with a final
checkpoint; a second one of either runs the hard-exit hooks (restore the terminal) and ends the
process at once. Every file on disk is whole either way (writes are atomic).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class StopSignals:
    """`stop(reason)` asks for a stop; `hard_exit()` runs the hooks before `os._exit`;
    `validating()` says whether a stop would interrupt a validation (for the log line)."""

    def __init__(
        self,
        stop: Callable[[str], Any],
        hard_exit: Callable[[], None],
        validating: Callable[[], bool],
    ) -> None:
        self._stop = stop
        self._hard_exit = hard_exit
        self._validating = validating
        self.seen = 0

    def install(self) -> None:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, self.on_signal, signal.SIGINT)
        loop.add_signal_handler(signal.SIGTERM, self.on_signal, signal.SIGTERM)

    def on_signal(self, signum: int) -> None:
        self.seen += 1
        name = signal.Signals(signum).name
        if self.seen > 1:
            self._hard_exit()
            message = f"\nvsr_async: {name} again: exiting now, without a final checkpoint (every "
            message += "file on disk is whole: writes are atomic)\n"
            os.write(2, message.encode())
            os._exit(128 + signum)
        log.warning(
            "%s received: stopping%s with a final checkpoint; send it again to exit at once",
            name,
            " (interrupting the validation)" if self._validating() else "",
        )
        self._stop(f"signal {name}")
