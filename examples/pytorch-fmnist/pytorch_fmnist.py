#!/usr/bin/python3
"""Fashion-MNIST with PyTorch on Epoch: the four steps of workflow.json.

    pytorch_fmnist.py prep     --data DATA_DIR --out DIR [--train-limit N] [--test-limit N]
    pytorch_fmnist.py train    --images X.npy --labels Y.npy --out DIR [--epochs 5] [--lr 1e-3]
                               [--batch 64] [--seed 1] [--log-every 100] [--checkpoint-dir DIR]
    pytorch_fmnist.py validate --images X.npy --labels Y.npy --model model.pt --out DIR
    pytorch_fmnist.py infer    --images X.npy --labels Y.npy --model model.pt --out DIR [--count 10]

Runs under Debian's /usr/bin/python3 with python3-torch (1.13, CPU) and python3-numpy:
no torchvision, no downloads. `train` is one rank of a torch.distributed gang (gloo):
it reads RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT (Epoch sets them for a step with
"workers": N; without them it trains alone as rank 0 of 1). Each start shards the data by
the WORLD_SIZE it is given, so it runs as an elastic gang ("workers": {"min", "max"}): a
resize restarts every rank from the checkpoint with the new size.

What it uses of Epoch's step contract, each optional (absent: it does without):
  EPOCH_OUTPUTS          default of --out
  EPOCH_METRICS          JSON lines appended as training goes (one object a line, flushed)
  EPOCH_CHECKPOINT_DIR   default of --checkpoint-dir: rank 0 writes epoch-N.pt there
                         atomically after every epoch and on SIGTERM, and declares it in
                         checkpoint.json; a new attempt resumes from it.

Exit status: 0 success; 2 bad input (flags, a missing or corrupt file); 143 stopped by
SIGTERM after writing a checkpoint; 1 anything else.
"""

import argparse
import datetime
import gzip
import json
import os
import signal
import sys
import time
import traceback

import numpy as np

CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
           "Sneaker", "Bag", "Ankle boot"]
# Pixel mean and standard deviation of the 60,000 training images (scaled to [0, 1]).
MEAN, STD = 0.2860, 0.3530


class InputError(Exception):
    """Bad input: exits 2 with the message."""


def log(msg):
    print(msg, flush=True)


# ---- files ----------------------------------------------------------------------------

def fsync_dir(path):
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path, write):
    """Writes path through write(file) to a temp name beside it, fsyncs, renames."""
    d = os.path.dirname(path) or "."
    tmp = os.path.join(d, ".%s.tmp-%d" % (os.path.basename(path), os.getpid()))
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    fsync_dir(d)


def write_json(path, obj):
    write_atomic(path, lambda f: f.write((json.dumps(obj, indent=2) + "\n").encode()))


class Metrics:
    """Appends JSON lines to $EPOCH_METRICS, one flushed line each; nothing without it."""

    def __init__(self, path):
        self.f = open(path, "a", encoding="utf-8") if path else None

    def emit(self, **values):
        if self.f is None:
            return
        self.f.write(json.dumps(values) + "\n")
        self.f.flush()


def read_idx(path, magic, dims):
    """An IDX file (.gz or not) as a uint8 array of shape (count, *dims)."""
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except OSError as e:  # also gzip's BadGzipFile and EOFError's cousins
        raise InputError("%s: %s" % (path, e))
    except EOFError as e:
        raise InputError("%s: truncated gzip stream: %s" % (path, e))
    header = 4 * (2 + len(dims))
    if len(raw) < header:
        raise InputError("%s: %d bytes, shorter than its header" % (path, len(raw)))
    fields = np.frombuffer(raw[:header], dtype=">u4")
    if fields[0] != magic:
        raise InputError("%s: bad magic number %d, expected %d" % (path, fields[0], magic))
    count = int(fields[1])
    if tuple(int(x) for x in fields[2:]) != dims:
        raise InputError("%s: shape %s, expected %s" % (path, tuple(fields[2:]), dims))
    want = header + count * int(np.prod(dims, dtype=np.int64))
    if len(raw) != want:
        raise InputError("%s: %d bytes, the header promises %d" % (path, len(raw), want))
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape((count,) + dims)


