"""The version the nodes announce is the installed distribution's, as importlib.metadata says,
read without loading importlib.metadata (mesh/version.py)."""

from importlib import metadata

from mesh.version import DISTRIBUTION, installed_version


def test_installed_version_is_the_distributions_as_importlib_metadata_reads_it() -> None:
    assert installed_version() == metadata.version(DISTRIBUTION)
