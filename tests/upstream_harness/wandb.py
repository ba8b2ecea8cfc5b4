"""wandb stand-in for the test harness: the calls upstream's distill scripts make, recording nothing."""


class _Config(dict):
    @property
    def _items(self):
        return self


config = _Config()


class _Run:
    name = "standin"


run = _Run()


def init(config=None, **kwargs):
    items = vars(config) if config is not None and not isinstance(config, dict) else dict(config or {})
    globals()["config"] = _Config(items)
    return run


def log(*args, **kwargs):
    pass


def finish():
    pass


class Image:
    def __init__(self, *args, **kwargs):
        pass


Histogram = Image
