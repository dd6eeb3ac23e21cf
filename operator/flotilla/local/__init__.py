"""Real components run as local processes (the tritonserver of the nvidia-pytriton wheel), for
tests, the benchmarks, the demo and the process node. Not part of the operator: it spawns
processes, so it lives apart from the pure packages."""
