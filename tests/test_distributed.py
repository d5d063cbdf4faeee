"""pairseg.distributed and DDP training: 2 CPU ranks on gloo, tiny sizes.

What must hold for DDP to "match single-process training with the same global batch": the ranks'
batches of a step are exactly the halves of the one-process batch (EpochPlan, tested directly),
DDP averages the ranks' gradients, and rank 0's initial weights are the one-process ones. Two
things still differ, by design, and PyTorch offers no CPU fix for either: BatchNorm normalises
each rank's half with that half's statistics (SyncBatchNorm runs on GPUs only), and the Dice loss
sums over its batch before the ratio, so the mean of two half-batch Dice losses is not the Dice of
the whole batch. The tests therefore compare DDP runs with an in-process *emulation* of those
semantics (each half through the network on its own, loss = mean of the half losses, each rank's
dropout seed, rank 0's BatchNorm buffers), which must agree to float precision, and compare with
plain one-process training only loosely (see ``test_ddp_stop_then_resume_single``).

Ranks are started as real processes: ``python -m torch.distributed.run`` (torchrun) for training
runs, or direct processes with the torchrun variables where a test needs per-rank arguments.
Every launch has a wall-clock limit after which its whole process group is killed, and the
process group timeout is short (PAIRSEG_DIST_TIMEOUT_S), so a failure cannot hang the suite.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as torch_dist

from pairseg.augment import AugmentConfig
from pairseg.distributed import DistributedContext, tensor_digest
from pairseg.errors import PairSegInputError

ROOT = Path(__file__).resolve().parents[1]
RANKS = 2
SIZE = 32
BATCH = 2          # per rank; the one-process equivalent uses BATCH * RANKS
LR = 1e-3
SEED = 0
STEPS = 8
STOP_AT = 4
LAUNCH_TIMEOUT_S = 240

pytestmark = pytest.mark.skipif(not (torch_dist.is_available() and torch_dist.is_gloo_available()),
                                reason="torch.distributed with gloo is not available")


# ---------------------------------------------------------------------------------------------
# Launch helpers
# ---------------------------------------------------------------------------------------------

# `pairseg train` exactly as torchrun starts it (pairseg.cli.main), plus test probes: each rank
# dumps the weights it holds at the end, logs the files it writes, and one chosen rank can ask
# to stop after a given step (the other rank must follow).
RUNNER = r'''
import os
import sys

import torch

import pairseg.train as train_module
from pairseg.cli import main
from pairseg.distributed import DistributedContext

rank = int(os.environ.get("RANK", "0"))
dump = os.environ["PAIRSEG_TEST_DUMP"]
captured = {}
original_wrap = DistributedContext.wrap


def capture(self, model, sync_batchnorm=False):
    captured["model"] = model
    return original_wrap(self, model, sync_batchnorm)


def logged(function, kind):
    def call(*args, **kwargs):
        with open(f"{dump}.writes.rank{rank}", "a") as log:
            log.write(kind + "\n")
        return function(*args, **kwargs)
    return call


DistributedContext.wrap = capture
train_module.atomic_torch_save = logged(train_module.atomic_torch_save, "checkpoint")
train_module.save_model = logged(train_module.save_model, "model")
if os.environ.get("PAIRSEG_TEST_STOP"):
    stop_rank, stop_step = (int(v) for v in os.environ["PAIRSEG_TEST_STOP"].split(":"))
    original_requested = train_module._StopRequest.requested
    calls = [0]

    def requested(self):
        calls[0] += 1
        if rank == stop_rank and calls[0] >= stop_step:
            self.flag = True
        return original_requested(self)

    train_module._StopRequest.requested = requested
code = main(sys.argv[1:])
if "model" in captured:
    state = {k: v.detach().cpu().clone() for k, v in captured["model"].state_dict().items()}
    torch.save(state, f"{dump}.rank{rank}.pt")
sys.exit(code)
'''

# The collective helpers on two real gloo ranks, without the training stack.
COLLECTIVES = r'''
import math
import os
import sys

from pairseg.distributed import DistributedContext
from pairseg.errors import PairSegInputError

rank = int(os.environ["RANK"])
ctx = DistributedContext.from_environment("cpu")
assert ctx.enabled and ctx.rank == rank and ctx.backend == "gloo", ctx
loss, stop = ctx.reduce_step(1.0 + 2.0 * rank, stop=(rank == 1))
assert loss == 2.0 and stop, (loss, stop)
loss, stop = ctx.reduce_step(float("nan") if rank == 1 else 0.5, False)
assert math.isnan(loss) and not stop, (loss, stop)
assert ctx.any_flag(rank == 0) and not ctx.any_flag(False)
assert ctx.gather_objects(rank * 10) == [0, 10]
ctx.check_agreement({"lr": 0.001, "cases": ["a", "b"]})
try:
    ctx.check_agreement({"lr": 0.001 * (1 + rank), "cases": ["a", "b"]})
except PairSegInputError as error:
    print("disagreement:", error, flush=True)
else:
    sys.exit("disagreement not detected")
ctx.barrier()
if rank == 1:
    os._exit(3)  # dies without leaving the group
try:
    ctx.any_flag(False)
except Exception as error:  # the peer is gone: an error, not a hang
    print("peer failure:", type(error).__name__, flush=True)
    ctx.close()  # as train() does on its way out
    sys.exit(4)
sys.exit("a collective with a dead rank returned")
'''


def _env(**extra) -> dict:
    env = dict(os.environ)
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT / "src")] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PAIRSEG_DIST_TIMEOUT_S="60")
    env.update({k: str(v) for k, v in extra.items()})
    return env


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _launch(commands: list[tuple[list[str], dict]], timeout: float = LAUNCH_TIMEOUT_S):
    """Start every command (own process group each), wait for all within ``timeout`` seconds,
    kill every group on timeout or error; returns [(returncode, stdout, stderr)]."""
    processes = [subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  text=True, start_new_session=True) for cmd, env in commands]
    deadline = time.monotonic() + timeout
    results = []
    try:
        for process in processes:
            out, err = process.communicate(timeout=max(1.0, deadline - time.monotonic()))
            results.append((process.returncode, out, err))
    except subprocess.TimeoutExpired:
        for process in processes:
            _kill_group(process)
        details = []
        for process in processes:
            out, err = process.communicate()
            details.append(f"--- stdout\n{out[-2000:]}\n--- stderr\n{err[-3000:]}")
        pytest.fail(f"ranks still running after {timeout} s (killed):\n" + "\n".join(details))
    finally:
        for process in processes:
            if process.poll() is None:
                _kill_group(process)
                process.wait()
    return results


def _torchrun(args: list[str], script: Path | None = None, **env) -> tuple[int, str, str]:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(RANKS)]
    command += [str(script)] if script else ["-m", "pairseg"]
    return _launch([(command + args, _env(**env))])[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _direct(commands_per_rank: list[list[str]]) -> list[tuple[int, str, str]]:
    """One process per rank with the variables torchrun would set."""
    port = _free_port()
    return _launch([([sys.executable] + command,
                     _env(RANK=rank, LOCAL_RANK=rank, WORLD_SIZE=len(commands_per_rank),
                          MASTER_ADDR="127.0.0.1", MASTER_PORT=port))
                    for rank, command in enumerate(commands_per_rank)])


def _train_args(data: Path, out: Path, steps: int, batch: int = BATCH, *extra: str) -> list[str]:
    return ["train", "--data", str(data), "--out", str(out), "--arch", "c2fcn", "--steps", str(steps),
            "--size", str(SIZE), "--batch-size", str(batch), "--lr", str(LR), "--seed", str(SEED),
            "--output-stride", "16", "--no-augment", "--device", "cpu", "--events", "json", *extra]


def _events(stdout: str) -> list[dict]:
    lines = [line for line in stdout.splitlines() if line.strip()]
    return [json.loads(line) for line in lines]  # every stdout line must be a JSON event


def _config(data: Path, out: Path, steps: int, batch: int, **kw):
    from pairseg.train import TrainConfig

    return TrainConfig(data=str(data), out=str(out), arch="c2fcn", steps=steps, size=SIZE, batch_size=batch,
                       lr=LR, seed=SEED, output_stride=16, device="cpu", augment=AugmentConfig(enabled=False), **kw)


def _params(state: dict) -> dict:
    return {k: v for k, v in state.items() if v.is_floating_point() and "running_" not in k}


def _max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


# ---------------------------------------------------------------------------------------------
# In-process emulation of what DDP computes
# ---------------------------------------------------------------------------------------------


class Emulation:
    """pairseg's training arithmetic in one process, for runs made of segments ``(ranks, steps)``
    (a run stopped and resumed with another number of ranks has two segments)."""

    def __init__(self, data: Path):
        from pairseg.data import SliceStore
        from pairseg.datasets import load_dataset
        from pairseg.train import EpochPlan, _load_arrays

        dataset = load_dataset(str(data))
        volumes, labels = _load_arrays(dataset)
        self.store = SliceStore.from_volumes(volumes, labels, dataset.modality, SIZE,
                                             [c.name for c in dataset.cases])
        self.num_classes = dataset.num_classes
        self.plan = EpochPlan(self.store, "proxy", _config(data, Path("unused"), 1, BATCH),
                              dataset.modality, world_size=RANKS)

    def built(self, rank: int) -> torch.nn.Module:
        """The model rank ``rank`` builds (train.py seeds seed + rank; DDP keeps rank 0's)."""
        from pairseg.networks import build_model

        torch.manual_seed(SEED + rank)
        return build_model("c2fcn", self.num_classes, 3, output_stride=16, aggregate="sum")

    def run(self, segments: list[tuple[int, int]]) -> torch.nn.Module:
        """One thread, like the launched ranks: Adam turns the last-bit differences between
        multi-threaded and single-threaded reductions into lr-sized weight differences."""
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return self._run(segments)
        finally:
            torch.set_num_threads(threads)

    def _run(self, segments: list[tuple[int, int]]) -> torch.nn.Module:
        from pairseg.losses import criterion_for

        model = self.built(0)
        criterion = criterion_for(model)
        optimizer = torch.optim.Adam(model.parameters(), lr=LR, weight_decay=5e-4)
        step, per_epoch = 0, self.plan.steps_per_epoch()
        for ranks, count in segments:
            for _ in range(count):
                epoch, index = divmod(step, per_epoch)
                halves = [self.plan.batches(epoch, r)[index] for r in range(RANKS)]
                parts = halves if ranks == RANKS else [np.concatenate(halves)]
                model.train()
                optimizer.zero_grad(set_to_none=True)
                total, rank0_buffers = 0.0, None
                for rank, rows in enumerate(parts):
                    # dropout: train.py seeds each rank's RNG from (seed, step, rank) every step
                    torch.manual_seed((SEED * 1_000_003 + step * 7_919 + rank) % (2 ** 63))
                    xa, ya = self.store.gather(rows[:, 0], rows[:, 1])
                    xb, yb = self.store.gather(rows[:, 2], rows[:, 3])
                    total = total + criterion(model(xa, xb), ya, yb) / len(parts)
                    if rank == 0:
                        rank0_buffers = {k: v.clone() for k, v in model.named_buffers()}
                total.backward()  # gradient of the mean of the ranks' losses = DDP's average
                with torch.no_grad():  # DDP keeps (broadcasts) rank 0's BatchNorm statistics
                    for name, buffer in model.named_buffers():
                        buffer.copy_(rank0_buffers[name])
                optimizer.step()
                step += 1
        return model

    def loss_on_fixed_batch(self, state: dict) -> float:
        """Training-mode loss (dropout off) of weights ``state`` on 16 fixed pairs."""
        from pairseg.losses import criterion_for

        model = self.built(0)
        model.load_state_dict(state)
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.Dropout):
                module.eval()
        rows = self.plan.rows(0)[:16]
        xa, ya = self.store.gather(rows[:, 0], rows[:, 1])
        xb, yb = self.store.gather(rows[:, 2], rows[:, 3])
        with torch.no_grad():
            return float(criterion_for(model)(model(xa, xb), ya, yb))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    from pairseg.phantoms import make_phantom_dataset

    return Path(make_phantom_dataset(tmp_path_factory.mktemp("ddp-data"), n_cases=2, shape=(8, SIZE, SIZE), seed=0))


