"""facepipe: turn a big face-recognition model into a small, fast, measured one."""

__version__ = "0.1.0"
