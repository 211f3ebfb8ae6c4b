"""Fake quantization (QuantFace-style): formulas, quantized layers, BN folding, spec, packed storage, QDQ export."""
