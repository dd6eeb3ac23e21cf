"""The SmallModel API. `v1alpha1` is the only version so far."""
