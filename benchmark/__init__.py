"""The benchmark runner: train and evaluate every (method, subject) pair, then one table.

    python scripts/run_benchmark.py --methods configs/custom_diffusion.yaml \
        configs/textual_inversion.yaml --dreambench ../shared/data/dreambench --output runs/bench

Each pair runs ``fit`` then ``test`` (generation/evaluation.py) as a Ray task in a process of
its own (or all in this process), writes ``<output>/<method>/<subject>[/seed-<k>]/eval/
results.json``, and is skipped by later calls once that file exists. The table (``table.md``,
``table.csv``) has the papers' shape: one row per method, one column per metric, the mean over
subjects (mean ± std over seeds with ``--seeds``).
"""