@pytest.fixture(scope="module")
def emulation(data) -> Emulation:
    return Emulation(data)


# ---------------------------------------------------------------------------------------------
# Without processes
# ---------------------------------------------------------------------------------------------


def _plan(world_size: int, batch: int, counts=(7, 9, 5), mode="intra+inter"):
    from pairseg.data import SliceStore
    from pairseg.train import EpochPlan

    images = [torch.zeros(n, 3, 4, 4) for n in counts]
    labels = [torch.zeros(n, 4, 4, dtype=torch.uint8) for n in counts]
    store = SliceStore(images, labels, [f"c{i}" for i in range(len(counts))])
    config = _config(Path("."), Path("unused"), 1, batch, pair_mode=mode, offsets=[1, 2])
    return EpochPlan(store, "proxy" if mode else "single", config, "MR", world_size)


@pytest.mark.parametrize("world_size,batch", [(2, 3), (3, 2), (4, 1), (2, 5)])
def test_epoch_plan_splits_every_global_batch_across_ranks(world_size, batch):
    plan = _plan(world_size, batch)
    single = _plan(1, batch * world_size)
    global_batch = batch * world_size
    for epoch in range(3):
        rows = plan.rows(epoch)
        per_rank = [plan.batches(epoch, r) for r in range(world_size)]
        assert len({len(b) for b in per_rank}) == 1 and len(per_rank[0]) == plan.steps_per_epoch()
        assert all(batch_rows.shape == (batch, 4) for b in per_rank for batch_rows in b)
        # the union over ranks is the epoch's rows, each once, minus the remainder len % G
        union = np.concatenate([np.concatenate(b) for b in per_rank])
        usable = len(rows) // global_batch * global_batch
        assert len(union) == usable and len(rows) - usable == len(rows) % global_batch
        seen = sorted(map(tuple, union.tolist()))
        assert seen == sorted(map(tuple, rows[:usable].tolist()))
        # rank r's b-th batch is the r-th slice of the one-process b-th batch
        for index, whole in enumerate(single.batches(epoch, 0)):
            assert np.array_equal(np.concatenate([b[index] for b in per_rank]), whole)
    assert plan.steps_per_epoch() == single.steps_per_epoch()


