"""kernelsuite: fast kernels for training code (attention, data loading, batching) and the
benchmarks that prove them. See README.md."""

__version__ = "0.1.0"
