"""omnitrace: record what the kernel, the GPU and HTTP saw of a serving process tree under faults,
and verify it against a fault-injection matrix."""
__version__ = "0.1.0"