def find_idx(data_dir, stem):
    for name in (stem + ".gz", stem):
        path = os.path.join(data_dir, name)
        if os.path.exists(path):
            return path
    raise InputError("%s: no %s(.gz)" % (data_dir, stem))


def load_split(images_path, labels_path):
    """The .npy pair prep wrote: images (N, 28, 28) uint8, labels (N,) uint8."""
    try:
        x = np.load(images_path, allow_pickle=False)
        y = np.load(labels_path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise InputError(str(e))
    if x.dtype != np.uint8 or x.ndim != 3 or x.shape[1:] != (28, 28):
        raise InputError("%s: %s %s, expected uint8 (N, 28, 28)" % (images_path, x.dtype, x.shape))
    if y.dtype != np.uint8 or y.shape != (x.shape[0],) or (y.size and y.max() > 9):
        raise InputError("%s: expected %d labels 0..9" % (labels_path, x.shape[0]))
    return x, y


def to_tensor(images):
    import torch
    t = torch.from_numpy(images.astype(np.float32) / 255.0)
    return ((t - MEAN) / STD).unsqueeze(1)  # (N, 1, 28, 28)


# ---- the model ------------------------------------------------------------------------

def make_model():
    """Two 3x3 convolutions (16, 32 channels), each with ReLU and 2x2 max pooling, then a
    128-unit hidden layer: 206,922 parameters."""
    from torch import nn
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 16x14x14
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 32x7x7
        nn.Flatten(), nn.Linear(32 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))


def load_model(path):
    import torch
    try:
        saved = torch.load(path, map_location="cpu")
        model = make_model()
        model.load_state_dict(saved["model"])
    except Exception as e:  # a torch.load of a bad file raises anything
        raise InputError("%s: not a model of this script: %s" % (path, e))
    model.eval()
    return model, saved


def evaluate(model, x, y, batch=1000):
    """(loss, accuracy, predictions, confidences) of the model on x, y."""
    import torch
    import torch.nn.functional as F
    losses, preds, confs = 0.0, [], []
    with torch.no_grad():
        for i in range(0, len(x), batch):
            logits = model(to_tensor(x[i:i + batch]))
            target = torch.from_numpy(y[i:i + batch].astype(np.int64))
            losses += F.cross_entropy(logits, target, reduction="sum").item()
            p = F.softmax(logits, dim=1)
            c, k = p.max(dim=1)
            preds.append(k.numpy())
            confs.append(c.numpy())
    preds = np.concatenate(preds) if preds else np.zeros(0, np.int64)
    confs = np.concatenate(confs) if confs else np.zeros(0, np.float32)
    n = max(len(x), 1)
    return losses / n, float((preds == y).sum()) / n, preds, confs


# ---- prep -----------------------------------------------------------------------------

def cmd_prep(a):
    t0 = time.time()
    out = {}
    for split, stem, limit in (("train", "train", a.train_limit), ("test", "t10k", a.test_limit)):
        x = read_idx(find_idx(a.data, stem + "-images-idx3-ubyte"), 2051, (28, 28))
        y = read_idx(find_idx(a.data, stem + "-labels-idx1-ubyte"), 2049, ())
        if len(x) != len(y):
            raise InputError("%s: %d images but %d labels" % (split, len(x), len(y)))
        if y.size and y.max() > 9:
            raise InputError("%s: label %d out of range 0..9" % (split, y.max()))
        if limit > 0:
            x, y = x[:limit], y[:limit]
        for name, arr in (("images", x), ("labels", y)):
            path = os.path.join(a.out, "%s_%s.npy" % (split, name))
            write_atomic(path, lambda f, arr=arr: np.save(f, arr, allow_pickle=False))
        out[split] = (x, y)
        log("prep: %s: %d images, class counts %s" % (
            split, len(x), np.bincount(y, minlength=10).tolist()))
    write_json(os.path.join(a.out, "metrics.json"), {
        "train_images": len(out["train"][0]), "test_images": len(out["test"][0]),
        "seconds": round(time.time() - t0, 3)})
    return 0


# ---- train ----------------------------------------------------------------------------

