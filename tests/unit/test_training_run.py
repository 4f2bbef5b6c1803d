"""`bigru-train` end to end (tiny models, few epochs): learns the synthetic task, writes the run directory."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from training.cli import COMMANDS, main
from training.model.checkpoint import load_checkpoint
from training.model.data import normalization, stratified_split, synthetic
from training.model.formats import load_dataset

DATA = Path(__file__).parents[1] / "data"
TINY = ["--hidden", "16", "--layers", "1", "--no-plots"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_short_run_learns_synthetic_and_writes_the_run_dir(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--data", "synthetic", "--n", "1500", "--test-n", "2000", "--epochs", "8", "--hidden", "16", "--layers", "1",
               "--out", str(tmp_path), "--json", "--seed", "3", "--validation"])
    assert rc == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["test_accuracy"] > 0.9 and summary["val_accuracy"] > 0.9  # chance is 0.5, Bayes 0.98
    for key in ("checkpoint", "version", "params", "seconds_per_epoch"):
        assert key in summary
    run_dir = Path(summary["checkpoint"]).parent
    assert (tmp_path / "latest").read_text().strip() == summary["version"] == run_dir.name
    for f in ("metrics.json", "loss.png", "accuracy.png", "confusion.png"):
        assert (run_dir / f).stat().st_size > 0, f
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["test"]["windows"] == 2000 and np.array(m["test"]["confusion"]).sum() == 2000
    assert set(m["test"]["per_class"]) == {"0", "1"} and 0 < m["test"]["per_class"]["1"]["f1"] <= 1
    assert m["params"] == summary["params"] and len(m["history"]) == m["epochs"]
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.metrics["test_accuracy"] == summary["test_accuracy"]
    # normalization comes from the training part only (the refit model: train + validation, never test)
    full = synthetic(1500, 20, 3)
    mean, std = normalization(full)
    assert np.allclose(ckpt.mean, mean) and np.allclose(ckpt.std, std)
    assert ckpt.golden_x is not None and len(ckpt.golden_x) == 256 and ckpt.data_fingerprint


def test_no_refit_normalizes_on_the_training_split_only(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["--data", str(DATA / "ItalyPowerDemand_TRAIN.ts"), "--epochs", "2", "--no-refit", "--out", str(tmp_path),
               "--json", *TINY])
    assert rc == 0
    ckpt = load_checkpoint(tmp_path)
    ds = load_dataset(DATA / "ItalyPowerDemand_TRAIN.ts")
    tr, _ = stratified_split(ds.y, 0.2, 0)
    mean, std = normalization(ds.subset(tr))
    assert np.allclose(ckpt.mean, mean) and np.allclose(ckpt.std, std)
    assert ckpt.classes == ["1", "2"]
    assert "test_accuracy" not in json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_file_train_and_test_split(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ts = str(DATA / "ItalyPowerDemand_TRAIN.ts")
    assert main(["--data", ts, "--test", ts, "--epochs", "2", "--out", str(tmp_path), "--json", *TINY]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    metrics = json.loads((Path(summary["checkpoint"]).parent / "metrics.json").read_text())
    assert metrics["test"]["windows"] == 67


def test_unequal_length_csv_trains(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    lines = ["t0,t1,t2,t3,t4,t5,label"]
    for i in range(60):
        n = int(rng.integers(2, 7))
        vals = rng.standard_normal(n) + (1.5 if i % 2 else -1.5)
        lines.append(",".join([f"{v:.3f}" for v in vals] + [""] * (6 - n) + ["hi" if i % 2 else "lo"]))
    (tmp_path / "w.csv").write_text("\n".join(lines) + "\n")
    assert main(["--data", str(tmp_path / "w.csv"), "--epochs", "3", "--out", str(tmp_path / "ck"), *TINY]) == 0
    assert load_checkpoint(tmp_path / "ck").classes == ["hi", "lo"]


def test_bad_input_fails_with_a_clear_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "bad.ts").write_text("@classLabel true a b\n@data\n1,2,oops:a\n")
    assert main(["--data", str(tmp_path / "bad.ts"), "--out", str(tmp_path)]) == 2
    assert "bad.ts:3" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--data", "synthetic", "--schedule", "linear", "--out", str(tmp_path)])
    assert main(["--data", "synthetic", "--pooling", "sum", "--out", str(tmp_path)]) == 2
    assert "pooling" in capsys.readouterr().err
    assert not (tmp_path / "latest").exists()


def test_subcommands_are_a_dict_of_entry_points() -> None:
    from training.cli import command

    assert {"train", "compare", "export", "accuracy"} <= set(COMMANDS)
    assert all(callable(command(name)) for name in COMMANDS)


def test_one_epoch_event_per_epoch_when_not_on_a_terminal(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a terminal there is no progress bar: each epoch of the fit and the refit logs one JSON event."""
    rc = main(["--data", "synthetic", "--n", "300", "--epochs", "3", "--hidden", "8", "--channels", "8",
               "--out", str(tmp_path), "--json", "--no-plots", "--validation"])
    assert rc == 0
    out, err = capsys.readouterr()
    assert json.loads(out.strip().splitlines()[-1])["epochs"] == 3  # stdout: the summary only
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    epochs = [e for e in events if e["event"] == "epoch"]
    assert [(e["phase"], e["epoch"]) for e in epochs] == [("fit", 1), ("fit", 2), ("fit", 3),
                                                          ("refit", 1), ("refit", 2), ("refit", 3)]
    assert {"train_loss", "val_accuracy", "lr"} <= set(epochs[0])
    assert "it/s" not in err and "epoch/s" not in err  # no tqdm bar


