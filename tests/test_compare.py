"""toolkit compare: two runs' loss curves, a verdict, an exit code."""

from __future__ import annotations

import json

from toolkit.cli import main


def run_json(path, losses, config="abc", device="cpu"):
    path.mkdir()
    (path / "run.json").write_text(json.dumps({
        "config_sha256": config, "final_loss": losses[-1],
        "loss_history": [[5 * (i + 1), x] for i, x in enumerate(losses)],
        "resolved": {"device_name": device, "dtype": "float32"},
        "environment": {"image": None, "libraries": {"torch": "2.13.0"}}}))
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
    b = run_json(tmp_path / "b", [6.0, 5.9, 5.8], config="other")
    assert main(["compare", str(a), str(b)]) == 1
    out = capsys.readouterr().out
    assert "note: the two configs differ" in out
    assert "largest difference 0.7 at step 15" in out and "DIFFERENT" in out


def test_not_a_run(tmp_path, capsys):
    assert main(["compare", str(tmp_path), str(tmp_path)]) == 2
    assert "no run.json there; give a training output_dir" in capsys.readouterr().err
