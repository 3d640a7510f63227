"""The report layer: many runs read as studies (studies.py), what they found in words (findings.py),
and the report written from them (write.py, plots.py, complexity.py); `python -m mlp_lab.report`.

It reads the training core's records and imports none of its torch or Lightning: nothing of the
core imports this layer.
"""
