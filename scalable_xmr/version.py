"""The package's version: a leaf module, so that run.json and the MLflow tags can name it without
importing the root package (whose lazy attributes reach serving)."""

__version__ = "0.1.0"  # pyproject.toml's version (tests/cli/test_xmr_command.py checks they agree)
