"""Data files shipped with the package: the embedded `hydra-tiny-shapes` checkpoint (a regular package, so that
setuptools installs its files as package data)."""
