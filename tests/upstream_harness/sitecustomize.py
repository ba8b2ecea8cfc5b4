"""Device-verification harness only (reproduction/device/verify_on_device.sh puts this folder on PYTHONPATH).

The device's CIFAR-10 is a JPEG re-encoding written in torchvision's folder layout, so its files fail
torchvision's md5 check, and upstream's ``datasets.CIFAR10(..., download=True)`` would then try to
download (there is no network). Accept the files as they are.
"""
try:
    from torchvision.datasets import cifar

    cifar.check_integrity = lambda *args, **kwargs: True  # used for the batches and for batches.meta
except ImportError:
    pass
