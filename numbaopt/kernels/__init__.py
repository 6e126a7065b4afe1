"""The update kernels, one module per device: ``cpu`` (Numba ``njit``) and ``cuda``.

The per-element math of each optimizer lives in its own module (``adam_rule`` in
``numbaopt.optimizers.adam``); these modules only compile it and loop over elements.
"""
