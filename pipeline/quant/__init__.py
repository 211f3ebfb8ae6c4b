"""The quantize stage\x27s machinery: calibration / fine-tuning data (real, synthetic, inversion), PTQ, QAT, NNCF."""
