import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from schooner.frameworks import closure
from schooner.frameworks.artifact import MANIFEST_NAME, open_artifact, read_manifest
from schooner.runtime.errors import ArtifactError, IncompatibleArtifact


def load(path):
    fw = closure.ClosureFramework(open_artifact(path))
    fw.load()
    return fw


def test_round_trip_and_manifest(tmp_path):
    scale = 3.0
    path = closure.save(lambda xs: [str(float(np.sum(x)) * scale) for x in xs], tmp_path / "a",
                        pkgs_to_install=["scikit-learn==1.5", " "])  # fmt: skip
    manifest = read_manifest(path)
    assert manifest["framework"] == "closure" and manifest["format"] == 1
    assert manifest["python"] == ".".join(map(str, sys.version_info[:3]))
    assert manifest["versions"]["cloudpickle"] and manifest["schooner_version"]
    assert (path / "requirements.txt").read_text() == "scikit-learn==1.5\n"
    assert load(path).predict(np.ones((2, 2))) == ["6.0", "6.0"]


def test_local_modules_are_pickled_by_value(tmp_path, monkeypatch):
    src = tmp_path / "src"
    (src / "mylib").mkdir(parents=True)
    (src / "mylib" / "__init__.py").write_text("from mylib.helpers import double\n")
    (src / "mylib" / "helpers.py").write_text(textwrap.dedent("""
        import numpy as np
        import featurize
        def double(x):
            return featurize.total(x) * 2
    """))
    (src / "featurize.py").write_text("import numpy as np\ndef total(x):\n    return float(np.sum(x))\n")
    monkeypatch.syspath_prepend(str(src))
    import mylib

    def predict(xs):
        return [str(mylib.double(x)) for x in xs]

    names = {m.__name__ for m in closure.local_modules(predict)}
    # this test module is a local file too; numpy and pytest are installed, so never captured
    assert {"mylib", "featurize"} <= names and not names & {"numpy", "pytest", "schooner"}
    path = closure.save(predict, tmp_path / "art")
    assert {"featurize", "mylib"} <= set(read_manifest(path)["captured_modules"])
    # A fresh interpreter that cannot import mylib or featurize still runs the closure.
    code = textwrap.dedent(f"""
        import numpy as np
        from schooner.frameworks.closure import ClosureFramework
        from schooner.frameworks.artifact import open_artifact
        fw = ClosureFramework(open_artifact({str(path)!r})); fw.load()
        print(fw.predict(np.ones((1, 3))))
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=tmp_path, check=True)  # fmt: skip
    assert out.stdout.strip() == "['6.0']"


def test_loading_in_process_leaves_the_live_classes_alone(tmp_path, monkeypatch):
    """A notebook deploys, then loads the artifact (or a process loads two artifacts of one
    module): the user's own class keeps its methods, source and globals."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "scorer.py").write_text(textwrap.dedent("""
        import enum
        OFFSET = 1.0
        class Kind(enum.Enum):
            SUM = "sum"
        class Scorer:
            kind = Kind.SUM
            def score(self, x):
                return float(sum(x)) + OFFSET
    """))
    monkeypatch.syspath_prepend(str(src))
    import inspect

    import scorer

    def predict(xs, cls=scorer.Scorer):
        return [str(cls().score(x)) for x in xs]

    live_method = scorer.Scorer.score
    first = closure.save(predict, tmp_path / "first")
    second = closure.save(predict, tmp_path / "second")
    a, b = load(first), load(second)
    assert a.predict([[1.0, 2.0]]) == b.predict([[1.0, 2.0]]) == ["4.0"]
    assert scorer.Scorer.score is live_method
    assert scorer.Scorer.score.__code__.co_filename == str(src / "scorer.py")
    assert "OFFSET" in inspect.getsource(scorer.Scorer)
    scorer.OFFSET = 10.0  # the live module's globals still drive the live class
    assert scorer.Scorer().score([1.0]) == 11.0
    assert a.predict([[1.0]]) == ["2.0"]  # the artifact keeps the value it was saved with
    # each load has its own copy of the class: loading the second did not rebind the first
    classes = [a.func.__defaults__[0], b.func.__defaults__[0], scorer.Scorer]
    assert len({id(c) for c in classes}) == 3


def _edit_manifest(path, **changes):
    manifest = json.loads((path / MANIFEST_NAME).read_text())
    for key, value in changes.items():
        if key == "cloudpickle":
            manifest["versions"]["cloudpickle"] = value
        else:
            manifest[key] = value
    (path / MANIFEST_NAME).write_text(json.dumps(manifest))


def test_other_python_minor_is_refused_clearly(tmp_path):
    path = closure.save(lambda xs: list(map(str, xs)), tmp_path)
    _edit_manifest(path, python="3.8.10")
    with pytest.raises(IncompatibleArtifact, match=r"made with Python 3\.8\.10.*same Python minor"):
        load(path)


def test_newer_cloudpickle_is_refused_clearly(tmp_path):
    path = closure.save(lambda xs: list(map(str, xs)), tmp_path)
    _edit_manifest(path, cloudpickle="99.0.0")
    with pytest.raises(IncompatibleArtifact, match="cloudpickle 99.0.0"):
        load(path)


def test_unpicklable_data_names_the_versions(tmp_path):
    path = closure.save(lambda xs: list(map(str, xs)), tmp_path)
    (path / closure.FUNC_FILE).write_bytes(b"not a pickle")
    with pytest.raises(IncompatibleArtifact, match=r"cannot unpickle .*made with Python"):
        load(path)


def test_missing_pieces(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        open_artifact(tmp_path / "nope")
    with pytest.raises(ArtifactError, match="schooner.json is missing"):
        open_artifact(tmp_path)
    path = closure.save(lambda xs: xs, tmp_path / "x")
    (path / closure.FUNC_FILE).unlink()
    with pytest.raises(ArtifactError, match="func.pkl is missing"):
        load(path)
    _edit_manifest(path, format=7)
    with pytest.raises(IncompatibleArtifact, match="artifact format 7"):
        open_artifact(path)


def test_save_rejects_a_non_callable(tmp_path):
    with pytest.raises(TypeError, match="callable"):
        closure.save("not a function", tmp_path)  # type: ignore[arg-type]
