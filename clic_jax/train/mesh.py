"""Device mesh and shardings: data parallel by default, FSDP as a config switch.

The mesh has two axes, ("data", "fsdp"). The batch is split over both, so every device holds a
distinct slice of it. Parameters are replicated unless `fsdp > 1`, in which case each parameter is
split along its largest dimension divisible by the fsdp axis size (small ones stay replicated);
optimizer moments follow their parameters. The same code runs on 1 CPU, 8 fake CPU devices, a GPU
node or a TPU pod: only the device count changes.
"""
from __future__ import annotations

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXES = ("data", "fsdp")


def make_mesh(fsdp: int = 1, devices=None) -> Mesh:
  devices = np.asarray(jax.devices() if devices is None else devices)
  if fsdp < 1 or devices.size % fsdp:
    raise ValueError(f"mesh.fsdp={fsdp} must divide the number of devices ({devices.size}).")
  # jax.sharding.Mesh gives Auto axes, which let XLA place the all-gathers of the contrastive
  # logits itself (jax.make_mesh's Explicit default would reject `img @ txt.T` over the batch).
  return Mesh(devices.reshape(devices.size // fsdp, fsdp), BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P(BATCH_AXES))


def micro_batch_sharding(mesh: Mesh) -> NamedSharding:
  """A batch split into micro-batches, (k, B/k, ...): each micro-batch over all devices."""
  return NamedSharding(mesh, P(None, BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def param_spec(shape: tuple[int, ...], fsdp: int, min_size: int = 2 ** 14) -> P:
  """FSDP rule: shard the largest dimension divisible by `fsdp`; tiny tensors stay replicated."""
  if fsdp == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for dim in sorted(range(len(shape)), key=lambda d: -shape[d]):
    if shape[dim] % fsdp == 0:
      spec = [None] * len(shape)
      spec[dim] = "fsdp"
      return P(*spec)
  return P()


def tree_shardings(mesh: Mesh, tree):
  """NamedShardings for every array leaf of `tree` (params or optimizer state) by the FSDP rule."""
  fsdp = mesh.shape["fsdp"]
  return jax.tree.map(lambda x: NamedSharding(mesh, param_spec(tuple(x.shape), fsdp)), tree)


def global_batch(mesh: Mesh, host_batch: dict) -> dict:
  """This host's numpy batch -> global jax.Arrays sharded over the batch axes (all hosts)."""
  sharding = batch_sharding(mesh)
  return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
          for k, v in host_batch.items()}


def gather_to_host(tree):
  """Whole numpy arrays of a (possibly sharded) tree on this host, for evaluation and export.

  On one host, or where every array is replicated, each host already holds whole arrays and
  this is a device_get. With FSDP over several hosts each host holds only its slices, which
  no device_get can fetch: the hosts all-gather them instead, so every process must call this
  at the same point (it is a collective), even the ones that then discard the result.
  """
  leaves = jax.tree.leaves(tree)
  if all(x.is_fully_addressable or x.is_fully_replicated for x in leaves):
    return jax.device_get(tree)
  from jax.experimental import multihost_utils
  return multihost_utils.process_allgather(tree, tiled=True)
