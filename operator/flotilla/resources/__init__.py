"""Pure builders of the Kubernetes objects Flotilla owns. Dicts in, dicts out; no I/O."""
