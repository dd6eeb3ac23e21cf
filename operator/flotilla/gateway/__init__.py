"""The OpenAI-compatible gateway: one stateless front door for every served SmallModel.

Pure where it decides (`protocol`, `routing`, `keys`), I/O at the edges (`watch` for the API
server, `upstream` for the Triton pods, `server` for clients). docs/gateway.md has the rules.
"""
