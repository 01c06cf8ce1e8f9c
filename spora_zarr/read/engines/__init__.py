"""Read engines: the compiled direct engine (``_window.c``), tensorstore and zarr-python (zarrs)."""
