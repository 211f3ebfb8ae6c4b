"""Face-recognition networks, their registry and complexity accounting."""
