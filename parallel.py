"""
parallel.py: one node, several processes, launched by torchrun (no home-made process management).

    python train.py ...                                        # 1 process: every function here is a no-op
    torchrun --nproc_per_node=8 train.py --device cuda ...     # DDP (NCCL), a model that fits one GPU
    torchrun --nproc_per_node=8 train.py --device cuda --shard fsdp --grad-ckpt ...   # FSDP2, e.g. a 7B model
    torchrun --nproc_per_node=2 train.py --threads 1           # CPU, gloo: what the tests run

How train.py splits the work (rank-local groups, as nanochat does it):
- Every rank draws the same G tasks from the same (seed, iteration) stream and rolls out its own G / W
  of them, all N rollouts of a group on one rank: group advantages and delta_g need no collectives.
- Metrics, success counts and skill statistics are summed over ranks (all_sum); won episodes are
  gathered so that every rank holds the same success buffer (the phase switch then agrees everywhere);
  the skill bank is changed on rank 0 only and broadcast.
- Only rank 0 writes files (print0 / master).
- DDP and FSDP2 both need every rank to make the same sequence of collective calls: the update runs the
  same number of micro-batches, forwards and backward passes on every rank (a rank short of samples runs
  zero-weight ones, asserted per iteration). Loss normalisers are the global token / weight sums, scaled
  by W, so the gradient mean over ranks is exactly the single-process token mean.

Generation under FSDP2 (`unsharded`): all ranks all-gather the full weights once, each rank then
generates locally for as many steps as its own rollouts need (no collective per decode step), and the
weights are resharded before the update. Peak memory is the full bf16 weights once per GPU (15 GB for
7B), the same as the forward of an unsharded layer, and decoding runs at single-GPU speed.
"""

import contextlib
import os
import sys

import torch
import torch.distributed as dist

RANK, WORLD = 0, 1


def init(device):
    """Join the torchrun process group if launched by torchrun. Returns this rank's device string
    ('cuda' -> 'cuda:LOCAL_RANK'). The backend is NCCL on CUDA, gloo on CPU."""
    global RANK, WORLD
    if int(os.environ.get("WORLD_SIZE", "1")) > 1 and not dist.is_initialized():
        local = int(os.environ["LOCAL_RANK"])
        if device.startswith("cuda"):
            device = f"cuda:{local}"
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    if dist.is_initialized():
        RANK, WORLD = dist.get_rank(), dist.get_world_size()
    return device


