"""Export a shipped Keras 3 or tf-keras new-style file after two numbaopt steps, load it in
the Keras that wrote it, and continue both: ``python -m tests.keras_reload FOLDER CASE[:fresh]...``.

Run in a process of its own (Keras 3 reads ``KERAS_BACKEND`` once, on import; the case's
backend is set by the caller). Prints one JSON line per case: whether every optimizer variable and
weight Keras loaded is bitwise the exported file's, and the largest relative difference
between Keras's and numbaopt's weights over the remaining recorded steps.
"""
import io
import json
import os
import shutil
import sys
import zipfile
from pathlib import Path

import h5py
import numpy as np

import numbaopt
from numbaopt.keras_files import read_keras_file
from tests.test_keras_files import recorded, relative_error


def fresh_keras_copy(case, folder):
    """A copy of a case's file as Keras saves it before the first step: the optimizer's step
    count (and Keras 3's learning rate) alone."""
    path = Path(folder) / recorded(case)[0].name
    shutil.copyfile(recorded(case)[0], path)
    keep = 2 if not case.startswith("tfk_") else 1
    if path.suffix == ".h5":
        with h5py.File(path, "r+") as f:
            group = f["optimizer_weights"]
            names = [n.decode() if isinstance(n, bytes) else n for n in group.attrs["weight_names"]]
            for name in names[keep:]:
                del group[name]
            group.attrs["weight_names"] = names[:keep]
            group[names[0]][()] = 0
        return path
    with zipfile.ZipFile(path) as z:
        members = [(info, z.read(info)) for info in z.infolist()]
    out = []
    for info, data in members:
        if info.filename == "model.weights.h5":
            buffer = io.BytesIO(data)
            with h5py.File(buffer, "r+") as f:
                for key in [k for k in f["optimizer/vars"] if int(k) >= keep]:
                    del f[f"optimizer/vars/{key}"]
                f["optimizer/vars/0"][()] = 0
            data = buffer.getvalue()
        out.append((info, data))
    with zipfile.ZipFile(path, "w") as z:
        for info, data in out:
            z.writestr(info, data)
    return path


def file_values(path):
    """The optimizer variables of an exported file, in its order (``Keras3File.variables``)."""
    found = read_keras_file(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            f = h5py.File(io.BytesIO(z.read("model.weights.h5")), "r")
    else:
        f = h5py.File(path, "r")
    with f:
        return found, [np.asarray(f[p][()]) for p in found.variables]


def main(case, folder, fresh=False, settings=False):
    """``settings``: an Adam case with its learning rate and beta_1 changed before the export."""
    path, _, dtype, grads, weights = recorded(case)
    opt, params = numbaopt.import_keras_optimizer(path)
    names = list(params)
    for g in grads[:2]:
        opt.apply_gradients(zip(g, params.values()), names=names)
    if settings:
        opt.learning_rate, opt.beta_1 = 0.125, 0.5
    if fresh:
        exported = fresh_keras_copy(case, folder)
    else:
        exported = Path(folder) / path.name
        shutil.copyfile(path, exported)
    numbaopt.export_keras_optimizer(opt, exported, parameters=params)
    found, stored = file_values(exported)

    if found.generation == "new":
        import tensorflow as tf
        import tf_keras as keras

        tf.config.experimental.enable_op_determinism()
        to_numpy, to_tensor = (lambda t: t.numpy()), tf.constant
    else:
        import keras

        to_numpy, to_tensor = keras.ops.convert_to_numpy, keras.ops.convert_to_tensor
    if found.generation == "keras3" and found.format == "h5":
        # Keras 3's load_model neither restores the optimizer of its .h5 files nor (3.15)
        # compiles them ("Could not deserialize 'keras.metrics.mse'", the shipped files too):
        # the weights are what Keras takes from the file.
        model = keras.models.load_model(exported, compile=False)
        same_weights = [np.asarray(to_numpy(v)).tobytes() for v in model.trainable_variables] == [params[n].tobytes() for n in names]
        print(json.dumps({"case": case, "fresh": fresh, "settings": settings, "dtype": str(dtype), "weights": same_weights,
                          "optimizer_restored": False}))
        return
    model = keras.models.load_model(exported)
    optimizer = model.optimizer
    inner = getattr(optimizer, "inner_optimizer", optimizer)
    loaded = [np.asarray(to_numpy(v)) for v in inner.variables]
    same_state = len(loaded) == len(stored) and all(
        a.shape == b.shape and (a.astype(b.dtype).tobytes() == b.tobytes()) for a, b in zip(loaded, stored))
    variables = model.trainable_variables
    same_weights = [np.asarray(to_numpy(v)).tobytes() for v in variables] == [params[n].tobytes() for n in names]
    same_config = None
    if found.generation == "keras3":
        config = {k: v for k, v in inner.get_config().items() if k != "name"}
        ours = {k: v for k, v in opt.get_config().items() if k in config and k != "name"}
        same_config = all(config[k] == ours[k] for k in ours)
    worst = 0.0
    worst_keras = 0.0
    for g, keras_weights in zip(grads[2:], weights[2:]):
        scale = float(np.asarray(to_numpy(optimizer.scale_loss(1.0)))) if found.loss_scaled else 1.0
        optimizer.apply_gradients(zip([to_tensor(x * np.asarray(scale, x.dtype)) for x in g], variables))
        opt.apply_gradients(zip(g, params.values()), names=names)
        for v, n, reached in zip(variables, names, keras_weights):
            worst = max(worst, relative_error(params[n], np.asarray(to_numpy(v))))
            worst_keras = max(worst_keras, relative_error(np.asarray(to_numpy(v)), reached))
    loaded_config = inner.get_config()
    print(json.dumps({"case": case, "fresh": fresh, "settings": settings, "dtype": str(dtype),
                      "learning_rate": float(np.asarray(to_numpy(inner.learning_rate))), "beta_1": loaded_config.get("beta_1"), "state": same_state, "weights": same_weights,
                      "config": same_config, "variables": len(stored), "loaded": len(loaded),
                      "numbaopt_vs_keras": worst, "keras_vs_recorded": worst_keras}))


if __name__ == "__main__":
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
    for argument in sys.argv[2:]:
        case, _, how = argument.partition(":")
        folder = Path(sys.argv[1]) / argument.replace(":", "-")
        folder.mkdir(parents=True, exist_ok=True)
        try:
            main(case, folder, fresh=how == "fresh", settings=how == "settings")
        except Exception as error:  # noqa: BLE001  (reported, and the next case runs)
            print(json.dumps({"case": case, "fresh": how == "fresh", "settings": how == "settings",
                              "error": f"{type(error).__name__}: {error}"}))
        sys.stdout.flush()
