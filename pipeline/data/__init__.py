"""Face data: readers, writers and alignment."""