def exit():
    """End a torchrun process: leave the process group together, then exit without C++ static destructors.
    With gloo on CPU (torch 2.13) a rank sometimes aborted after all its Python code had run ("terminate called
    without an active exception", about 1 launch in 8 under load), failing the launch after a complete run."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def master():
    return RANK == 0


def print0(*args, **kw):
    if RANK == 0:
        print(*args, **kw, flush=True)


def barrier():
    if WORLD > 1:
        dist.barrier()


def _reduce(values, op, device):
    t = torch.tensor(values, dtype=torch.float64, device=device)
    if WORLD > 1:
        dist.all_reduce(t, op=op)
    return t.tolist()


def all_sum(values, device="cpu"):
    """Element-wise sum over ranks of a list of numbers."""
    return _reduce(values, dist.ReduceOp.SUM, device)


def all_max(values, device="cpu"):
    return _reduce(values, dist.ReduceOp.MAX, device)


def all_gather(obj):
    """[obj of rank 0, obj of rank 1, ...] (any picklable object)."""
    if WORLD == 1:
        return [obj]
    out = [None] * WORLD
    dist.all_gather_object(out, obj)
    return out


def broadcast(obj):
    """Rank 0's obj on every rank."""
    if WORLD == 1:
        return obj
    box = [obj if RANK == 0 else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_gather_flat(items):
    """Every rank's list, concatenated in rank order."""
    return [x for part in all_gather(items) for x in part]


def my_slice(items):
    """This rank's contiguous share of a list whose length W divides."""
    n = len(items) // WORLD
    return items[RANK * n:(RANK + 1) * n]


def strided(items):
    """This rank's share of a list of any length (every W-th item)."""
    return items[RANK::WORLD]


def unstrided(parts, n):
    """The inverse of strided: the n items in their original order from all ranks' shares (all_gather's list)."""
    return [parts[i % WORLD][i // WORLD] for i in range(n)]


# -----------------------------------------------------------------------------
# wrapping the model

def wrap(model, shard):
    """shard 'ddp': DistributedDataParallel (gradients all-reduced, mean over ranks). 'fsdp': FSDP2
    fully_shard per decoder layer and on the root (parameters, gradients and optimizer state sharded).
    One process: the model itself."""
    if WORLD == 1:
        return model
    if shard == "fsdp":
        from torch.distributed.fsdp import fully_shard
        model.score_buckets = False  # every forward all-gathers: one per score() call, not one per length bucket
        for layer in model.model.layers:
            fully_shard(layer)
        return fully_shard(model)  # the root holds embeddings, final norm and lm_head (tied or not)
    dev = model.model.embed_tokens.weight.device
    return torch.nn.parallel.DistributedDataParallel(model, device_ids=[dev.index] if dev.type == "cuda" else None)


def inner(model):
    """The model.py Transformer under a DDP wrapper (FSDP2 keeps the class: the model itself)."""
    return getattr(model, "module", model)


def is_fsdp(model):
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)


@contextlib.contextmanager
def unsharded(model):
    """For rank-local generation (rollout, mining, evaluation): yields the module to call. FSDP2: all-gather
    every layer once (a collective: all ranks enter together) and keep it gathered until the block ends,
    so the decode loop makes no collective calls. DDP: the inner module (no hooks, no buffer broadcast)."""
    if not is_fsdp(model):
        yield inner(model)
        return
    model.unshard()
    model.set_reshard_after_forward(False)
    try:
        yield model
    finally:
        model.reshard()
        model.set_reshard_after_forward(True)


def state_dicts(model, opt=None):
    """(model state dict, optimizer state dict) as full CPU tensors, for rank 0 to save. A collective
    under FSDP2 (every rank calls it); plain state dicts otherwise."""
    if not is_fsdp(model):
        return inner(model).state_dict(), opt.state_dict() if opt is not None else None
    from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict,
                                                         get_optimizer_state_dict)
    o = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return (get_model_state_dict(model, options=o),
            get_optimizer_state_dict(model, opt, options=o) if opt is not None else None)


def load_optimizer(model, opt, path):
    """Restore a saved (full) optimizer state dict on every rank."""
    if not is_fsdp(model):
        opt.load_state_dict(torch.load(path, map_location=inner(model).model.embed_tokens.weight.device))
        return
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict
    full = torch.load(path, map_location="cpu")
    set_optimizer_state_dict(model, opt, full, options=StateDictOptions(full_state_dict=True))


def check_ranks(model, **counts):
    """Per-rank counts for the metrics row ({name: [rank 0's, rank 1's, ...]}, None in one process), asserting the
    invariants that keep DDP / FSDP2 from hanging or drifting: every rank made the same number of backward passes
    (counts["backward"]), and under DDP every rank holds the same parameters."""
    if WORLD == 1:
        return None
    ranks = all_gather(dict(counts, **({} if is_fsdp(model) else {"param_sum": param_checksum(model)})))
    out = {k: [r[k] for r in ranks] for k in ranks[0]}
    assert len(set(out["backward"])) == 1, f"ranks made different backward passes: {out}"
    assert len(set(out.get("param_sum", [0]))) == 1, f"parameters differ across ranks: {out}"
    return out


def param_checksum(model):
    """Sum of all parameters in float64: equal on every rank after each DDP update (FSDP: shards differ)."""
    with torch.no_grad():
        return float(sum(p.detach().double().sum() for p in inner(model).parameters()))
