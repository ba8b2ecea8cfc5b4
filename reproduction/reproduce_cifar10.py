"""The CIFAR-10 grid runner (``tad_plugin.reproduce.cifar10``, also ``tad reproduce``) with this checkout's
``results/`` as the default ``--results``: ``python reproduction/reproduce_cifar10.py --help`` lists the cells'
naming, the budgets and the options."""

from pathlib import Path

from tad_plugin.reproduce.cifar10 import main

if __name__ == "__main__":
    main(results=Path(__file__).resolve().parents[1] / "results")
