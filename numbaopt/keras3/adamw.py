"""AdamW (Keras 3): Adam with decoupled weight decay, on by default.

The update is Adam's (``numbaopt.keras3.adam``) with Keras 3's weight decay before it,
``p <- p - p * weight_decay * lr`` (``weight_decay`` float32-rounded in a float64 model on
TensorFlow), skipped for the parameters ``exclude_from_weight_decay`` names. Keras 2.0 has
no AdamW.
"""
from typing import Any

from numbaopt.keras3.adam import Adam, adam_rule
from numbaopt.keras3.base import Argument


class AdamW(Adam):
    """Adam with decoupled weight decay (Keras 3's ``keras.optimizers.AdamW``)."""

    arguments = (
        Argument("learning_rate", 0.001, "learning_rate"),
        Argument("weight_decay", 0.004, "optional"),
        Argument("beta_1", 0.9, "unit"),
        Argument("beta_2", 0.999, "unit"),
        Argument("epsilon", 1e-7),
        Argument("amsgrad", False, "flag"),
    )
    rule = staticmethod(adam_rule)

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        super().check_settings(hyper)
        if hyper["weight_decay"] is None:
            raise ValueError("Argument `weight_decay` must be a float. Received: weight_decay=None")
