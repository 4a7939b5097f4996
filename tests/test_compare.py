"""toolkit compare: two runs' loss curves, a verdict, an exit code."""

from __future__ import annotations

import json

import pytest
from helpers import read_run

from toolkit.cli import main


def run_json(path, losses, config="abc", device="cpu", values=None):
    path.mkdir()
    (path / "run.json").write_text(
        json.dumps(
            {
                "config_sha256": config,
                "final_loss": losses[-1],
                "config": {"output_dir": str(path), "learning_rate": 0.01, **(values or {})},
                "loss_history": [[5 * (i + 1), x] for i, x in enumerate(losses)],
                "resolved": {"device_name": device, "dtype": "float32"},
                "environment": {"image": None, "libraries": {"torch": "2.13.0"}},
            }
        )
    )
    return path


def test_same_within_tolerance(tmp_path, capsys):
    a = run_json(tmp_path / "a", [6.0, 5.5, 5.1])
    b = run_json(tmp_path / "b", [6.0, 5.501, 5.102], device="AMD Instinct MI300X")
    assert main(["compare", str(a), str(b / "run.json")]) == 0
    out = capsys.readouterr().out
    assert "3 steps compared; largest difference 0.002 at step 15" in out
    assert out.rstrip().endswith("SAME within rtol=0.01, atol=0.001")


def test_different_names_the_step(tmp_path, capsys):
    a = run_json(tmp_path / "a", [6.0, 5.5, 5.1])
    b = run_json(tmp_path / "b", [6.0, 5.9, 5.8], config="other", values={"learning_rate": 0.02})
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "note: the two configs differ in learning_rate (0.01 → 0.02)" in out
    assert "largest difference 0.7 at step 15" in out and "DIFFERENT" in out


def test_identical_runs_in_two_folders(tmp_path, capsys):
    """Only output_dir differs: no note about configs, and no 'difference 0 at step None'."""
    a = run_json(tmp_path / "a", [6.0, 5.5], config="x")
    b = run_json(tmp_path / "b", [6.0, 5.5], config="y")
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "configs differ" not in out and "None" not in out
    assert "2 steps compared; the losses are identical at every step" in out


def test_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "no run.json there; give a training output_dir" in capsys.readouterr().err


def test_reproduce_reruns_a_local_run_and_finds_the_same_curve(
    tiny_model_dir, write_config, tmp_path, capsys
):
    path = write_config(
        {
            "base_model": str(tiny_model_dir),
            "max_steps": 6,
            "logging_steps": 2,
            "batch_size": 4,
            "micro_batch_size": 2,
            "save_steps": 100,
            "gradient_accumulation_steps": None,
        }
    )
    assert main(["train", str(path), "--runtime", "local"]) == 0
    capsys.readouterr()
    assert main(["reproduce", str(tmp_path / "out" / "run.json")]) == 0
    out = capsys.readouterr().out
    assert f"reproduce: config: the recorded values of {path}" in out
    first = read_run(tmp_path / "out")
    again = read_run(tmp_path / "out-reproduced")
    assert again["loss_history"] == first["loss_history"]
    assert again["config"]["gradient_accumulation_steps"] == 1 and again["steps"] == 6
    assert main(["reproduce", str(tmp_path / "out")]) == 2  # the rerun's folder is taken


@pytest.mark.parametrize(
    ("environ", "where"),
    [
        ({}, "host"),
        ({"TOOLKIT_VARIANT": "cu130"}, "host"),  # on the host: only the user's default choice
        (
            {"TOOLKIT_IN_CONTAINER": "1", "TOOLKIT_VARIANT": "cu130"},
            "the cu130 image (tag not recorded)",
        ),
        (
            {"TOOLKIT_IN_CONTAINER": "1", "TOOLKIT_VARIANT": "cpu", "TOOLKIT_IMAGE": "toolkit:x"},
            "toolkit:x",
        ),
    ],
)
def test_a_run_started_inside_an_image_by_hand_is_not_called_host(
    environ, where, tiny_model_dir, write_config, monkeypatch
):
    """`docker run IMAGE toolkit train …` (no TOOLKIT_IMAGE from a host command): the
    record keeps the image's variant, and compare names it rather than "host"."""
    from toolkit.compare import describe, read_run

    for name in ("TOOLKIT_IN_CONTAINER", "TOOLKIT_VARIANT", "TOOLKIT_IMAGE"):
        monkeypatch.delenv(name, raising=False)
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    changes = {"max_steps": 1, "logging_steps": 1, "val_set_size": 0.0}
    path = write_config({"base_model": str(tiny_model_dir), **changes})
    assert main(["train", str(path), "--runtime", "local"]) == 0
    assert describe(read_run(str(path.parent / "out"))).split(", ")[1] == where
