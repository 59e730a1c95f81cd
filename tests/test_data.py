import gzip
import hashlib
import itertools
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from lightning.pytorch.utilities import CombinedLoader

from unlearning.data.loader import ShardedOrder, StepBudgetStreams, TensorBatchLoader
from unlearning.data.mnist import MEAN, MNIST_MD5, STD, DataError, load_mnist, prepare_mnist

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def data_copy(tmp_path: Path) -> Path:
    """The bundled .gz files in a scratch folder, so tests may damage them."""
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for name in MNIST_MD5:
        shutil.copy(ROOT / "data" / "MNIST" / "raw" / f"{name}.gz", raw)
    return tmp_path


def test_bundled_files_unpack_verify_and_load_normalised(data_copy: Path):
    raw = prepare_mnist(data_copy)
    assert all((raw / name).exists() for name in MNIST_MD5)
    x, y = load_mnist(data_copy, train=False)
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert torch.isclose(x.min(), torch.tensor(-MEAN / STD))
    assert torch.bincount(y).tolist()[:3] == [980, 1135, 1032]  # the official test set's class counts


def test_a_corrupt_unpacked_file_is_unpacked_again_from_its_archive(data_copy: Path, caplog):
    raw = prepare_mnist(data_copy)
    target = raw / "t10k-labels-idx1-ubyte"
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    assert prepare_mnist(data_copy) == raw
    assert hashlib.md5(target.read_bytes()).hexdigest() == MNIST_MD5[target.name]
    assert "t10k-labels-idx1-ubyte is corrupt" in caplog.text and "unpacking it again" in caplog.text


def test_a_corrupt_file_without_its_archive_names_the_file_and_its_expected_md5(data_copy: Path):
    raw = prepare_mnist(data_copy)
    target = raw / "t10k-labels-idx1-ubyte"
    (raw / "t10k-labels-idx1-ubyte.gz").unlink()
    data = bytearray(target.read_bytes())
    data[100] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(DataError, match=rf"t10k-labels-idx1-ubyte is corrupt.*expected {MNIST_MD5['t10k-labels-idx1-ubyte']}.*restore"):
        prepare_mnist(data_copy)


def test_a_rewrite_that_keeps_size_and_modification_time_is_still_caught(data_copy: Path):
    raw = prepare_mnist(data_copy)
    target = raw / "t10k-labels-idx1-ubyte"
    before = target.stat()
    data = bytearray(target.read_bytes())
    data[200] ^= 0x01
    target.write_bytes(bytes(data))
    os.utime(target, ns=(before.st_atime_ns, before.st_mtime_ns))  # same size, same mtime: only the ctime tells
    prepare_mnist(data_copy)
    assert hashlib.md5(target.read_bytes()).hexdigest() == MNIST_MD5[target.name]


@pytest.mark.parametrize("damage", ["truncated", "zlib"])
def test_a_damaged_archive_is_one_error_naming_it_and_leaves_no_debris(data_copy: Path, damage: str):
    archive = data_copy / "MNIST" / "raw" / "train-labels-idx1-ubyte.gz"
    data = bytearray(archive.read_bytes())
    if damage == "truncated":
        data = data[:1000]
    else:
        data[5000:5004] = b"\xde\xad\xbe\xef"  # inside the deflate stream: zlib itself fails, or the CRC does
    archive.write_bytes(bytes(data))
    with pytest.raises(
        DataError,
        match=rf"train-labels-idx1-ubyte.gz is (corrupt|missing).*{MNIST_MD5['train-labels-idx1-ubyte']}|train-labels-idx1-ubyte.gz is corrupt",
    ):
        prepare_mnist(data_copy)
    assert sorted(p.name for p in archive.parent.iterdir() if p.name.startswith("train-labels") or p.suffix == ".part") == [archive.name]