class Stop:
    """Set by SIGTERM; training checks it at every batch boundary."""
    requested = False

    @staticmethod
    def handler(signum, frame):
        Stop.requested = True
        # os.write, not print: a print interrupted by this handler would be re-entered.
        os.write(1, b"SIGTERM: stopping at the next batch boundary\n")


def read_checkpoint(ckpt_dir):
    """(file name, saved state) of the checkpoint checkpoint.json declares, or None."""
    import torch
    if not ckpt_dir:
        return None
    decl = os.path.join(ckpt_dir, "checkpoint.json")
    if not os.path.exists(decl):
        return None
    with open(decl, encoding="utf-8") as f:
        name = json.load(f)["file"]
    state = torch.load(os.path.join(ckpt_dir, name), map_location="cpu")
    return name, state


def write_checkpoint(ckpt_dir, name, state, metrics):
    """Writes ckpt_dir/name atomically, then declares it in checkpoint.json and as a
    metrics line."""
    import torch
    write_atomic(os.path.join(ckpt_dir, name), lambda f: torch.save(state, f))
    write_json(os.path.join(ckpt_dir, "checkpoint.json"), {"file": name, "epoch": state["epoch"]})
    metrics.emit(step=state["step"], epoch=state["epoch"], checkpoint=name)
    log("checkpoint %s (epoch %d%s)" % (name, state["epoch"],
                                        ", batch %d" % state["batch"] if state["batch"] else ""))


