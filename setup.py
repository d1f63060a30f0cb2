"""Build of the optional C mask speedup; all other metadata lives in pyproject.toml.

``optional=True``: without a working compiler the install still succeeds and uringws runs on the pure-Python
``apply_mask_py`` (``uringws doctor`` reports which one is active).
"""

from setuptools import Extension, setup

setup(ext_modules=[Extension("uringws.ws._speedups", ["uringws/ws/_speedups.c"], optional=True)])
