"""The training job: one queued training request in, one registered ONNX iteration out.

Runs as an Azure Container Apps Job execution (``python -m training_job --once``, GPU workload
profile) and, locally, as the CPU worker of ``make up`` (``--watch``): the same code path. Torch
is imported by the submodules that need it, never by the Function app.
"""
