"""Synthetic cohorts and spora TIFF-layout writers shared by the tests, the benchmarks and the demo."""