def test_epoch_plan_fills_one_batch_from_a_tiny_set():
    plan = _plan(2, 8, counts=(3,), mode="identical")
    rows = plan.rows(0)
    assert len(rows) < 16
    batches = [plan.batches(0, r) for r in range(2)]
    assert [len(b) for b in batches] == [1, 1]
    assert {tuple(r) for r in np.concatenate([batches[0][0], batches[1][0]]).tolist()} == set(map(tuple, rows.tolist()))


def test_single_process_context_does_nothing(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = DistributedContext.from_environment("cpu")
    assert not ctx.enabled and ctx.is_main and ctx.world_size == 1 and ctx.device == torch.device("cpu")
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
    assert ctx.wrap(model, sync_batchnorm=True) is model
    assert isinstance(model[1], torch.nn.BatchNorm2d)
    assert ctx.any_flag(True) and not ctx.any_flag(False)
    assert ctx.reduce_step(0.25, True) == (0.25, True)
    assert ctx.gather_objects("x") == ["x"]
    ctx.check_agreement({"anything": 1})
    ctx.barrier()
    ctx.close()


def test_environment_errors(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(PairSegInputError, match="torchrun"):
        DistributedContext.from_environment("cpu")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "1")
    monkeypatch.setenv("PAIRSEG_DIST_TIMEOUT_S", "soon")
    with pytest.raises(PairSegInputError, match="PAIRSEG_DIST_TIMEOUT_S"):
        DistributedContext.from_environment("cpu")
    ctx = DistributedContext(rank=0, world_size=2)  # as on a CPU rank: no SyncBatchNorm there
    with pytest.raises(PairSegInputError, match="sync-batchnorm"):
        ctx.wrap(torch.nn.BatchNorm2d(2), sync_batchnorm=True)


def test_tensor_digest_sees_content_shape_and_type():
    a = torch.arange(1000, dtype=torch.float32).reshape(10, 100)
    assert tensor_digest([a]) == tensor_digest([a.clone()])
    assert tensor_digest([a]) != tensor_digest([a + 1])
    assert tensor_digest([a]) != tensor_digest([a.reshape(100, 10)])
    assert tensor_digest([a]) != tensor_digest([a.double()])
    b = a.clone()
    b[0, 0] += 1  # element 0 is always sampled, whatever the stride
    assert tensor_digest([a], stride=97) != tensor_digest([b], stride=97)


# ---------------------------------------------------------------------------------------------
# Two real ranks
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_collectives_on_two_gloo_ranks(tmp_path):
    script = tmp_path / "collectives.py"
    script.write_text(COLLECTIVES)
    start = time.monotonic()
    (rc0, out0, err0), (rc1, out1, err1) = _direct([[str(script)], [str(script)]])
    assert rc1 == 3, (out1, err1[-2000:])
    for out in (out0, out1):
        assert "disagreement: ranks disagree with rank 0" in out and "rank 1: lr" in out
    # The survivor's collective raises instead of waiting; closing the group then lets it exit
    # (without close(), gloo's threads sometimes abort the interpreter at exit: SIGABRT).
    assert "peer failure" in out0 and rc0 in (4, -signal.SIGABRT), (rc0, out0, err0[-2000:])
    assert time.monotonic() - start < 60  # the surviving rank failed, it did not wait for the timeout


@pytest.mark.slow
def test_ddp_stop_then_resume_single(data, emulation, tmp_path):
    """2 ranks x BATCH: rank 1 alone asks to stop after STOP_AT steps, both stop there; rank 0
    alone wrote the checkpoint and the events; the ranks hold identical weights equal to the
    emulation. One process with batch 2 x BATCH then resumes the checkpoint to STEPS."""
    from pairseg.modelfiles.weights import load_model, safe_torch_load
    from pairseg.train import checkpoint_path, train

    out = tmp_path / "model.pairseg"
    dump = tmp_path / "dump"
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    rc, stdout, stderr = _torchrun(_train_args(data, out, STEPS), runner, PAIRSEG_TEST_DUMP=dump,
                                   PAIRSEG_TEST_STOP=f"1:{STOP_AT}")
    assert rc != 0, "a stopped run exits non-zero (130 from each rank)"
    events = _events(stdout)
    names = [e["event"] for e in events]
    assert "error" not in names, stderr[-3000:]
    assert names.count("start") == 1 and names.count("stopped") == 1, names
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["step"] for e in progress] == list(range(1, STOP_AT + 1))  # rank 0's events only
    assert events[names.index("start")]["world_size"] == RANKS
    assert (Path(f"{dump}.writes.rank0").read_text().split() == ["checkpoint"]
            and not Path(f"{dump}.writes.rank1").exists())
    ckpt = safe_torch_load(checkpoint_path(out), "checkpoint")
    assert ckpt["step"] == STOP_AT and not out.exists()

    ranks = [torch.load(f"{dump}.rank{r}.pt") for r in range(RANKS)]
    assert _max_difference(_params(ranks[0]), _params(ranks[1])) == 0.0  # bit-identical replicas
    expected = emulation.run([(RANKS, STOP_AT)]).state_dict()
    assert _max_difference(ranks[0], expected) < 1e-5
    assert _max_difference(_params(ckpt["model"]), _params(ranks[0])) == 0.0

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks and the emulation
    try:
        result = train(_config(data, out, STEPS, BATCH * RANKS, resume=True))
    finally:
        torch.set_num_threads(threads)
    assert result.steps == STEPS and out.is_file() and not checkpoint_path(out).exists()
    final = load_model(out)[0].state_dict()
    expected = emulation.run([(RANKS, STOP_AT), (1, STEPS - STOP_AT)]).state_dict()
    assert _max_difference(final, expected) < 1e-4

    # Loss falls: the trained weights do better than the initial ones on a fixed batch.
    initial = emulation.built(0).state_dict()
    before, after = emulation.loss_on_fixed_batch(initial), emulation.loss_on_fixed_batch(final)
    assert after < before - 0.01, (before, after)

    # Against plain one-process training with the same global batch (global BatchNorm statistics,
    # Dice over the whole batch) the updates differ a little, so only the direction is compared:
    # the DDP-trained weights moved from the initial ones much as the one-process weights did.
    # (One-process segments of the emulation are train() itself: the resumed part above.)
    single = _params(emulation.run([(1, STEPS)]).state_dict())
    moved_single = torch.cat([(single[k] - initial[k]).flatten() for k in single])
    moved_ddp = torch.cat([(final[k] - initial[k]).flatten() for k in single])
    cosine = float(torch.nn.functional.cosine_similarity(moved_single, moved_ddp, dim=0))
    assert cosine > 0.5, cosine


