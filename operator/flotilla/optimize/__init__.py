"""The optimizer that runs inside the optimization Job.

source -> ONNX export -> quantization recipes -> evaluation against fp32 -> accuracy gate ->
Triton model repository + manifest.json, published atomically under the artifact key.
Entry point: `python -m flotilla optimize ...` (`flotilla.optimize.cli.main`).
"""
