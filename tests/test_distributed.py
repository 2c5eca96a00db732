"""
Two processes on the CPU (gloo) against one process with the same global batch.

What must hold, and why it can be tested exactly or only within float tolerance:

* every rank holds the same queue after every step, bit for bit: each rank enqueues the all-gathered
  keys of the global batch in rank order (``VADeR.enqueue``), and DDP never broadcasts buffers;
* with the same global batch, loss, weights and queue match a one-process run within float tolerance.
  They cannot match bit for bit: the batch-norm statistics, DDP's gradient average and the loss mean are
  sums in another order. Two things must be controlled for them to match at all:
  - ``VADeR.dense_pairs`` draws ``torch.rand((images, cells))`` in each process; rank r re-seeds and
    skips the draws of the images of lower ranks, so that each image gets the pairs it gets in one
    process (the test feeds identical inputs, so nothing else is random);
  - batch norm must see the global batch: ``naiveSyncBN`` averages the per-process mean and mean of
    squares (equal per-process batches make that the global statistic); plain ``BN`` normalises each
    process's half batch and does not match (checked below, so that the test can fail).
* the comparison runs in float64. In float32 the runs agree at the first loss (1e-6) but their
  gradients already differ by a few 1e-3, and the losses drift apart by 1e-3 to 1e-2 within three
  steps (seen at 64 px). The likely mechanism: a batch-norm statistic summed in another order moves
  activations by ~1e-7, enough to flip the odd ReLU whose input is that close to 0, and a flipped unit
  changes gradients far beyond rounding. In float64 everything agrees to the precision of the loss,
  which VADeR computes in float32 (~1e-7); GroupNorm, which has no cross-image statistic, agrees even
  in float32.
* running variances differ from one process by Bessel's factor n / (n - 1): Detectron2's
  NaiveSyncBatchNorm tracks the biased variance, torch's BatchNorm2d the unbiased one; they only
  matter after pretraining (PreciseBN re-estimates them downstream). Checked exactly below.

Which mode each equivalence covers (MODEL.MOMENTUM_CONTRAST.KEY_BN):

* ``sync`` with ``naiveSyncBN``: N processes compute what one process computes on the global batch
  (above);
* ``shuffle`` (the default), per-process ``BN`` in groups of BN_GROUP_SIZE = the per-process batch:
  N processes compute what one process computes with N groups, given the same permutation of the key
  batch. Rank 0 draws the permutation and broadcasts it; for the comparison the test hands both runs
  the same permutations (``PERMUTATIONS``), and a second two-process run with real draws checks that
  the ranks agree (their own generators differ there) and that every key lands at its image's place.
"""

import os
from datetime import timedelta

import pytest
import torch
import torch.distributed as dist
from detectron2.engine import create_ddp_model, launch
from detectron2.modeling import build_model
from detectron2.solver import build_optimizer
from detectron2.utils import comm
from detectron2.utils.events import EventStorage

from vader_d2.evaluation.report import read_metrics

from .helpers import DEMO_CONFIG, FEW_PAIRS, TINY_OPTS, demo_cfg, fake_batch, run_train_net

# Every test here starts processes (about 20-60 s each on a shared 2-core machine).
pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("single_thread")]

GLOBAL_BATCH = 4
CROP = 32  # 8 x 8 output cells
STEPS = 3
# "naiveSyncBN" and "BN": KEY_BN sync with that norm; "shuffle": shuffle-BN with rank 0's random
# permutations; "shuffle_fixed": shuffle-BN with PERMUTATIONS. Each groups 2 images per process.
MODES = ("naiveSyncBN", "BN", "shuffle", "shuffle_fixed")
# Every group mixes the images of both ranks (images 0, 1 are rank 0's, 2, 3 rank 1's).
PERMUTATIONS = [torch.tensor([2, 0, 3, 1]), torch.tensor([1, 3, 0, 2]), torch.tensor([3, 0, 1, 2])]


