"""Gluon (explicit-layout Triton) version of the chunked scan: an experiment, not a backend."""
