"""visionpipe: a self-hosted replacement for Azure AI Custom Vision (image classification).

This package is the one library shared by the Function app (``function_app.py`` + ``functions/``)
and the training job (``training_job/``). It must never import torch: the Function app imports it.
"""

__version__ = "0.1.0"
