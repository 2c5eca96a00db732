"""
Device audit of one training step of every method: nothing the step makes lands on another device than
the model's, nothing waits for the device outside the MODEL.MOMENTUM_CONTRAST.METRICS_PERIOD steps, and no float64
work runs on the device.

This machine has no GPU, so the step runs with the model on PyTorch's ``meta`` device (tensors with
shapes and dtypes but no data) and the mapper's outputs on the host, as on a GPU. That is the CUDA
situation with the same failure modes, made visible on a CPU:

* a tensor created without the model's device (a factory call without ``device=``, or a mapper tensor
  never moved) lands on the host; as soon as it meets the model's tensors the op raises, exactly as CUDA
  raises "expected all tensors to be on the same device" (0-dim host scalars mix on both, alike);
* a transfer back to the host (``.cpu()``, ``.item()``, ``bool(tensor)``, ``nonzero``, a boolean index)
  is what makes a CUDA step wait for the device. A ``TorchDispatchMode`` records every op: one with a
  meta input and a host output, or one of the ops that read device values on the host, is a
  synchronisation. On meta those ops cannot even run (no data), so the step would also fail;
* host-only work (stacking the mapper's views, the views' float64 geometry) has host inputs and outputs
  and is allowed: it is what the step does before its copies to the device, which do not wait.

The test can fail: at a metrics step the methods do read values (the logged statistics), and the audit
sees them. Not covered: Detectron2's ``SimpleTrainer.write_metrics`` reads the loss on the host after
every step (its ``.item()``), which is the trainer's, not the model's.
"""

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from vader_d2.engine.solver import build_optimizer

from .test_methods import mapped_batches
from .test_mixed_precision import METHODS, small_cfg

pytestmark = pytest.mark.usefixtures("single_thread")

# Ops that read device memory on the host: each makes a CUDA step wait for the device.
BOOLEAN_INDEXING = {"index", "index_put", "index_put_"}
HOST_READS = {"_local_scalar_dense", "item", "is_nonzero", "nonzero", "nonzero_static", "masked_select", "unique", "_unique2", "equal"}


class DeviceAudit(TorchDispatchMode):
    """Records, for every op, its name and the devices and dtypes of its inputs and outputs."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        name = func.overloadpacket.__name__
        if name in BOOLEAN_INDEXING and any(t.dtype == torch.bool for t in inputs):
            name = f"{name} with a boolean mask"  # counts the mask's True values on the host first
        # Recorded before running: on the meta device a host read raises.
        self.ops.append({"name": name, "inputs": {t.device.type for t in inputs}, "outputs": set(), "dtypes": set()})
        out = func(*args, **kwargs)
        outputs = [t for t in tree_flatten(out)[0] if isinstance(t, torch.Tensor)]
        self.ops[-1].update(outputs={t.device.type for t in outputs}, dtypes={t.dtype for t in outputs if t.device.type == "meta"})
        return out

    def synchronisations(self):
        return sorted({
            op["name"] for op in self.ops
            if op["name"] in HOST_READS or "boolean mask" in op["name"] or ("meta" in op["inputs"] and "cpu" in op["outputs"])
        })

    def float64_on_device(self):
        return sorted({op["name"] for op in self.ops if torch.float64 in op["dtypes"]})


def audited_step(cfg, iteration):
    """One step (forward, backward, optimizer) of ``cfg``'s model on the meta device; returns the audit and the error, if any."""
    torch.manual_seed(0)
    model = build_model(cfg).train().to("meta")
    optimizer = build_optimizer(cfg, model)
    batch = mapped_batches(cfg, 1)[0]
    audit = DeviceAudit()
    error = None
    try:
        with EventStorage(iteration), audit:
            losses = model(batch)
            optimizer.zero_grad()
            sum(losses.values()).backward()
            optimizer.step()
    except (RuntimeError, NotImplementedError) as e:
        error = e
    return audit, error


CASES = [(method, ()) for method in METHODS] + [("DenseCL", ("MODEL.DENSECL.POSITIVE", "geometric"))]


@pytest.mark.parametrize("method, opts", CASES, ids=[f"{m}{'-' + o[1] if o else ''}" for m, o in CASES])
def test_a_step_stays_on_the_models_device_and_never_waits_for_it(method, opts):
    audit, error = audited_step(small_cfg(method, *opts), iteration=1)  # METRICS_PERIOD 5: not a metrics step
    assert error is None, f"{method}: {error}"
    assert audit.synchronisations() == []
    assert audit.float64_on_device() == []
    # Host work is only the preparation of the mapper's tensors, never anything computed on the device.
    assert len(audit.ops) > 100 and all(op["inputs"] <= {"cpu"} for op in audit.ops if "cpu" in op["outputs"])


@pytest.mark.parametrize("method", list(METHODS))
def test_the_audit_sees_the_host_reads_of_a_metrics_step(method):
    audit, error = audited_step(small_cfg(method), iteration=0)
    assert error is not None and audit.synchronisations()
