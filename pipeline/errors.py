"""User-facing error types. The CLI turns any FacepipeError into one line on stderr and exit code 2."""

from __future__ import annotations


class FacepipeError(Exception):
    """An error caused by the user's input (config, files, data, environment), not by a bug."""

    exit_code = 2


class ConfigError(FacepipeError):
    """Invalid pipeline.yaml or --set override."""


class DataError(FacepipeError):
    """Missing, corrupt or malformed data file, record or line."""


class ModelError(FacepipeError):
    """A model or teacher that cannot be loaded or does not match the config."""


class BackendUnavailable(FacepipeError):
    """An optional runtime (OpenVINO, TensorRT, CUDA, ...) is not installed or the device is absent."""


class StageError(FacepipeError):
    """A stage cannot run (missing upstream output, stage not available, ...)."""


class ParityError(ModelError):
    """An exported artifact's embeddings differ from its reference model's beyond the format's tolerance."""
