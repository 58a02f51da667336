"""Data-parallel training: torchrun launches 2 CPU processes (gloo) on a tiny dataset."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from imgclf.data.datasets import ShardSampler
from imgclf.engine import dist
from imgclf.errors import ConfigError, RunError
from imgclf.evaluation import evaluate_folder


@pytest.mark.parametrize("shuffle", [True, False])
def test_shards_cover_every_sample_exactly_once(shuffle):
    for size, world in ((41, 2), (10, 3), (2, 4)):
        samplers = [ShardSampler(size, rank, world, shuffle, seed=7) for rank in range(world)]
        for epoch in (0, 1):
            for sampler in samplers:
                sampler.set_epoch(epoch)
            seen = [i for sampler in samplers for i in sampler]
            assert sorted(seen) == list(range(size))
            assert [len(s) for s in samplers] == [len(list(s)) for s in samplers]
    first = ShardSampler(41, 0, 2, True, seed=7)
    order0 = list(first)
    first.set_epoch(1)
    assert list(first) != order0  # a new permutation each epoch


def test_torchrun_two_processes_match_single_process_evaluation(tmp_path, make_image_folder):
    data = tmp_path / "data"
    # 41 training images in batches of 4: rank 0 takes 6 steps an epoch, rank 1 takes 5.
    make_image_folder(data / "train", {"red": 14, "green": 14, "blue": 13}, (32, 32), seed=1)
    make_image_folder(data / "val", {"red": 5, "green": 5, "blue": 5}, (32, 32), seed=3)
    make_image_folder(data / "test", {"red": 5, "green": 5, "blue": 5}, (32, 32), seed=2)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "imgclf", "train", str(data), "--out", str(run), "--epochs", "2",
           "--img-size", "32", "--amp", "off", "--batch-size", "4", "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))  # torchrun's own files
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=280)
    assert done.returncode == 0, done.stderr[-3000:]

    # Rank 0 alone prints, logs and writes: one 'run folder' line, one line per epoch.
    assert done.stdout.count("run folder:") == 1
    assert done.stderr.count("epoch 1/2") == 1
    written = sorted(p.name for p in run.iterdir())
    assert written == sorted(["best.pt", "config.yaml", "confusion_matrix.png", "history.csv",
                              "last.pt", "learning_curves.png", "metrics.json", "model.pt",
                              "predictions.csv", "roc_curves.png", "skipped.csv"])

    # The sampler covered every training image once per epoch across the two ranks, and the
    # gathered test metrics equal a single-process evaluation of the saved model.
    gathered = json.loads((run / "metrics.json").read_text())
    assert gathered["n_samples"] == 15
    single, _ = evaluate_folder(run, data, device="cpu")
    for key in ("accuracy", "balanced_accuracy", "f1_macro", "cohen_kappa"):
        assert gathered[key] == pytest.approx(single[key], abs=1e-9), key
    assert gathered["confusion_matrix"] == single["confusion_matrix"]
    assert gathered["log_loss"] == pytest.approx(single["log_loss"], rel=1e-5)


def test_torchrun_reports_an_input_error_once(tmp_path):
    missing = tmp_path / "no-such-data"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
           "2", "-m", "imgclf", "train", str(missing), "--device", "cpu"]
    env = dict(os.environ, OMP_NUM_THREADS="1", TMPDIR=str(tmp_path))  # torchrun's own files
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode != 0
    line = f"error: data folder '{missing}' does not exist or is not a folder."
    assert done.stderr.count(line) == 1, done.stderr[-3000:]


@pytest.mark.parametrize(("local_rank", "shown"), [("0", True), ("1", False)])
def test_an_input_error_is_printed_by_the_first_process_of_a_machine(
        local_rank, shown, tmp_path, monkeypatch, capsys):
    from imgclf.cli.main import main

    monkeypatch.setenv("LOCAL_RANK", local_rank)
    assert main(["train", str(tmp_path / "missing")]) == 2
    assert ("does not exist" in capsys.readouterr().err) == shown


def test_a_rank_error_is_printed_by_every_process(monkeypatch, capsys):
    from imgclf.cli import main as cli_main

    def stopped(args):
        raise RunError("rank 1 stopped: rank 0 stopped before training began")

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(cli_main.train, "run", stopped)
    assert cli_main.main(["train", "somewhere"]) == 2
    assert "error: rank 1 stopped" in capsys.readouterr().err


@pytest.fixture
def torchrun_env(monkeypatch):
    """The environment torchrun gives rank 0 of 2 processes on one machine, with one GPU,
    and a process group that records its backend instead of starting."""
    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "LOCAL_RANK": "0",
                       "LOCAL_WORLD_SIZE": "2"}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", lambda index: None)
    monkeypatch.setattr(torch, "set_num_threads", lambda n: None)
    backends = []
    monkeypatch.setattr(dist.td, "init_process_group", backends.append)
    return backends


def test_more_processes_than_gpus_is_refused_with_the_fix(torchrun_env):
    fix = r"2 processes .* 1 GPU.*--nproc_per_node 1.*--device cpu"
    with pytest.raises(ConfigError, match=fix):
        dist.init_from_env("auto")
    assert torchrun_env == []


def test_device_cpu_uses_gloo_even_with_a_gpu_present(torchrun_env):
    assert dist.init_from_env("cpu")
    assert torchrun_env == ["gloo"]


def test_one_process_per_gpu_uses_nccl_and_gloo_for_cpu_tensors(torchrun_env, monkeypatch):
    # The loop's totals, early-stopping flag and gathered outputs are CPU tensors, which
    # NCCL alone refuses ("No backend type associated with device type cpu").
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert dist.init_from_env("auto")
    assert torchrun_env == ["cpu:gloo,cuda:nccl"]


def test_cuda_asked_for_without_a_gpu_is_refused_before_joining(torchrun_env, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match=r"no CUDA GPU is available; use --device cpu"):
        dist.init_from_env("cuda")
    assert torchrun_env == []
    assert dist.init_from_env("auto")  # auto falls back to the CPU, as training does
    assert torchrun_env == ["gloo"]


def test_a_rank_left_waiting_by_a_failed_rank_0_stops_with_one_line(monkeypatch):
    def closed():
        raise RuntimeError("Connection closed by peer")

    monkeypatch.setattr(dist, "barrier", closed)
    monkeypatch.setattr(dist, "rank", lambda: 1)
    with pytest.raises(RunError, match="rank 1 stopped: rank 0 stopped before training began"):
        dist.wait_for_main()
