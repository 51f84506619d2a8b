"""The installed distribution's version, for the server metadata and the OpenAPI document."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("surety-serving")
except PackageNotFoundError:  # running from a checkout that was never installed
    __version__ = "0.0.0"
