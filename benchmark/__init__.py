"""The benchmark runner: train and evaluate every (method, subject) pair, then one table.

    python scripts/run_benchmark.py --methods configs/custom_diffusion.yaml \
        configs/textual_inversion.yaml --dreambench ../shared/data/dreambench --output runs/bench

Each pair runs ``fit`` then ``test`` (generation/evaluation.py) in its own process (or in-process),
writes ``<output>/<method>/<subject>/eval/results.json``, and is skipped by later calls once
that file exists. The table (``table.md``, ``table.csv``) has the papers' shape: one row per
method, one column per metric, the mean over subjects.
"""
