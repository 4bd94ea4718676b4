"""nano2's engine: array backends, the flat parameter store and the fused kernels."""
