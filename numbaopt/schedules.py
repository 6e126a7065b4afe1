"""Learning-rate schedules of Keras 2.0, computed once per step in the parameters' dtype."""


def decayed_lr(lr, decay, iterations, dtype):
    """Keras 2.0's time-based decay, ``lr / (1 + decay * iterations)``, in ``dtype``."""
    if not decay:
        return dtype(lr)
    return dtype(lr) / (dtype(1) + dtype(decay) * dtype(iterations))
