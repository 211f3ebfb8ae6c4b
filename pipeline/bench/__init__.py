"""`facepipe bench`: latency, memory and accuracy of every exported artifact, each through its own runtime.

latency.py (one artifact in a fresh child process, probe.py), jetson.py (tegrastats, nvpmodel),
accuracy.py (the shared evaluation path), gate.py (accuracy floors), report.py (table, JSON, Markdown,
plots), suite.py (all of it for a set of artifacts).
"""
