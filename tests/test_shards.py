"""Sample shards (``scoresde.shards``): atomic writes, damaged shards redrawn, another draw's folder refused,
ownership by rank, ordered assembly; and ``--mode sample`` drawn by two processes (Gloo), killed with SIGKILL
mid-draw and resumed, against one process."""
import json
import logging
import os
import zipfile

import numpy as np
import pytest

from scoresde import shards
from scoresde.shards import ShardError, ShardStore

IDENTITY = {"seed": 42, "step": 6, "sampler": "ddim", "options": {"nfe": 3}, "shape": (1, 16, 16)}


def store(folder, total=10, shard_size=4, **changes):
    return ShardStore(str(folder), total=total, shard_size=shard_size, identity={**IDENTITY, **changes})


def images(shard):
    """Samples whose value is their index, so that order and ownership show."""
    return np.broadcast_to(shard.indices()[:, None, None, None] % 256, (len(shard), 2, 2, 1)).astype(np.uint8)


def fill(s, shard_list=None):
    for shard in shard_list if shard_list is not None else s.shards:
        s.write(shard, images(shard), labels=shard.indices() % 3, nfe=10 * len(shard))


def test_shards_cut_the_indices_and_are_owned_round_robin(tmp_path):
    s = store(tmp_path, total=10, shard_size=4)
    assert [(x.start, x.end, x.name) for x in s.shards] == [
        (0, 4, "samples_000000-000004.npz"), (4, 8, "samples_000004-000008.npz"), (8, 10, "samples_000008-000010.npz")]
    s = store(tmp_path, total=23, shard_size=2)
    assert [x.number for x in s.owned(0, 3)] == [0, 3, 6, 9]
    assert [x.number for x in s.owned(1, 3)] == [1, 4, 7, 10]
    assert [x.number for x in s.owned(2, 3)] == [2, 5, 8, 11]
    assert sorted(x.number for r in range(5) for x in s.owned(r, 5)) == list(range(12))
    with pytest.raises(ValueError, match=r"rank must be in \[0, 2\), got 2"):
        s.owned(2, 2)
    with pytest.raises(ValueError, match="shard_size must be a positive integer, got 0"):
        store(tmp_path, shard_size=0)


def test_missing_resumes_at_the_first_missing_shard_and_load_all_is_in_index_order(tmp_path):
    s = store(tmp_path, total=10, shard_size=2)
    s.prepare()
    assert [x.number for x in s.missing(1, 2)] == [1, 3]
    fill(s, [s.shards[1], s.shards[4], s.shards[0]])  # written out of order
    assert [x.number for x in s.missing(0, 2)] == [2]
    assert [x.number for x in s.missing(1, 2)] == [3]
    assert [x.number for x in s.missing(0, 1)] == [2, 3]
    with pytest.raises(ShardError, match=r"lacks the samples 4\.\.7 \(2 of 5 shards\); draw them first: rerun "
                                         r"the same command"):
        s.load_all()
    with pytest.raises(ShardError, match="lacks the samples 4..7"):
        s.finish()
    fill(s, [s.shards[3], s.shards[2]])
    everything = s.load_all()
    assert everything["indices"].dtype == np.int64 and everything["indices"].tolist() == list(range(10))
    assert everything["samples"][:, 0, 0, 0].tolist() == list(range(10))
    assert everything["labels"].tolist() == [i % 3 for i in range(10)] and everything["nfe"] == 100
    assert s.nfe() == 100
    manifest = s.finish()
    assert manifest["complete"] and manifest["nfe"] == 100
    assert manifest["identity"] == {**json.loads(json.dumps(IDENTITY)), "total": 10, "shard_size": 2}
    assert [m["name"] for m in manifest["shards"]] == [x.name for x in s.shards]
    assert manifest["shards"][2]["sha256"] == shards._sha256(s.path(s.shards[2]))


def test_missing_ranges_are_merged():
    cut = [shards.Shard(k, 3 * k, 3 * k + 3) for k in range(6)]
    assert shards.index_ranges([cut[1], cut[2], cut[4]]) == "3..8, 12..14"


