"""Tools of the pretrained bench-paper mode (docs/results.md)."""
