import hashlib

import numpy as np
import pyarrow as pa
import pytest

from scalable_xmr.cli import main
from scalable_xmr.store.projection import (
    create_projection,
    load_projection,
    read_projection_metadata,
    save_projection,
)


def _rewrite(path, P, meta):
    """Write an Arrow file by hand (bypassing save_projection's checks)."""
    col = pa.FixedSizeListArray.from_arrays(pa.array(P.reshape(-1)), P.shape[1])
    table = pa.table({"P": col}).replace_schema_metadata(meta)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)


def test_orthonormal_and_deterministic():
    P = create_projection(512, 20, seed=0)
    assert P.shape == (512, 20) and P.dtype == np.float32
    assert np.abs(P.T.astype(np.float64) @ P - np.eye(20)).max() < 1e-5
    np.testing.assert_array_equal(P, create_projection(512, 20, seed=0))
    assert not np.array_equal(P, create_projection(512, 20, seed=1))
    # A full square P is orthogonal both ways.
    Q = create_projection(16, 16, seed=3)
    assert np.abs(Q @ Q.T - np.eye(16)).max() < 1e-5


def test_round_trip_bit_exact(tmp_path):
    P = create_projection(64, 10, seed=7)
    digest = save_projection(tmp_path / "p.arrow", P, seed=7)
    Q = load_projection(tmp_path / "p.arrow")
    assert Q.tobytes() == P.tobytes()
    meta = read_projection_metadata(tmp_path / "p.arrow")
    assert meta["dim"] == "64" and meta["n_classes"] == "10" and meta["seed"] == "7"
    assert meta["sha256"] == digest == hashlib.sha256(P.tobytes()).hexdigest()
    assert meta["method"]
    # Expected checks pass with the right values.
    load_projection(tmp_path / "p.arrow", expected_sha256=digest, expected_shape=(64, 10))
    # Only the final file is left (atomic write leaves no temporaries).
    assert [p.name for p in tmp_path.iterdir()] == ["p.arrow"]


def test_n_classes_greater_than_dim():
    with pytest.raises(ValueError, match=r"n_classes \(30\) > dim \(20\)"):
        create_projection(20, 30)


def test_bad_checksum(tmp_path):
    P = create_projection(32, 5, seed=0)
    meta = {"dim": "32", "n_classes": "5", "seed": "0", "method": "x", "sha256": "0" * 64}
    _rewrite(tmp_path / "p.arrow", P, meta)
    with pytest.raises(ValueError, match=r"p\.arrow: checksum check failed"):
        load_projection(tmp_path / "p.arrow")


def test_expected_checksum_mismatch(tmp_path):
    save_projection(tmp_path / "p.arrow", create_projection(32, 5, seed=0))
    with pytest.raises(ValueError, match="not the projection this run was trained with"):
        load_projection(tmp_path / "p.arrow", expected_sha256="f" * 64)


def test_bad_shape(tmp_path):
    P = create_projection(32, 5, seed=0)
    meta = {"dim": "31", "n_classes": "5", "seed": "0", "method": "x",
            "sha256": hashlib.sha256(P.tobytes()).hexdigest()}
    _rewrite(tmp_path / "p.arrow", P, meta)
    with pytest.raises(ValueError, match="shape check failed"):
        load_projection(tmp_path / "p.arrow")
    save_projection(tmp_path / "q.arrow", P)
    with pytest.raises(ValueError, match=r"shape check failed: P is \(32, 5\), expected \(32, 6\)"):
        load_projection(tmp_path / "q.arrow", expected_shape=(32, 6))


def test_not_orthonormal(tmp_path):
    P = create_projection(32, 5, seed=0) * np.float32(1.01)
    meta = {"dim": "32", "n_classes": "5", "seed": "0", "method": "x",
            "sha256": hashlib.sha256(P.tobytes()).hexdigest()}
    _rewrite(tmp_path / "p.arrow", P, meta)
    with pytest.raises(ValueError, match="orthonormality check failed"):
        load_projection(tmp_path / "p.arrow")
    with pytest.raises(ValueError, match="orthonormality check failed"):
        save_projection(tmp_path / "r.arrow", P)
    assert not (tmp_path / "r.arrow").exists()


def test_missing_and_unreadable(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nope\.arrow: projection file not found"):
        load_projection(tmp_path / "nope.arrow")
    (tmp_path / "junk.arrow").write_bytes(b"not arrow at all")
    with pytest.raises(ValueError, match=r"junk\.arrow: not a readable Arrow IPC"):
        load_projection(tmp_path / "junk.arrow")


def test_cli_create_show_and_errors(tmp_path, capsys):
    out = tmp_path / "p.arrow"
    assert main(["projection", "create", "--dim", "512", "--classes", "20", "--seed", "0",
                 "--out", str(out)]) == 0
    np.testing.assert_array_equal(load_projection(out), create_projection(512, 20, 0))
    assert main(["projection", "show", str(out)]) == 0
    shown = capsys.readouterr().out
    assert "512 x 20" in shown and "sha256" in shown
    # Refuses to overwrite, n_classes > dim, missing file: one line, non-zero.
    for argv, msg in [
        (["projection", "create", "--dim", "8", "--classes", "2", "--out", str(out)], "already exists"),
        (["projection", "create", "--dim", "8", "--classes", "9", "--out", str(tmp_path / "x")],
         "n_classes (9) > dim (8)"),
        (["projection", "show", str(tmp_path / "missing.arrow")], "projection file not found"),
    ]:
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert msg in err and err.count("\n") == 1 and "Traceback" not in err
