"""Build of the optional C pieces; all other metadata lives in pyproject.toml.

All are ``optional=True``: without a working compiler (or, for the TLS engine, without OpenSSL's headers) the
install still succeeds and uringws runs on their pure-Python twins (``uringws doctor`` lists what is in use).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        # The C twins on the hot path read Python objects' slots through uringws/_fastattr.h.
        Extension("uringws.ws._speedups", ["uringws/ws/_speedups.c"], depends=["uringws/_fastattr.h"], optional=True),
        # The ring's hot path (SQE preparation, io_uring_enter, CQE dispatch); Linux only, no extra libraries.
        Extension("uringws.ring._ringc", ["uringws/ring/_ringc.c"], depends=["uringws/_fastattr.h"], optional=True),
        # Linked against the system's libssl, which must be the one Python's _ssl uses (checked at import).
        Extension("uringws.tls._engine", ["uringws/tls/_engine.c"],
                  depends=["uringws/_fastattr.h", "uringws/tls/_tls13.h"],
                  libraries=["ssl", "crypto"], optional=True),
    ]
)
