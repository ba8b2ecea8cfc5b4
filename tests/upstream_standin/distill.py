"""Stand-in for upstream's distill.py (test harness only): the real-image pool and wandb, nothing else."""
import argparse
import os

import numpy as np
import torch
import wandb
from utils import get_dataset


def main(args):
    channel, im_size, num_classes, _, _, _, dst_train, _, _, _, class_map, _ = get_dataset(
        args.dataset, args.data_path, 256, None, args=args)
    wandb.init(project="DatasetDistillation", config=args)
    images_all, labels_all = [], []
    indices_class = [[] for c in range(num_classes)]
    for i in range(len(dst_train)):
        sample = dst_train[i]
        images_all.append(torch.unsqueeze(sample[0], dim=0))
        labels_all.append(class_map[torch.tensor(sample[1]).item()])
    for i, lab in enumerate(labels_all):
        indices_class[lab].append(i)
    images_all = torch.cat(images_all, dim=0)

    def get_images(c, n):
        return images_all[np.random.permutation(indices_class[c])[:n]]

    image_syn = torch.cat([get_images(c, args.ipc) for c in range(num_classes)])
    os.makedirs(args.out, exist_ok=True)
    torch.save({"images_all": images_all, "labels_all": torch.tensor(labels_all), "image_syn": image_syn},
               os.path.join(args.out, "pool.pt"))
    wandb.finish()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", type=str, default="TINY")  # upstream: CIFAR10 (a download)
    parser.add_argument("--data_path", type=str, default="data")
    parser.add_argument("--zca", action="store_true")
    parser.add_argument("--ipc", type=int, default=1)
    parser.add_argument("--out", type=str, default="logged_files")
    main(parser.parse_args())
