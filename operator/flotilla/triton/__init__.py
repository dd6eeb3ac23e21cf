"""Triton Inference Server: model configuration, the python-backend model, a local launcher.

`config` is pure (the operator imports it to render a serving revision's config.pbtxt);
`python_model` is copied into every artifact as `model.py`; `local` starts the tritonserver
binary shipped in the nvidia-pytriton wheel (tests, demo).
"""
