"""The command line: a thin layer over the Python API (never imported by it)."""