def test_writes_are_atomic_and_a_crash_mid_write_keeps_the_previous_state(tmp_path, monkeypatch):
    s = store(tmp_path)
    s.prepare()
    fill(s, s.shards[:1])
    before = open(s.path(s.shards[0]), "rb").read()
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "samples_000000-000004.npz"]

    def crash(*args, **kwargs):
        raise KeyboardInterrupt  # a signal arriving between the temporary file and the rename
    monkeypatch.setattr(os, "replace", crash)
    for shard in s.shards[:2]:  # a shard that is there, and one that is not
        with pytest.raises(KeyboardInterrupt):
            s.write(shard, images(shard) + 1)
    monkeypatch.undo()
    assert sorted(os.listdir(tmp_path)) == ["manifest.json", "samples_000000-000004.npz"]  # no temporary file
    assert open(s.path(s.shards[0]), "rb").read() == before
    assert [x.number for x in s.missing()] == [1, 2]


def test_temporary_files_of_a_killed_write_are_removed_at_prepare(tmp_path, caplog):
    s = store(tmp_path)
    s.prepare()
    left = tmp_path / ".tmp-samples_000004-000008.npz-abc123"  # what SIGKILL during a write leaves
    left.write_bytes(b"PK\x03\x04 half a zip")
    with caplog.at_level(logging.WARNING, logger="scoresde"):
        assert store(tmp_path).prepare() == [str(left)]
    assert not left.exists() and f"removed {left}, left by a write that was interrupted" in caplog.text


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "other_indices"])
def test_a_damaged_shard_is_set_aside_and_drawn_again(tmp_path, caplog, damage):
    s = store(tmp_path, total=8, shard_size=4)
    s.prepare()
    fill(s)
    path = s.path(s.shards[1])
    data = open(path, "rb").read()
    if damage == "truncate":
        data = data[:len(data) // 2]
    elif damage == "flip":  # one byte inside the compressed samples: the zip's CRC catches it
        with zipfile.ZipFile(path) as z:
            info = z.getinfo("samples.npy")
        at = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.compress_size // 2
        data = data[:at] + bytes([data[at] ^ 0xFF]) + data[at + 1:]
    elif damage == "empty":
        data = b""
    else:
        s.write(s.shards[0], images(s.shards[0]))
        data = open(s.path(s.shards[0]), "rb").read()
    open(path, "wb").write(data)
    with caplog.at_level(logging.WARNING, logger="scoresde"):
        assert [x.number for x in s.missing(0, 1)] == [1]
    assert f"damaged sample shard {path} (" in caplog.text and f"renamed to {path}.damaged and drawn again" in caplog.text
    assert not os.path.exists(path) and os.path.exists(path + ".damaged")
    fill(s, s.shards[1:])
    assert s.missing() == [] and s.load_all()["indices"].tolist() == list(range(8))


def test_another_draw_in_the_folder_is_refused_naming_the_fields(tmp_path):
    store(tmp_path).prepare()
    store(tmp_path).prepare()  # the same draw: resumes
    with pytest.raises(ShardError) as e:
        store(tmp_path, total=12, step=7)
    assert str(e.value) == (f"{tmp_path} holds samples of another draw (step: 6 there, 7 now; total: 10 there, 12 now); "
                            "use another folder or delete it to draw afresh")
    with pytest.raises(ShardError, match=r"options: \{\"nfe\": 3\} there, \{\"nfe\": 5\} now\); use another folder"):
        store(tmp_path, options={"nfe": 5})
    with pytest.raises(ShardError, match=r"labels: \"\(unset\)\" there, \[0, 1\] now"):
        store(tmp_path, labels=[0, 1])


def test_shards_without_a_manifest_are_refused(tmp_path):
    s = store(tmp_path)
    s.prepare()
    fill(s, s.shards[:1])
    os.remove(s.manifest_path)
    with pytest.raises(ShardError, match=f"{tmp_path} holds sample shards but no manifest.json, so what they were "
                                         "drawn with is unknown; use another folder or delete it"):
        store(tmp_path)


@pytest.mark.parametrize("field", ["sampling.shard_size", "eval.shard_size"])
@pytest.mark.parametrize("value", [0, -3])  # ml_collections refuses floats and bools for an int field
def test_shard_sizes_are_checked_naming_the_field(field, value):
    pytest.importorskip("sklearn")
    import run_lib
    from test_run_lib import tiny_config
    with pytest.raises(ValueError) as e:
        run_lib.check_config(tiny_config(**{field: value}))
    assert str(e.value) == f"config.{field} = {value!r}: must be a positive integer"
