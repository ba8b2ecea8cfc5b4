"""Stand-in for upstream's buffer.py (test harness only): MTT's structure and replay-buffer layout."""
import argparse
import copy
import os

import torch
import torch.nn as nn
from utils import TensorDataset, epoch, get_dataset, get_network


def main(args):
    channel, im_size, num_classes, _, _, _, dst_train, _, testloader, _, class_map, _ = get_dataset(
        args.dataset, args.data_path, 256, None, args=args)
    save_dir = os.path.join(args.buffer_path, args.dataset, args.model)
    os.makedirs(save_dir, exist_ok=True)
    images_all, labels_all = [], []
    for i in range(len(dst_train)):
        sample = dst_train[i]
        images_all.append(torch.unsqueeze(sample[0], dim=0))
        labels_all.append(class_map[torch.tensor(sample[1]).item()])
    images_all = torch.cat(images_all, dim=0)
    labels_all = torch.tensor(labels_all, dtype=torch.long)
    torch.save(labels_all, os.path.join(save_dir, "labels_seen.pt"))
    criterion = nn.CrossEntropyLoss()
    trajectories = []
    dst_train = TensorDataset(copy.deepcopy(images_all.detach()), copy.deepcopy(labels_all.detach()))
    trainloader = torch.utils.data.DataLoader(dst_train, batch_size=args.batch_train, shuffle=True, num_workers=0)
    for it in range(args.num_experts):
        teacher_net = get_network(args.model, channel, num_classes, im_size)
        teacher_optim = torch.optim.SGD(teacher_net.parameters(), lr=args.lr_teacher)
        # clone: on the CPU .cpu() would alias the live parameters (upstream copies them off the GPU)
        timestamps = [[p.detach().cpu().clone() for p in teacher_net.parameters()]]
        for e in range(args.train_epochs):
            epoch("train", dataloader=trainloader, net=teacher_net, optimizer=teacher_optim, criterion=criterion,
                  args=args, aug=True)
            epoch("test", dataloader=testloader, net=teacher_net, optimizer=None, criterion=criterion, args=args,
                  aug=False)
            timestamps.append([p.detach().cpu().clone() for p in teacher_net.parameters()])
        trajectories.append(timestamps)
        if len(trajectories) == args.save_interval:
            n = 0
            while os.path.exists(os.path.join(save_dir, "replay_buffer_{}.pt".format(n))):
                n += 1
            torch.save(trajectories, os.path.join(save_dir, "replay_buffer_{}.pt".format(n)))
            trajectories = []


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--dataset", type=str, default="TINY")  # upstream: CIFAR10 (a download)
    parser.add_argument("--model", type=str, default="ConvNet")
    parser.add_argument("--num_experts", type=int, default=100)
    parser.add_argument("--lr_teacher", type=float, default=0.01)
    parser.add_argument("--batch_train", type=int, default=256)
    parser.add_argument("--data_path", type=str, default="data")
    parser.add_argument("--zca", action="store_true")
    parser.add_argument("--buffer_path", type=str, default="./buffers")
    parser.add_argument("--train_epochs", type=int, default=50)
    parser.add_argument("--save_interval", type=int, default=10)
    main(parser.parse_args())
