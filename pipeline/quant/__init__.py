"""The quantize stage's machinery: calibration / fine-tuning data (real, synthetic, inversion), PTQ, QAT, NNCF."""