def test_fuzzed_files_are_repaired_or_refused_and_never_loaded_corrupt(data_copy: Path):
    """Seeded random 4-byte corruptions of every archive (nothing unpacked yet) and every unpacked file (archives intact)."""
    raw = data_copy / "MNIST" / "raw"
    pristine = {p.name: p.read_bytes() for p in raw.iterdir() if p.name.endswith(".gz")}
    prepare_mnist(data_copy)
    pristine |= {name: (raw / name).read_bytes() for name in MNIST_MD5}
    generator = torch.Generator().manual_seed(0)
    counts = {"tried": 0, "survived": 0, "refused": 0, "lost": 0}
    for name in sorted(pristine):
        for _ in range(7):
            for file, contents in pristine.items():  # every case starts from intact files
                if not (raw / file).exists() or (raw / file).read_bytes() != contents:
                    (raw / file).write_bytes(contents)
            if name.endswith(".gz"):
                (raw / name.removesuffix(".gz")).unlink()  # a fresh clone: the archive must be read
            data = bytearray(pristine[name])
            at = int(torch.randint(len(data) - 4, (1,), generator=generator))
            data[at : at + 4] = bytes(torch.randint(256, (4,), generator=generator).tolist())
            (raw / name).write_bytes(bytes(data))
            counts["tried"] += 1
            try:
                prepare_mnist(data_copy)
            except DataError as err:
                refused = name in str(err) and "\n" not in str(err)
                counts["refused" if refused else "lost"] += 1
            else:
                intact = all(hashlib.md5((raw / f).read_bytes()).hexdigest() == md5 for f, md5 in MNIST_MD5.items())
                counts["survived" if intact else "lost"] += 1
            debris = [p.name for p in raw.iterdir() if p.suffix == ".part"]
            counts["lost"] += bool(debris)
    print(f"data fuzz: {counts}")
    assert counts["tried"] == 56 and counts["lost"] == 0 and counts["survived"] + counts["refused"] == 56
    assert counts["survived"] >= 28  # every unpacked file's corruption is repaired from its archive


