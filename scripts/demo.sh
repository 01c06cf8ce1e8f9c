#!/usr/bin/env bash
# The main job on the bundled demo cohort: build the spora TIFF cohort from scikit-image's sample
# images, convert it to one OME-Zarr cohort store, validate it and print its summary.
. "$(dirname "$0")/_env.sh" demo
OUT="${1:-demo_out}"
rm -rf "$OUT"
python -m spora_zarr.demo "$OUT/tiff"
spora-zarr convert "$OUT/tiff" "$OUT/cohort.zarr" --workers 2
spora-zarr validate "$OUT/cohort.zarr"
spora-zarr info "$OUT/cohort.zarr"
