"""Load TensorFlow safely in a process that also runs torch.

TensorFlow and Triton (which torch loads through ``torch._dynamo``, imported by torchvision and
so by onnx2torch) each bundle their own LLVM. Loading Triton's library *after* TensorFlow's
crashes the process with a segmentation fault; the other order works (measured with torch
2.14.1, triton as pinned by torch, tensorflow 2.21.0: ``import tensorflow; import triton`` dies,
``import triton; import tensorflow`` does not). The export job converts to TensorFlow and to
Core ML (whose coremltools imports TensorFlow when it is installed) in one process, so every
exporter that may import TensorFlow calls :func:`before_tensorflow` first.
"""

from __future__ import annotations

import os
import sys
from contextlib import suppress
from types import ModuleType


def before_tensorflow() -> None:
    """Load torch's Triton-backed modules before TensorFlow, and quiet TensorFlow's C++
    start-up chatter (CUDA probing, CPU features), which is not the job's log."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if "tensorflow" in sys.modules:
        return
    with suppress(ImportError):
        import torch._dynamo  # noqa: F401 - loads Triton (and its LLVM) first


def tensorflow() -> ModuleType:
    before_tensorflow()
    import tensorflow as tf

    return tf
