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


class DiskFull(DataError):
    """No space left where facepipe writes: names the file, the free space and what to move."""

    def __init__(self, path, free_bytes: int | None = None, need_bytes: int | None = None):
        free = "unknown" if free_bytes is None else f"{free_bytes / 2**20:.1f} MiB"
        need = "" if need_bytes is None else f", {need_bytes / 2**20:.1f} MiB needed"
        super().__init__(f"{path}: no space left on its filesystem ({free} free{need}); free some space, or "
                         "point run.dir / $FACEPIPE_CACHE at a disk with room (nothing half-written was kept)")


class ParityError(ModelError):
    """An exported artifact's embeddings differ from its reference model's beyond the format's tolerance."""


def first_line(e: BaseException, limit: int = 200) -> str:
    """The first non-empty line of an exception's message (foreign libraries' errors run to pages), never empty:
    the exception's type name when it has no message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0][:limit] if lines else type(e).__name__
