"""pyrovae runs where PyTorch and Pyro run: without ``fcntl`` (as on Windows), it imports, trains into a run
directory and refuses a second writer."""

import subprocess
import sys

WITHOUT_FCNTL = """
import sys
sys.modules["fcntl"] = None  # `import fcntl` now fails, as on Windows
import torch
import pyrovae
from pyrovae.runs.lock import RunLock, RunInUse
torch.set_num_threads(1)
x = (torch.rand(64, 1, 4, 4, generator=torch.Generator().manual_seed(0)) > 0.5).float()
vae = pyrovae.build_vae(pyrovae.ModelConfig(image_shape=(1, 4, 4), z_dim=2, hidden=(8,)))
rows = pyrovae.fit(vae, x, pyrovae.TrainConfig(epochs=2, batch_size=16), run_dir=sys.argv[1], progress=False,
                   verbose=False)
assert [row["epoch"] for row in pyrovae.load_run(sys.argv[1], data=False).metrics] == [1, 2]
with RunLock(sys.argv[1]):
    try:
        RunLock(sys.argv[1]).acquire()
    except RunInUse as refused:
        print("refused:", refused)
print("fcntl loaded:", "fcntl" in sys.modules and sys.modules["fcntl"] is not None)
"""


def test_pyrovae_imports_trains_and_locks_without_fcntl(tmp_path):
    result = subprocess.run([sys.executable, "-c", WITHOUT_FCNTL, str(tmp_path / "run")], capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "refused:" in result.stdout and "in use by another pyrovae process" in result.stdout
    assert "fcntl loaded: False" in result.stdout
    assert (tmp_path / "run" / "checkpoint.pt").is_file()
