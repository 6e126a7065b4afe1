"""Per-step overhead of TFOptimizer against driving the same TensorFlow optimizer directly.

Both sides step one float32 parameter of N elements (default 1e6) with the same wrapped
optimizer class. "direct" is what a TensorFlow user writes: a tf.function that applies the
gradient to a tf.Variable. "wrapped" is TFOptimizer on a NumPy array, which also copies the
array into its variable and the result back (the price of keeping the user's array as the
source of truth). Prints the median step time of each and the difference.

    python benchmarks/tf_optimizer_overhead.py [--n 1000000] [--steps 50]

Needs the keras extra (tensorflow-cpu, tf-keras).
"""
import argparse
import os
import statistics
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


def builders():
    import tensorflow as tf
    import tf_keras

    return {
        "tf_keras.legacy Adam": lambda: tf_keras.optimizers.legacy.Adam(1e-3),
        "tf_keras Adam": lambda: tf_keras.optimizers.Adam(1e-3),
        "tf.compat.v1 AdamOptimizer": lambda: tf.compat.v1.train.AdamOptimizer(1e-3),
    }


def median_step(step, steps):
    step()  # warm-up: tracing, slot creation
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main():
    import numpy as np
    import tensorflow as tf

    from numbaopt import optimizers

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--steps", type=int, default=50)
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    grad = rng.normal(size=args.n).astype(np.float32)
    print(f"N = {args.n}, float32, median of {args.steps} steps, TensorFlow {tf.__version__}")
    for name, make in builders().items():
        variable = tf.Variable(rng.normal(size=args.n).astype(np.float32))
        direct_optimizer = make()

        @tf.function
        def direct(g):
            direct_optimizer.apply_gradients([(g, variable)])

        # The gradient arrives as NumPy on both sides, so both pay its conversion.
        t_direct = median_step(lambda: direct(tf.constant(grad)), args.steps)

        param = rng.normal(size=args.n).astype(np.float32)
        wrapped = optimizers.TFOptimizer(make())
        t_wrapped = median_step(lambda: wrapped.apply_gradients([(grad, param)]), args.steps)
        print(
            f"{name:28s} direct {t_direct * 1e3:7.2f} ms   wrapped {t_wrapped * 1e3:7.2f} ms   "
            f"overhead {(t_wrapped - t_direct) * 1e3:+7.2f} ms ({t_wrapped / t_direct:.2f}x)"
        )


if __name__ == "__main__":
    main()
