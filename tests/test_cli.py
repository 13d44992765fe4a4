import json

from noisytail.cli import main
from noisytail.data.manifest import write_manifest


def test_inspect_prints_counts(toy_manifest, tmp_path, capsys):
    path = write_manifest(toy_manifest, tmp_path / "manifest.parquet")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    summary = json.loads(out[: out.index("\n}") + 2])  # the summary, then the class table
    assert summary["num_classes"] == 3 and summary["noise_rate"] == 0.0
    assert summary["train_images_per_class"] == {"max": 30, "median": 12.0, "min": 6}
    table = out[out.index("\n}") + 2 :].split()
    assert table[:6] == ["class", "given", "clean", "noisy", "class0", "30"]


def test_inspect_bad_manifest_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "m.parquet").write_text("junk")
    assert main(["inspect", str(tmp_path / "m.parquet")]) == 2
    assert "cannot read manifest" in capsys.readouterr().err
