import json

from noisytail.cli import main
from noisytail.data.manifest import write_manifest


def test_inspect_prints_counts(toy_manifest, tmp_path, capsys):
    path = write_manifest(toy_manifest, tmp_path / "manifest.parquet")
    assert main(["inspect", str(path)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["train_per_class"] == {"class0": 30, "class1": 12, "class2": 6}
    assert summary["noise_rate"] == 0.0


def test_inspect_bad_manifest_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "m.parquet").write_text("junk")
    assert main(["inspect", str(tmp_path / "m.parquet")]) == 2
    assert "cannot read manifest" in capsys.readouterr().err
