"""The report layer: runs as studies, their findings, the report; imports no torch."""