def test_compare_runs_the_cell_variants_on_the_default_model(tmp_path: Path) -> None:
    from training.experiments.compare import main as compare_main

    rc = compare_main(["--seeds", "1", "--n", "300", "--test-n", "200", "--tasks", "synthetic", "--epochs", "1",
                       "--variants", "LSTM,BiGRU", "--results", str(tmp_path)])
    assert rc == 0
    runs = json.loads((tmp_path / "compare.json").read_text())["runs"]
    assert [(r["variant"], r["config"]["cell"], r["config"]["bidirectional"]) for r in runs] == [
        ("LSTM", "lstm", False), ("BiGRU", "gru", True)]
    assert all(r["config"]["channels"] > 0 and 0.5 < r["test_accuracy"] <= 1 for r in runs)
    assert "| synthetic | BiGRU |" in (tmp_path / "compare.md").read_text()


def test_default_is_one_run_on_all_training_windows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Without --validation there is no validation run: one fit on train + validation, for the step budget."""
    rc = main(["--data", "synthetic", "--n", "300", "--epochs", "3", "--hidden", "8", "--channels", "8",
               "--out", str(tmp_path), "--json", "--no-plots", "--members", "2"])
    assert rc == 0
    out, err = capsys.readouterr()
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["val_accuracy"] is None and summary["epochs"] == 3
    events = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [e["epoch"] for e in events if e["event"] == "epoch"] == [1, 2, 3]
    assert {e["phase"] for e in events if e["event"] == "epoch"} == {"fit"}
    ckpt = load_checkpoint(tmp_path)
    mean, std = normalization(synthetic(300, 20, 0))  # every training window, as a refit's
    assert np.allclose(ckpt.mean, mean) and np.allclose(ckpt.std, std)
    assert ckpt.config.members == 2 and any(k.startswith("others.0.") for k in ckpt.state_dict)


def test_one_window_per_class_trains_without_a_validation_run(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A UCR set with one training series per class (Fungi) leaves an empty validation split."""
    rows = "".join(f"{c}\t" + "\t".join(str(v) for v in np.sin(np.arange(12) * (c + 1))) + "\n" for c in range(4))
    (tmp_path / "One_TRAIN.tsv").write_text(rows)
    data = str(tmp_path / "One_TRAIN.tsv")
    assert main(["--data", data, "--test", data, "--epochs", "2", "--out", str(tmp_path), "--json", *TINY]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["test_accuracy"] >= 0.0
    assert main(["--data", data, "--epochs", "2", "--out", str(tmp_path), "--validation", *TINY]) == 2
    err = capsys.readouterr().err
    assert "validation split" in err and "is empty" in err
