"""`make demo`: the whole path on this machine, step by step."""
