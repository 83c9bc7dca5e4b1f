"""The package version, in one place: setup.cfg reads it (attr:), `ctpg --version` prints it."""
__version__ = "0.1.0"
