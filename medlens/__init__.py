"""medlens: medical image analysis with deep and classical learning."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("medlens")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0.0.0+local"
