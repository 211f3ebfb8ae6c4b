"""Face-recognition networks, their registry and complexity accounting."""

# Lazy re-exports (PEP 562): importing facepipe.models stays cheap; torch loads on first use of a name.
_EXPORTS = {
    "MODELS": "registry", "build_model": "registry", "list_models": "registry",
    "MobileFaceNet": "mobilefacenet", "IResNet": "iresnet",
    "Complexity": "complexity", "profile": "complexity", "memory_footprint": "complexity",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
