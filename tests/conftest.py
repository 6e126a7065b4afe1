import importlib.util
import os

from hypothesis import settings



def load_hypothesis_profile():
    """Ours; again after importing torch's test helpers, which load profiles of their own."""
    settings.register_profile("ci", max_examples=60, deadline=None)
    settings.register_profile("dev", max_examples=25, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))


load_hypothesis_profile()

# numbaopt.torch's tests run in tox -e torch; without torch the module is not collected
# (and the torch environment, which selects them, fails if it finds none).
collect_ignore = [] if importlib.util.find_spec("torch") else [
    "test_torch.py", "test_torch_keras3.py", "test_torch_optim_parity.py", "test_torch_behaviours.py", "test_torch_memory.py",
]