def test_two_processes_unpacking_at_once_both_succeed(data_copy: Path):
    """Both start on a fresh copy: each writes its own temporary file and renames it into place."""
    code = "import sys; from unlearning.data.mnist import prepare_mnist; prepare_mnist(sys.argv[1])"
    procs = [subprocess.Popen([sys.executable, "-c", code, str(data_copy)], cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    errors = [p.communicate(timeout=120)[1] for p in procs]  # communicate closes the pipes, and waits
    assert [p.returncode for p in procs] == [0, 0], errors
    raw = data_copy / "MNIST" / "raw"
    assert all(hashlib.md5((raw / f).read_bytes()).hexdigest() == md5 for f, md5 in MNIST_MD5.items())
    assert not [p for p in raw.iterdir() if p.suffix == ".part"]


def test_a_missing_data_dir_without_network_fails_clearly_and_leaves_no_folders(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    def offline(root, **kwargs):  # as torchvision does: the raw folder is made before the download fails
        (Path(root) / "MNIST" / "raw").mkdir(parents=True, exist_ok=True)
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:")

    monkeypatch.setattr("unlearning.data.mnist.MNIST", offline)
    with pytest.raises(DataError, match=r"MNIST is not in .* could not download it \(Error downloading train-images-idx3-ubyte.gz\);"):
        prepare_mnist(tmp_path / "nowhere" / "data")
    assert list(tmp_path.iterdir()) == []


def test_an_unpacked_copy_is_used_without_its_archive(data_copy: Path):
    raw = prepare_mnist(data_copy)
    for name in MNIST_MD5:
        (raw / f"{name}.gz").unlink()
    assert load_mnist(data_copy, train=False)[0].shape[0] == 10000


def test_gzip_member_matches_the_canonical_md5():
    with gzip.open(ROOT / "data" / "MNIST" / "raw" / "t10k-labels-idx1-ubyte.gz") as f:
        assert hashlib.md5(f.read()).hexdigest() == MNIST_MD5["t10k-labels-idx1-ubyte"]


def test_shards_are_disjoint_equal_sized_and_cover_everything():
    orders = [ShardedOrder(10, shuffle=True, seed=3, rank=r, world_size=3) for r in range(3)]
    shards = [o.next_pass() for o in orders]
    assert [len(s) for s in shards] == [4, 4, 4]  # padded by wrapping around, like DistributedSampler
    assert set(torch.cat(shards).tolist()) == set(range(10))
    unpadded = [ShardedOrder(10, shuffle=False, rank=r, world_size=3, pad=False).next_pass() for r in range(3)]
    assert sorted(torch.cat(unpadded).tolist()) == list(range(10))


def test_shuffle_is_seeded_and_changes_every_epoch_and_pass():
    a, b = ShardedOrder(50, shuffle=True, seed=0), ShardedOrder(50, shuffle=True, seed=0)
    first = a.next_pass()
    assert torch.equal(first, b.next_pass())
    assert not torch.equal(first, a.next_pass())  # a shorter stream cycled within an epoch gets a new order
    a.set_epoch(1)
    b.set_epoch(1)
    assert torch.equal(a.next_pass(), b.next_pass())
    assert not torch.equal(first, b.next_pass())


def test_loader_batches_are_indexed_slices():
    x = torch.arange(10).float().view(10, 1)
    y = torch.arange(10)
    loader = TensorBatchLoader(x, y, batch_size=4, sampler=ShardedOrder(10, shuffle=False))
    batches = list(loader)
    assert len(loader) == len(batches) == 3
    assert [b[1].tolist() for b in batches] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]
    assert torch.equal(batches[0][0].squeeze(1), batches[0][1].float())


def _streams() -> dict[str, TensorBatchLoader]:
    """A long and a short stream (4 and 2 batches an epoch), shuffled as training streams are."""
    return {
        name: TensorBatchLoader(torch.arange(n).float().view(n, 1), torch.arange(n), batch_size=3, sampler=ShardedOrder(n, shuffle=True))
        for name, n in (("retain", 11), ("forget", 5))
    }


def _labels(batches) -> list[dict[str, list[int]]]:
    return [{name: xy[1].tolist() for name, xy in batch.items()} for batch in batches]


def test_a_step_budget_is_served_as_one_epoch_of_the_batches_lightnings_epochs_would_give():
    epochs, combined = [], CombinedLoader(_streams(), mode="max_size_cycle")
    for epoch in range(3):  # what Lightning does each epoch: set every sampler's epoch, then iterate
        for loader in combined.flattened:
            loader.sampler.set_epoch(epoch)
        epochs += [batch for batch, _, _ in iter(combined)]
    budget = StepBudgetStreams(_streams(), steps=10)
    served = list(itertools.islice(iter(budget), 10))
    assert len(budget) == 10 and len(epochs) == 12  # 3 epochs of 4 batches: the budget ends inside the third, not at an end
    assert _labels(served) == _labels(epochs[:10])
    assert budget.state_dict() == {
        "epoch": 2,
        "streams": {"retain": {"epoch": 2, "pass": 0, "served": 2}, "forget": {"epoch": 2, "pass": 0, "served": 2}},
    }


def test_a_step_budget_resumes_with_the_batches_it_would_have_served():
    straight = _labels(itertools.islice(iter(StepBudgetStreams(_streams(), steps=10)), 10))
    first = StepBudgetStreams(_streams(), steps=10)
    head = _labels(itertools.islice(iter(first), 7))  # stopped in the second epoch, after the short stream cycled in it
    assert first.state_dict()["streams"]["forget"] == {"epoch": 1, "pass": 1, "served": 1}
    resumed = StepBudgetStreams(_streams(), steps=10)
    resumed.load_state_dict(first.state_dict())
    assert head + _labels(itertools.islice(iter(resumed), 3)) == straight


def test_positions_saved_per_stream_before_budgets_were_one_epoch_still_resume():
    """Lightning kept one TensorBatchLoader state per stream then; ``from_stream_states`` folds them into the budget's."""
    straight = _labels(itertools.islice(iter(StepBudgetStreams(_streams(), steps=10)), 10))
    first = StepBudgetStreams(_streams(), steps=10)
    list(itertools.islice(iter(first), 7))  # in the second epoch, after the short stream cycled in it
    per_stream = first.state_dict()["streams"]  # each loader's own state, as Lightning saved it beside the others
    assert per_stream == {"retain": {"epoch": 1, "pass": 0, "served": 3}, "forget": {"epoch": 1, "pass": 1, "served": 1}}
    resumed = StepBudgetStreams(_streams(), steps=10)
    resumed.load_state_dict(StepBudgetStreams.from_stream_states(per_stream))
    assert _labels(itertools.islice(iter(resumed), 3)) == straight[7:]

    def retain_only():
        return {"retain": _streams()["retain"]}

    straight = _labels(itertools.islice(iter(StepBudgetStreams(retain_only(), steps=10)), 10))
    resumed = StepBudgetStreams(retain_only(), steps=10)
    resumed.load_state_dict(StepBudgetStreams.from_stream_states({"retain": {"epoch": 1, "pass": 0, "served": 2}}))
    assert _labels(itertools.islice(iter(resumed), 4)) == straight[6:]  # 2 batches into epoch 1 of 4-batch epochs


def test_the_split_follows_split_seed_and_the_shuffles_follow_seed():
    """Another draw of a method (another seed on one split) keeps a pretrained model's retain, forget and validation
    samples, and changes its batches; without ``split_seed`` the seed fixes both, as before."""
    from unlearning.data.mnist import MNISTDataModule

    own, draw, other = (MNISTDataModule(seed=seed, split_seed=split) for seed, split in ((0, None), (1000, 0), (1000, None)))
    for dm in (own, draw, other):
        dm.setup()
    assert all(torch.equal(own.split_index[s], draw.split_index[s]) for s in own.split_index)
    assert not torch.equal(own.split_index["val"], other.split_index["val"])

    def first_batch(dm):
        return next(iter(dm.loader("retain", train=True)))[1]

    assert not torch.equal(first_batch(own), first_batch(draw))


def _on_device(device: torch.device, world_size: int = 1, rank: int = 0):
    """A datamodule attached to a stand-in trainer whose strategy runs on ``device``."""
    from types import SimpleNamespace

    from unlearning.data.mnist import MNISTDataModule

    dm = MNISTDataModule(batch_size=16)
    task = SimpleNamespace(
        train_streams={"forget": ("forget",), "retain": ("retain",)}, stream_batch_sizes={"forget": 8}, parameters=lambda: iter(())
    )
    dm.trainer = SimpleNamespace(
        strategy=SimpleNamespace(root_device=device), global_rank=rank, world_size=world_size, lightning_module=task,
        max_steps=-1, max_epochs=1,
    )  # fmt: skip
    return dm


@pytest.mark.parametrize(
    ("max_steps", "max_epochs", "interval", "spans"),
    [(10, -1, "step", True), (10, -1, "epoch", False), (10, 2, "step", False), (-1, 2, "step", False)],
    ids=["steps alone", "epoch scheduler", "epochs too", "epochs alone"],
)
def test_only_a_run_bounded_by_steps_alone_gets_its_budget_as_one_epoch(max_steps, max_epochs, interval, spans):
    """An epoch-interval scheduler steps at each epoch's end, and max_epochs counts epochs: both keep Lightning's epochs."""
    dm = _on_device(torch.device("cpu"))
    dm.trainer.max_steps, dm.trainer.max_epochs = max_steps, max_epochs
    dm.trainer.lightning_module.lr_scheduler, dm.trainer.lightning_module.scheduler_interval = object(), interval
    loader = dm.train_dataloader()
    assert isinstance(loader, StepBudgetStreams) == spans and (not spans or len(loader) == max_steps)


@pytest.mark.parametrize(
    "device",
    [
        # the meta device stands in for a GPU on a CPU-only machine: the same code path, no memory, no kernels
        torch.device("meta"),
        pytest.param(torch.device("cuda", 0), marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
    ],
    ids=str,
)
def test_the_data_moves_to_the_device_once_and_batches_are_born_there(device):
    dm = _on_device(device)
    loaders = dm.train_dataloader()
    x, y = dm._tensors["train"]
    assert x.device == y.device == device  # moved with the first loader
    batch, _, _ = next(iter(loaders))
    assert batch["forget"][0].shape == (8, 1, 28, 28) and batch["retain"][0].shape == (16, 1, 28, 28)
    assert all(t.device == device for pair in batch.values() for t in pair)
    dm.val_dataloader()
    assert dm._tensors["train"][0] is x  # not moved, nor copied, again
    assert dm.transfer_batch_to_device(batch, torch.device("cpu"), 0) is batch  # Lightning's per-step transfer is skipped


def test_ranks_get_disjoint_shards_with_equal_batch_counts():
    loaders = [_on_device(torch.device("cpu"), world_size=2, rank=rank).loader("forget", train=True) for rank in (0, 1)]
    assert len(loaders[0]) == len(loaders[1])
    seen = [torch.cat([y for _, y in loader]) for loader in loaders]
    assert len(seen[0]) == len(seen[1])
    orders = [loader.index[loader.sampler.next_pass()] for loader in loaders]
    assert len(set(orders[0].tolist()) & set(orders[1].tolist())) <= 1  # disjoint but for the one padding sample


def test_loaded_tensors_are_kept_until_a_file_changes(data_copy: Path):
    first = load_mnist(data_copy, train=False)
    assert load_mnist(data_copy, train=False)[0] is first[0]  # read and normalised once per process
    labels = prepare_mnist(data_copy) / "t10k-labels-idx1-ubyte"
    stat = labels.stat()
    os.utime(labels, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    again = load_mnist(data_copy, train=False)  # re-verified and read again
    assert again[0] is not first[0] and torch.equal(again[0], first[0])
