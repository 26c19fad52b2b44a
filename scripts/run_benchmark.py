"""Train and evaluate methods x subjects and write the papers' table (see benchmark/).

    python scripts/run_benchmark.py --methods configs/custom_diffusion.yaml \
        configs/textual_inversion.yaml --dreambench ../shared/data/dreambench \
        --dreambench-subjects dog cat backpack --output runs/benchmark [--seeds 0 1 2]
        [--address auto]   # a running Ray cluster; default: a local Ray instance
    # smoke test on CPU: add --config configs/tiny.yaml --set trainer.max_steps=2
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmark.runner import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
