"""The Keras 2.0 optimizers, and Keras's ``serialize`` / ``deserialize`` / ``get``."""
from numbaopt.optimizers.adadelta import Adadelta
from numbaopt.optimizers.adagrad import Adagrad
from numbaopt.optimizers.adam import Adam
from numbaopt.optimizers.adamax import Adamax
from numbaopt.optimizers.base import Optimizer, OptimizerState
from numbaopt.optimizers.nadam import Nadam
from numbaopt.optimizers.rmsprop import RMSprop
from numbaopt.optimizers.sgd import SGD
from numbaopt.registry import deserialize, get, serialize

__all__ = [
    "Optimizer", "OptimizerState", "SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "Adamax", "Nadam",
    "TFOptimizer", "serialize", "deserialize", "get",
]


def __getattr__(name):
    # TFOptimizer's module needs TensorFlow only when one is wrapped; load it on demand.
    if name == "TFOptimizer":
        from numbaopt.optimizers.tf_optimizer import TFOptimizer

        return TFOptimizer
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