def cmd_train(a):
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    signal.signal(signal.SIGTERM, Stop.handler)
    torch.set_num_threads(1)
    rank = int(os.environ.get("RANK", "0"))
    world = int(os.environ.get("WORLD_SIZE", "1"))
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    if os.environ["MASTER_ADDR"] in ("127.0.0.1", "localhost"):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    log("rank=%d world_size=%d local_rank=%s master=%s:%s" % (
        rank, world, os.environ.get("LOCAL_RANK", "0"), os.environ["MASTER_ADDR"],
        os.environ["MASTER_PORT"]))
    dist.init_process_group("gloo", rank=rank, world_size=world,
                            timeout=datetime.timedelta(seconds=a.timeout))
    # Proof that every rank joined one group: only the sum over all of them is right.
    joined = torch.tensor([rank + 1])
    dist.all_reduce(joined)
    log("all_reduce(rank+1) = %d (expected %d)" % (joined.item(), world * (world + 1) // 2))
    if joined.item() != world * (world + 1) // 2:
        raise RuntimeError("the process group is not the %d ranks it should be" % world)

    x_all, y_all = load_split(a.images, a.labels)
    per_rank = len(x_all) // world  # every rank takes as many batches: DDP needs it
    if per_rank == 0:
        raise InputError("%d images for %d ranks" % (len(x_all), world))
    x = to_tensor(x_all[rank::world][:per_rank])
    y = torch.from_numpy(y_all[rank::world][:per_rank].astype(np.int64))
    batches = (per_rank + a.batch - 1) // a.batch
    log("rank %d: shard rank::%d of %d images: %d images, %d batches of %d an epoch" % (
        rank, world, len(x_all), per_rank, batches, a.batch))

    torch.manual_seed(a.seed)
    model = DDP(make_model())  # broadcasts rank 0's initial weights
    opt = torch.optim.Adam(model.parameters(), lr=a.lr)
    metrics = Metrics(os.environ.get("EPOCH_METRICS"))
    ckpt_dir = a.checkpoint_dir
    if ckpt_dir:
        os.makedirs(ckpt_dir, exist_ok=True)

    # Resume: rank 0 reads the checkpoint and hands it to every rank, so the ranks agree
    # on where they start even if only rank 0 can see the directory.
    found = [read_checkpoint(ckpt_dir) if rank == 0 else None]
    if world > 1:
        dist.broadcast_object_list(found, src=0)
    first_epoch, skip, step = 1, 0, 0
    if found[0] is not None:
        name, state = found[0]
        model.module.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        step = state["step"]
        first_epoch = state["epoch"] + 1
        saved_world = state.get("world_size", world)
        if state["batch"] and saved_world == world:  # saved mid-epoch (SIGTERM): finish it
            skip = state["batch"]
        elif state["batch"]:
            # An elastic gang resized (Epoch's GangResized): the shards are not the ones
            # the batch count was of, so the interrupted epoch starts over on the new ones.
            log("world size %d, was %d: epoch %d starts over on the new shards" % (
                world, saved_world, first_epoch))
        log("resumed from %s at epoch %d%s" % (name, first_epoch,
                                               ", batch %d" % (skip + 1) if skip else ""))

    def checkpoint(epoch_done, batch_done):
        if rank != 0 or not ckpt_dir:
            return
        name = "epoch-%d.pt" % epoch_done if not batch_done else \
            "epoch-%d-batch-%d.pt" % (epoch_done, batch_done)
        write_checkpoint(ckpt_dir, name, {
            "model": model.module.state_dict(), "optimizer": opt.state_dict(),
            "epoch": epoch_done, "batch": batch_done, "step": step, "seed": a.seed,
            "lr": a.lr, "batch_size": a.batch, "world_size": world}, metrics)

    t0 = time.time()
    stop = torch.zeros(1)
    loss_sum, correct, seen = 0.0, 0, 0
    window, window_n = 0.0, 0  # the loss since the last metrics line
    for epoch in range(first_epoch, a.epochs + 1):
        # The same order on every attempt, so a resumed epoch sees the batches it missed.
        order = torch.from_numpy(np.random.default_rng([a.seed, epoch, rank]).permutation(per_rank))
        te = time.time()
        loss_sum, correct, seen = 0.0, 0, 0
        start = skip if epoch == first_epoch else 0
        for b in range(start, batches):
            # Every rank stops at the same boundary: a SIGTERM on any rank stops them all.
            stop.fill_(1.0 if Stop.requested else 0.0)
            if world > 1:
                dist.all_reduce(stop, op=dist.ReduceOp.MAX)
            if stop.item() > 0:
                checkpoint(epoch - 1, b)
                log("rank %d: stopped by SIGTERM at epoch %d, batch %d" % (rank, epoch, b))
                return 143
            idx = order[b * a.batch:(b + 1) * a.batch]
            opt.zero_grad()
            logits = model(x[idx])
            loss = F.cross_entropy(logits, y[idx])
            loss.backward()
            opt.step()
            step += 1
            n = len(idx)
            loss_sum += loss.item() * n
            window += loss.item()
            window_n += 1
            correct += int((logits.argmax(dim=1) == y[idx]).sum())
            seen += n
            if a.log_every and step % a.log_every == 0:
                metrics.emit(step=step, epoch=epoch, loss=round(window / window_n, 6), lr=a.lr)
                window, window_n = 0.0, 0
        loss_avg, acc = loss_sum / max(seen, 1), correct / max(seen, 1)
        log("epoch %d/%d rank %d: loss %.4f accuracy %.4f (its shard, %d images) %.1fs" % (
            epoch, a.epochs, rank, loss_avg, acc, seen, time.time() - te))
        metrics.emit(step=step, epoch=epoch, loss=round(loss_avg, 6), accuracy=round(acc, 6),
                     lr=a.lr)
        checkpoint(epoch, 0)
    seconds = time.time() - t0

    # The whole gang's training accuracy of the last epoch.
    totals = torch.tensor([float(correct), float(seen), loss_sum])
    if world > 1:
        dist.all_reduce(totals)
    if rank == 0:
        write_atomic(os.path.join(a.out, "model.pt"), lambda f: torch.save({
            "model": model.module.state_dict(), "classes": CLASSES, "epochs": a.epochs,
            "mean": MEAN, "std": STD}, f))
        write_json(os.path.join(a.out, "metrics.json"), {
            "train_loss": round(totals[2].item() / max(totals[1].item(), 1), 6),
            "train_accuracy": round(totals[0].item() / max(totals[1].item(), 1), 6),
            "train_seconds": round(seconds, 3), "epochs": a.epochs,
            "first_epoch": first_epoch, "world_size": world, "steps": step,
            "train_images": per_rank * world, "lr": a.lr, "batch": a.batch})
        log("model.pt written: %d epochs (from epoch %d) in %.1fs on %d ranks" % (
            a.epochs, first_epoch, seconds, world))
    return 0


# ---- validate and infer -----------------------------------------------------------------

def cmd_validate(a):
    import torch
    torch.set_num_threads(a.threads)
    model, _ = load_model(a.model)
    x, y = load_split(a.images, a.labels)
    t0 = time.time()
    loss, acc, preds, _ = evaluate(model, x, y)
    seconds = time.time() - t0
    per_class = {}
    for k, name in enumerate(CLASSES):
        mask = y == k
        if mask.any():
            per_class[name] = round(float((preds[mask] == k).mean()), 4)
            log("  %-12s %.4f (%d images)" % (name, per_class[name], int(mask.sum())))
    log("validate: accuracy %.4f loss %.4f on %d test images (%.2fs)" % (acc, loss, len(x), seconds))
    write_json(os.path.join(a.out, "metrics.json"), {
        "accuracy": round(acc, 6), "loss": round(loss, 6), "samples": len(x),
        "seconds": round(seconds, 3), "per_class_accuracy": per_class})
    return 0


def cmd_infer(a):
    import torch
    torch.set_num_threads(a.threads)
    model, _ = load_model(a.model)
    x, y = load_split(a.images, a.labels)
    x, y = x[:a.count], y[:a.count]
    _, acc, preds, confs = evaluate(model, x, y)
    rows = ["index,label,predicted,confidence"]
    for i in range(len(x)):
        rows.append("%d,%s,%s,%.4f" % (i, CLASSES[y[i]], CLASSES[preds[i]], confs[i]))
    text = "\n".join(rows) + "\n"
    write_atomic(os.path.join(a.out, "predictions.csv"), lambda f: f.write(text.encode()))
    sys.stdout.write(text)
    write_json(os.path.join(a.out, "metrics.json"), {
        "predictions": len(x), "correct": int((preds == y).sum()),
        "mean_confidence": round(float(confs.mean()) if len(x) else 0.0, 6)})
    return 0


# ---- main -----------------------------------------------------------------------------

def main(argv):
    p = argparse.ArgumentParser(prog="pytorch_fmnist.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    outputs = os.environ.get("EPOCH_OUTPUTS")

    def add(name):
        s = sub.add_parser(name)
        s.add_argument("--out", default=outputs, required=outputs is None,
                       help="output folder (default $EPOCH_OUTPUTS)")
        return s

    s = add("prep")
    s.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    s.add_argument("--train-limit", type=int, default=0, help="first N train images (0: all)")
    s.add_argument("--test-limit", type=int, default=0, help="first N test images (0: all)")
    s = add("train")
    s.add_argument("--images", required=True)
    s.add_argument("--labels", required=True)
    s.add_argument("--epochs", type=int, default=5)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--batch", type=int, default=64, help="images a batch, per rank")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--log-every", type=int, default=100, help="a loss line every N steps")
    s.add_argument("--timeout", type=int, default=300,
                   help="seconds to wait for the other ranks (rendezvous, each collective)")
    s.add_argument("--checkpoint-dir", default=os.environ.get("EPOCH_CHECKPOINT_DIR"))
    for name in ("validate", "infer"):
        s = add(name)
        s.add_argument("--images", required=True)
        s.add_argument("--labels", required=True)
        s.add_argument("--model", required=True)
        s.add_argument("--threads", type=int, default=1)
        if name == "infer":
            s.add_argument("--count", type=int, default=10)
    a = p.parse_args(argv)
    if a.out:
        os.makedirs(a.out, exist_ok=True)
    cmds = {"prep": cmd_prep, "train": cmd_train, "validate": cmd_validate, "infer": cmd_infer}
    try:
        rc = cmds[a.command](a)
    except InputError as e:
        print("pytorch_fmnist.py %s: error: %s" % (a.command, e), file=sys.stderr, flush=True)
        rc = 2
    except Exception:  # noqa: BLE001 - reported, then the exit below still applies
        traceback.print_exc()
        rc = 1
    if a.command == "train":
        # torch 1.13 can deadlock tearing a gloo group down at exit (~ProcessGroupGloo joins
        # a worker thread that waits for the GIL the main thread holds): everything is
        # written and synced by now, so leave without running destructors.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(rc)
    return rc


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
