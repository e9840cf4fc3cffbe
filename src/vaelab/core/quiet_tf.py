"""Import TensorFlow without its start-up chatter on machines that have no GPU driver.

TensorFlow's GPU build probes for CUDA when it starts; without a driver it prints "Could not
find cuda drivers" and "failed call to cuInit ... (303)", which read like faults. Those lines,
and the informational ones it writes before its logging honours TF_CPP_MIN_LOG_LEVEL, are
dropped here; every other line TensorFlow writes to stderr passes through unchanged.
"""

from __future__ import annotations

import os
import re
import sys
import threading
from pathlib import Path
from types import ModuleType

NVIDIA_DRIVER = Path("/proc/driver/nvidia/version")
_NOISE = re.compile(
    r"^I\d{4} |^WARNING: All log messages before absl::InitializeLog|^To enable the following"
)
_CUDA_PROBE = re.compile(r"cuInit|cudart_stub|cuda_platform|cuda drivers|cuda_(dnn|fft|blas)")


def keep_line(line: str, has_driver: bool) -> bool:
    """Whether a line TensorFlow wrote while starting should reach the user."""
    if _NOISE.search(line):
        return False
    return has_driver or not _CUDA_PROBE.search(line)


def import_tensorflow() -> ModuleType:
    """``import tensorflow`` and list its devices (where the CUDA probe happens), passing its
    stderr through `keep_line`."""
    has_driver = NVIDIA_DRIVER.exists()
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)

    def forward() -> None:
        with os.fdopen(read_end, "r", errors="replace") as lines:
            for line in lines:
                if keep_line(line, has_driver):
                    os.write(saved, line.encode())

    thread = threading.Thread(target=forward, daemon=True)
    thread.start()
    try:
        import tensorflow as tf

        tf.config.list_physical_devices()
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # closes the pipe's last write end: the reader sees EOF
        thread.join(timeout=10)
        os.close(saved)
    return tf
