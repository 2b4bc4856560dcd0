"""Checkpoints: orbax, asynchronous, keeping the last N, with the data iterator inside.

A checkpoint under WORKDIR/checkpoints/<step>/ holds three items:
  params  the full parameter tree (trainable and frozen): enough to evaluate or export;
  train   {"step", "opt_state"}: what resuming needs beyond the parameters;
  data    the grain iterator state, so a resumed run sees exactly the batches it would have seen.
WORKDIR/model.json records the architecture, so evaluation and export need only the workdir.
"""
from __future__ import annotations

import json
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from etils import epath      # local paths and gs:// alike (orbax's own path type)

from clic_jax.models import ClipConfig, config_from_open_clip, config_to_open_clip
from clic_jax.train import optimizer as opt_lib
from clic_jax.train import remote

MODEL_FILE = "model.json"


def _abstract(tree, sharding=None):
  """Restore targets: each leaf's shape and dtype, on its own sharding or on `sharding`. Leaves
  may be arrays or orbax's metadata of saved arrays (which carry the same three fields)."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding or x.sharding), tree)


class Checkpointer:
  def __init__(self, workdir, keep: int = 3, use_async: bool = True):
    self.directory = _workdir(workdir) / "checkpoints"
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                             enable_async_checkpointing=use_async))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state, data_iterator=None, force: bool = False) -> bool:
    items = dict(params=ocp.args.StandardSave(state.params),
                 train=ocp.args.StandardSave({"step": state.step, "opt_state": state.opt_state}))
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
    return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

  def restore(self, state, data_iterator=None, step: int | None = None):
    """Restores into the shapes and shardings of `state` (and the iterator in place)."""
    step = self.latest_step() if step is None else step
    items = dict(params=ocp.args.StandardRestore(_abstract(state.params)),
                 train=ocp.args.StandardRestore(
                     _abstract({"step": state.step, "opt_state": state.opt_state})))
    if data_iterator is not None:
      items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self.manager.restore(step, args=ocp.args.Composite(**items))
    mask = jax.tree.map(lambda _: False, state.frozen)
    mask = opt_lib.merge(jax.tree.map(lambda _: True, state.trainable), mask)
    trainable, frozen = opt_lib.split_trainable(restored["params"], mask)
    return state.replace(step=restored["train"]["step"], trainable=trainable, frozen=frozen,
                         opt_state=restored["train"]["opt_state"])

  def reached_preemption(self, step: int) -> bool:
    """True on every host once any host got a preemption notice (JAX's multi-host sync)."""
    try:
      return bool(self.manager.reached_preemption(step))
    except Exception:                               # noqa: BLE001 - no distributed service
      return False

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()


def _workdir(workdir) -> epath.Path:
  path = epath.Path(workdir)
  return path if remote.is_remote(workdir) else epath.Path(path.resolve())


def latest_saved_step(workdir) -> int | None:
  """The newest finished checkpoint's step in WORKDIR/checkpoints (None: none yet), from the
  folder's names alone: no manager, no collective, so one process can ask before anything
  compiles."""
  steps = ocp.path.step.checkpoint_steps(_workdir(workdir) / "checkpoints")
  return max(steps) if steps else None


def write_model_info(workdir, model_name: str, cfg: ClipConfig) -> None:
  _workdir(workdir).mkdir(parents=True, exist_ok=True)
  info = {"name": model_name, "model_cfg": config_to_open_clip(cfg)}
  (_workdir(workdir) / MODEL_FILE).write_text(json.dumps(info, indent=2))


def read_model_info(workdir) -> tuple[str, ClipConfig]:
  path = _workdir(workdir) / MODEL_FILE
  if not path.is_file():
    raise FileNotFoundError(f"{workdir} is not a clic_jax training workdir (no {MODEL_FILE}).")
  info = json.loads(path.read_text())
  return info["name"], config_from_open_clip(info["model_cfg"])


def load_params_for_eval(workdir, step: int | None = None) -> tuple[ClipConfig, Any]:
  """(architecture, params) of a workdir's latest (or given) checkpoint, as host numpy arrays."""
  _, cfg = read_model_info(workdir)
  directory = _workdir(workdir) / "checkpoints"
  if not directory.is_dir():
    raise FileNotFoundError(f"{workdir} has no checkpoints/ folder: nothing to load.")
  # Every item's handler named (only params is read): orbax warns about each unnamed one.
  handlers = {"params": ocp.StandardCheckpointHandler(), "train": ocp.StandardCheckpointHandler(),
              "data": grain.checkpoint.CheckpointHandler()}
  with ocp.CheckpointManager(directory, item_handlers=handlers) as manager:
    step = manager.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {directory}.")
    # Restore onto this process's first device, whatever mesh wrote it: orbax would otherwise
    # rebuild the saved shardings and refuse a checkpoint from a pod or a multi-GPU node here
    # ("Topology mismatch"). Shapes and dtypes come from the checkpoint's own metadata.
    on_host = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    abstract = _abstract(manager.item_metadata(step)["params"], sharding=on_host)
    restored = manager.restore(
        step, args=ocp.args.Composite(params=ocp.args.StandardRestore(abstract)))
  return cfg, jax.device_get(restored["params"])
