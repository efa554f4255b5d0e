"""Speed measurements (run on the GPU machine); results go to docs/BENCHMARKS.md."""