def tiny_cfg(mode):
    # 4 images x 32 pairs = 128 keys a step: the 256-key queue wraps at the third step.
    shuffle = mode.startswith("shuffle")
    norm = "BN" if shuffle else mode
    return demo_cfg(
        *FEW_PAIRS,
        "INPUT.VIEWS.CROP_SIZE", str(CROP),
        "SOLVER.IMS_PER_BATCH", str(GLOBAL_BATCH),
        "MODEL.MOMENTUM_CONTRAST.QUEUE_SIZE", "256",
        "MODEL.RESNETS.NORM", norm,
        "MODEL.FPN.NORM", norm,
        "MODEL.MOMENTUM_CONTRAST.KEY_BN", "shuffle" if shuffle else "sync",
        "MODEL.MOMENTUM_CONTRAST.BN_GROUP_SIZE", str(GLOBAL_BATCH // 2),
    )


def global_batches():
    torch.manual_seed(2020)
    batches = [fake_batch(GLOBAL_BATCH, CROP, first_image_id=GLOBAL_BATCH * step) for step in range(STEPS)]
    for step, batch in enumerate(batches):
        for index, image in enumerate(batch):
            image["correspondence"] = image["correspondence"].double()  # grid_sample wants the model's dtype
            image["num_skipped"] = (step + index) % 3  # unreadable files the loader skipped before this one
    return batches


def train(mode, batches):
    """STEPS SGD steps of VADeR on this process's share of each global batch, as the trainer does them."""
    rank, world_size = comm.get_rank(), comm.get_world_size()
    per_rank = GLOBAL_BATCH // world_size
    cfg = tiny_cfg(mode)
    torch.manual_seed(0)
    model = build_model(cfg).double()
    model.reset_key_encoder()
    if mode == "shuffle_fixed":
        # An instance attribute shadows the method: the step's permutation instead of rank 0's draw.
        model.key_permutation = lambda batch_size: PERMUTATIONS[step]
    optimizer = build_optimizer(cfg, model)
    ddp_model = create_ddp_model(model, broadcast_buffers=False, device_ids=None)  # a CPU model
    losses, queues = [], []
    with EventStorage():
        for step, batch in enumerate(batches):
            torch.manual_seed(100 + step)
            torch.rand(rank * per_rank, (CROP // 4) ** 2)  # the pair draws of the lower ranks' images
            loss = sum(ddp_model(batch[rank * per_rank : (rank + 1) * per_rank]).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            mean_loss = loss.detach().clone()
            if world_size > 1:
                dist.all_reduce(mean_loss)
            losses.append(mean_loss.item() / world_size)
            queues.append(model.queue.clone())
    return {"losses": losses, "queues": queues, "state": {k: v.clone() for k, v in model.state_dict().items()}}


def two_process_worker(out_dir, batches):
    torch.set_num_threads(1)  # as train_net does for processes sharing a machine
    for mode in MODES:
        torch.save(train(mode, batches), os.path.join(out_dir, f"{mode}_rank{comm.get_rank()}.pth"))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("gloo"))
    batches = global_batches()
    launch(
        two_process_worker, 2, dist_url=f"file://{out_dir}/rendezvous", args=(out_dir, batches), timeout=timedelta(minutes=2)
    )
    two = {mode: [torch.load(os.path.join(out_dir, f"{mode}_rank{r}.pth")) for r in range(2)] for mode in MODES}
    return {"one": train("naiveSyncBN", batches), "one_shuffle_fixed": train("shuffle_fixed", batches), "two": two}


def assert_close(actual, expected, what):
    assert torch.allclose(actual, expected, rtol=1e-5, atol=1e-6), f"{what}: max diff {(actual - expected).abs().max():.3g}"


def test_queue_is_identical_on_every_rank_after_every_step(runs):
    for mode in MODES:
        rank0, rank1 = runs["two"][mode]
        for step in range(STEPS):
            assert torch.equal(rank0["queues"][step], rank1["queues"][step]), (mode, step)
        for name in ("queue", "queue_image_ids", "queue_ptr"):
            assert torch.equal(rank0["state"][name], rank1["state"][name]), (mode, name)


def test_skipped_images_are_counted_over_every_rank(runs):
    expected = sum(image["num_skipped"] for batch in global_batches() for image in batch)
    assert expected > 0
    assert int(runs["one"]["state"]["skipped_images"]) == expected
    for mode in MODES:
        for rank in runs["two"][mode]:
            assert int(rank["state"]["skipped_images"]) == expected, mode


def test_weights_and_batch_norm_statistics_are_identical_on_every_rank(runs):
    rank0, rank1 = runs["two"]["naiveSyncBN"]
    for name, value in rank0["state"].items():
        assert torch.equal(value, rank1["state"][name]), name


def test_two_processes_match_one_process_with_sync_bn(runs):
    one, (two, _) = runs["one"], runs["two"]["naiveSyncBN"]
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-9)
    assert torch.equal(two["state"]["queue_image_ids"], one["state"]["queue_image_ids"])
    assert torch.equal(two["state"]["queue_ptr"], one["state"]["queue_ptr"])
    for step in range(STEPS):
        assert_close(two["queues"][step], one["queues"][step], f"queue after step {step}")
    compared = 0
    for name, value in one["state"].items():
        if value.is_floating_point() and not name.endswith("running_var"):
            assert_close(two["state"][name], value, name)
            compared += 1
    assert compared > 100  # both encoders' weights, the BN means, the queue


def test_two_processes_match_one_process_with_shuffle_bn_and_the_same_permutations(runs):
    one, (two, _) = runs["one_shuffle_fixed"], runs["two"]["shuffle_fixed"]
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-9)
    assert torch.equal(two["state"]["queue_image_ids"], one["state"]["queue_image_ids"])
    for step in range(STEPS):
        assert_close(two["queues"][step], one["queues"][step], f"queue after step {step}")
    compared = 0
    for name, value in one["state"].items():
        # Running statistics are not compared: one process updates them once per group, a rank once per step.
        if value.is_floating_point() and not name.endswith(("running_mean", "running_var")):
            assert_close(two["state"][name], value, name)
            compared += 1
    assert compared > 100
    # The control: a one-process run without shuffling computes something else.
    assert abs(runs["one"]["losses"][0] - one["losses"][0]) > 1e-4 * one["losses"][0]


def test_shuffled_keys_land_at_their_images_place_with_their_image_ids(runs):
    """After shuffle and un-shuffle the queue holds each step's images in batch order, PAIRS keys each."""
    pairs = int(FEW_PAIRS[1])
    per_step = GLOBAL_BATCH * pairs
    for mode in ("shuffle", "shuffle_fixed"):
        state = runs["two"][mode][0]["state"]
        ids = torch.arange(GLOBAL_BATCH * STEPS).repeat_interleave(pairs)[-256:]  # the last two steps
        slots = (torch.arange(STEPS * per_step - 256, STEPS * per_step)) % 256
        assert torch.equal(state["queue_image_ids"][slots], ids), mode
    # Real draws and fixed permutations group the images differently: different keys, same places.
    assert not torch.allclose(runs["two"]["shuffle"][0]["state"]["queue"], runs["two"]["shuffle_fixed"][0]["state"]["queue"])


def test_running_variances_differ_from_one_process_by_bessel_correction(runs):
    """var_1 = n / (n - 1) var_2 at every step, n = the values one BN layer normalises over (images x H x W),
    so after STEPS updates from the initial 1 with momentum 0.1: (v_1 - c) = n / (n - 1) (v_2 - c)."""
    one, two = runs["one"]["state"], runs["two"]["naiveSyncBN"][0]["state"]
    initial = (1 - 0.1) ** STEPS
    sizes = {GLOBAL_BATCH * side * side for side in (1, 2, 4, 8, 16)}  # the feature maps of a 32 px view
    layers = [name for name in one if name.endswith("running_var")]
    assert len(layers) > 40  # both encoders' backbone and FPN
    for name in layers:
        excess = (one[name] - initial) / (two[name] - initial) - 1  # = 1 / (n - 1)
        n = min(sizes, key=lambda size: abs(excess.mean().item() * (size - 1) - 1))
        assert torch.allclose(excess * (n - 1), torch.ones_like(excess), rtol=0, atol=1e-2), name


def test_per_process_batch_norm_does_not_match(runs):
    """The control that shows the comparison above can fail: BN over each process's half batch."""
    one, (two, other_rank) = runs["one"], runs["two"]["BN"]
    for step in range(STEPS):
        assert abs(two["losses"][step] - one["losses"][step]) > 1e-4 * one["losses"][step]
    name = "query_encoder.backbone.bottom_up.stem.conv1.norm.running_mean"
    assert not torch.allclose(two["state"][name], other_rank["state"][name])


def test_train_net_with_two_processes(tmp_path):
    """`--num-gpus 2` on a CPU: Detectron2's launch with gloo, and every rank's keys in the queue. Without
    OMP_NUM_THREADS, train_net gives each of the 2 processes half the cores."""
    steps, pairs, queue_size = 3, 32, 512
    result = run_train_net(
        "--num-gpus", "2", "--dist-url", "auto", "--config-file", DEMO_CONFIG, *TINY_OPTS,
        "SOLVER.MAX_ITER", str(steps), "SEED", "3", "OUTPUT_DIR", str(tmp_path),
        env={"OMP_NUM_THREADS": None},
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "World size: 2" in result.stdout
    iterations = [m["iteration"] for m in read_metrics(tmp_path / "metrics.json") if "total_loss" in m]
    assert iterations[-1] == steps - 1
    state = torch.load(tmp_path / "model_final.pth", map_location="cpu")["model"]
    keys = steps * GLOBAL_BATCH * pairs
    # Rank 0 saves; its queue holds the keys of all 4 images of each step, not only its own 2.
    assert int(state["queue_ptr"]) == keys % queue_size
    image_ids = state["queue_image_ids"]
    assert int((image_ids >= 0).sum()) == min(keys, queue_size)
    assert len(set(image_ids[image_ids >= 0].tolist())) == min(keys, queue_size) // pairs


def test_user_error_in_a_worker_process_is_one_line(tmp_path):
    result = run_train_net(
        "--num-gpus", "2", "--dist-url", "auto", "--config-file", DEMO_CONFIG, *TINY_OPTS, "OUTPUT_DIR", str(tmp_path),
        env={"DETECTRON2_DATASETS": str(tmp_path / "missing")},
    )
    assert result.returncode == 2, result.stdout[-3000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    reported = {line for line in result.stderr.splitlines() if line.startswith("vader_d2: ")}
    assert len(reported) == 1, result.stderr
    assert "vader_demo_photos/train does not exist" in reported.pop()
