"""Stand-in for upstream's utils.py (test harness only): the same names and signatures, tiny data.

``get_dataset`` returns a torchvision-like train set (uint8 ``.data`` [N, H, W, C], ``.targets``, items
normalised with the returned mean/std; ``dataset="CIFAR10"``: torchvision's ``CIFAR10(data_path, download=True)``,
as upstream reads it) or, with ``args.zca``, upstream's ``TensorDataset`` of whitened
images and the fitted whitening in ``args.zca_trans`` (kornia's interface: ``inverse_transform``).
``get_network`` builds upstream's ConvNet (instance norm; ``ConvNetBN``: batch norm) at width 8.
"""
import json
import os

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.3]


class TensorDataset(Dataset):
    def __init__(self, images, labels):
        self.images = images.detach().float()
        self.labels = labels.detach()

    def __getitem__(self, index):
        return self.images[index], self.labels[index]

    def __len__(self):
        return self.images.shape[0]


class TinyImages(Dataset):
    """torchvision CIFAR's interface: uint8 ``data`` NHWC, ``targets``, items ToTensor + Normalize."""

    def __init__(self, data, targets, normalize):
        self.data, self.targets, self.normalize = data, list(map(int, targets)), normalize

    def __getitem__(self, index):
        x = torch.from_numpy(self.data[index]).permute(2, 0, 1).float() / 255
        if self.normalize:
            x = (x - torch.tensor(MEAN).view(3, 1, 1)) / torch.tensor(STD).view(3, 1, 1)
        return x, self.targets[index]

    def __len__(self):
        return len(self.data)


class ZCAWhitening:
    """kornia.enhance.ZCAWhitening(eps=0.1, compute_inv=True)'s interface."""

    def __init__(self, eps=0.1):
        self.eps = eps

    def fit(self, x):
        flat = x.reshape(len(x), -1).double()
        self.mean = flat.mean(0)
        c = flat - self.mean
        s, u = torch.linalg.eigh(c.T @ c / (len(x) - 1))
        s = s.abs() + self.eps
        self.t, self.t_inv = (u * s.rsqrt()) @ u.T, (u * s.sqrt()) @ u.T
        return self

    def __call__(self, x):
        return ((x.reshape(len(x), -1).double() - self.mean) @ self.t).reshape(x.shape).float()

    def inverse_transform(self, x):
        return (x.reshape(len(x), -1).double() @ self.t_inv + self.mean).reshape(x.shape).float()


def get_dataset(dataset, data_path, batch_size=1, subset="imagenette", args=None):
    zca = getattr(args, "zca", False)
    if dataset == "CIFAR10":
        from torchvision import datasets, transforms

        transform = transforms.Compose([transforms.ToTensor()] + ([] if zca else [transforms.Normalize(MEAN, STD)]))
        dst_train = datasets.CIFAR10(data_path, train=True, download=True, transform=transform)
        dst_test = datasets.CIFAR10(data_path, train=False, download=True, transform=transform)
        im_size, k = (32, 32), 10
    else:
        d = np.load(os.path.join(data_path, "tiny.npz"))
        dst_train = TinyImages(d["x"], d["y"], normalize=not zca)
        dst_test = TinyImages(d["xt"], d["yt"], normalize=not zca)
        im_size, k = (8, 8), int(d["y"].max()) + 1
    if zca:
        trans = ZCAWhitening().fit(torch.stack([dst_train[i][0] for i in range(len(dst_train))]))
        whiten = lambda ds: TensorDataset(trans(torch.stack([ds[i][0] for i in range(len(ds))])),
                                          torch.tensor(ds.targets))
        dst_train, dst_test = whiten(dst_train), whiten(dst_test)
        args.zca_trans = trans
    testloader = torch.utils.data.DataLoader(dst_test, batch_size=64, shuffle=False)
    return 3, im_size, k, None, MEAN, STD, dst_train, dst_test, testloader, None, {c: c for c in range(k)}, None


class ConvNet(nn.Module):
    def __init__(self, channel, num_classes, net_width, net_depth, net_norm, im_size):
        super().__init__()
        layers, c, h, w = [], channel, im_size[0], im_size[1]
        for _ in range(net_depth):
            norm = nn.GroupNorm(net_width, net_width, affine=True) if net_norm == "instancenorm" \
                else nn.BatchNorm2d(net_width, affine=True)
            layers += [nn.Conv2d(c, net_width, kernel_size=3, padding=1), norm, nn.ReLU(inplace=True),
                       nn.AvgPool2d(kernel_size=2, stride=2)]
            c, h, w = net_width, h // 2, w // 2
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(c * h * w, num_classes)

    def forward(self, x):
        out = self.features(x)
        return self.classifier(out.view(out.size(0), -1))


def get_network(model, channel, num_classes, im_size=(32, 32), dist=True):
    norm = {"ConvNet": "instancenorm", "ConvNetBN": "batchnorm"}[model]
    return ConvNet(channel, num_classes, net_width=8, net_depth=3, net_norm=norm, im_size=im_size)


def trace(**entry):
    with open(os.environ["STANDIN_TRACE"], "a") as f:
        f.write(json.dumps(entry) + "\n")


def epoch(mode, dataloader, net, optimizer, criterion, args, aug, texture=False):
    loss_avg, acc_avg, num_exp, seen = 0.0, 0, 0, []
    net.train() if mode == "train" else net.eval()
    for img, lab in dataloader:
        seen += lab.tolist()
        out = net(img.float())
        loss = criterion(out, lab.long())
        if mode == "train":
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        loss_avg += loss.item() * len(lab)
        acc_avg += int((out.argmax(1) == lab).sum())
        num_exp += len(lab)
    trace(mode=mode, samples=num_exp, criterion=type(criterion).__name__, labels=seen)
    return loss_avg / num_exp, acc_avg / num_exp
