"""Reproducing the paper's experiments: the CIFAR-10 grid runner (:mod:`.cifar10`, ``tad reproduce``) and the
results pages it writes from the run records (:mod:`.pages`)."""
