"""Import TensorFlow without its start-up noise on the console.

TensorFlow's C++ runtime writes notices to file descriptor 2 before absl logging is initialised,
so TF_CPP_MIN_LOG_LEVEL cannot silence them: "Could not find cuda drivers", "oneDNN custom
operations are on", "failed call to cuInit ... (303)" on every CPU machine. We capture fd 2
while TensorFlow loads and looks for devices, drop the lines known to be harmless, and replay
everything else, so a real problem is still shown. `debug=true` shows everything.
"""

from __future__ import annotations

import os
import re
import sys
import tempfile

_HARMLESS = re.compile(
    r"All log messages before absl::InitializeLog|port\.cc:\d+\] oneDNN custom operations|"
    r"cudart_stub\.cc:\d+\] Could not find cuda drivers|cpu_feature_guard\.cc|"
    r"rebuild TensorFlow with the appropriate compiler flags|To enable the following instructions|"
    r"cuda_platform\.cc:\d+\] failed call to cuInit.*\(303\)|cuda_executor\.cc.*NUMA node|"
    r"Memory patch applied: M_TRIM_THRESHOLD")


def import_tensorflow(verbose: bool = False):
    # 3 also hides C++ ERROR lines such as the JPEG decoder's "Premature end of JPEG data", which
    # the image scan reports as a bad example itself; real failures still arrive as exceptions.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1" if verbose else "3")
    if verbose or "tensorflow" in sys.modules:
        import tensorflow as tf
        return tf
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            import tensorflow as tf
            tf.config.list_physical_devices()  # device discovery prints the cuInit notice
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            kept = [line for line in capture.read().decode(errors="replace").splitlines()
                    if line.strip() and not _HARMLESS.search(line)]
    if kept:
        print("\n".join(kept), file=sys.stderr)
    return tf