@pytest.mark.slow
def test_single_stop_then_resume_ddp(data, emulation, tmp_path, monkeypatch):
    """One process stops after STOP_AT steps; 2 ranks resume its checkpoint (each rank reads it)
    and end with identical weights equal to the emulation; rank 0 alone writes the model."""
    import pairseg.train as train_module
    from pairseg.modelfiles.weights import load_model
    from pairseg.train import checkpoint_path, train

    out = tmp_path / "model.pairseg"
    calls = [0]
    original = train_module._StopRequest.requested

    def requested(self):
        calls[0] += 1
        if calls[0] >= STOP_AT:
            self.flag = True
        return original(self)

    monkeypatch.setattr(train_module._StopRequest, "requested", requested)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks and the emulation
    try:
        result = train(_config(data, out, STEPS, BATCH * RANKS))
    finally:
        torch.set_num_threads(threads)
    monkeypatch.undo()
    assert result.stopped and result.steps == STOP_AT and checkpoint_path(out).is_file()

    dump = tmp_path / "dump"
    runner = tmp_path / "runner.py"
    runner.write_text(RUNNER)
    rc, stdout, stderr = _torchrun(_train_args(data, out, STEPS, BATCH, "--resume"), runner, PAIRSEG_TEST_DUMP=dump)
    assert rc == 0, stderr[-3000:]
    events = _events(stdout)
    names = [e["event"] for e in events]
    assert names.count("done") == 1 and names.count("start") == 1
    assert [e["step"] for e in events if e["event"] == "progress"] == list(range(STOP_AT + 1, STEPS + 1))
    assert not Path(f"{dump}.writes.rank1").exists()
    assert "model" in Path(f"{dump}.writes.rank0").read_text().split()
    ranks = [torch.load(f"{dump}.rank{r}.pt") for r in range(RANKS)]
    # Had rank 1 not loaded the checkpoint (weights and Adam state), its weights would differ.
    assert _max_difference(_params(ranks[0]), _params(ranks[1])) == 0.0
    final = load_model(out)[0].state_dict()
    assert _max_difference(final, ranks[0]) == 0.0
    expected = emulation.run([(1, STOP_AT), (RANKS, STEPS - STOP_AT)]).state_dict()
    assert _max_difference(final, expected) < 1e-4


@pytest.mark.slow
def test_ranks_with_different_data_fail_cleanly(data, tmp_path):
    from pairseg.phantoms import make_phantom_dataset

    other = Path(make_phantom_dataset(tmp_path / "other", n_cases=2, shape=(8, SIZE, SIZE), seed=5))
    out = tmp_path / "model.pairseg"
    results = _direct([["-m", "pairseg"] + _train_args(data, out, 2)] +
                      [["-m", "pairseg"] + _train_args(other, out, 2)])
    for rank, (rc, stdout, stderr) in enumerate(results):
        assert rc == 2, stderr[-3000:]
        errors = [e for e in _events(stdout) if e["event"] == "error"]
        if rank == 0:  # only rank 0 speaks JSON on stdout; the others report on stderr
            assert len(errors) == 1 and errors[0]["kind"] == "input"
            assert "rank 1: images, labels" in errors[0]["message"]
        else:
            assert errors == [] and "rank 1: images, labels" in stderr
    assert not out.exists() and not Path(str(out) + ".ckpt").exists()
