"""The tiny trained bundles of the serving tests, shared with the fuzz tests."""

from tests.serving.conftest import tiny_classical_run  # noqa: F401  (session fixture)
