"""Reproducing the paper's experiments: the CIFAR-10 grid runner (``tad reproduce``; its command line
:mod:`.cifar10`): the grid's cells, budgets, buffers and commands (:mod:`.grid`), running them (:mod:`.running`), the
queue of cells left (:mod:`.queue`), and the results page (:mod:`.tables`) with each record's own page
(:mod:`.pages`)."""
