"""A resumable set of sample shards: one draw of ``total`` samples, cut into files that any number of
processes write, each its own, and that a pre-empted draw resumes from.

Sample indices ``0 .. total - 1`` are cut into shards of ``shard_size`` (the last may be shorter); shard
``k`` holds indices ``[k * shard_size, min((k + 1) * shard_size, total))`` as
``samples_<start:06d>-<end:06d>.npz`` (``end`` exclusive) with

- ``samples``: what the draw keeps of each sample (``uint8 [n, H, W, C]`` images, or float points);
- ``indices``: the sample indices, int64 (checked when the shard is read);
- ``labels``: the class label of each sample, when the draw is class-conditional;
- ``nfe``: the score evaluations spent drawing this shard (so the draw's total survives a resume).

Rank ``r`` of ``W`` owns shards ``r, r + W, r + 2W, ...``. A shard is *done* when its file exists and
reads back with the expected indices: a truncated or otherwise unreadable file is renamed
``<file>.damaged`` with a warning and drawn again. Every file is written atomically (a temporary file
``.tmp-<name>-*`` in the same folder, flushed, fsynced, ``os.replace``d): a kill leaves either no shard
or a whole one, and the temporary files of killed writes are removed by :meth:`ShardStore.prepare`.

``manifest.json`` (written by one process, :meth:`ShardStore.prepare` and :meth:`ShardStore.finish`)
records the draw's identity (seed, checkpoint step, sampler and options, ``total``, ``shard_size``,
...: whatever the caller passes) and, once every shard is there, each shard's SHA-256 and NFE. Opening
a folder whose manifest records another identity is refused, naming the fields that differ.

Usage under ``torchrun`` (rank 0 first, so no rank draws while stale files are removed)::

    store = ShardStore(folder, total=50000, shard_size=1000, identity={"seed": 42, "step": step, ...})
    if rank == 0:
        store.prepare()
    barrier()
    for shard in store.missing(rank, world_size):
        store.write(shard, samples, labels=labels, nfe=nfe)   # samples of shard.indices()
    barrier()
    if rank == 0:
        everything = store.load_all()
        store.finish()
"""
import dataclasses
import io
import json
import logging
import os
import zipfile
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .checkpoint import TEMPORARY_PREFIX, atomic_write_bytes, file_sha256

log = logging.getLogger("scoresde")

MANIFEST = "manifest.json"
FORMAT = 1  # the manifest's format version


class ShardError(ValueError):
    """A shard folder that cannot serve this draw (another draw's folder, missing shards)."""


@dataclasses.dataclass(frozen=True)
class Shard:
    """Shard ``number``: sample indices ``start .. end - 1``."""
    number: int
    start: int
    end: int

    @property
    def name(self) -> str:
        return f"samples_{self.start:06d}-{self.end:06d}.npz"

    def indices(self) -> np.ndarray:
        return np.arange(self.start, self.end, dtype=np.int64)

    def __len__(self) -> int:
        return self.end - self.start


def _positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


def _normalise(identity: Dict[str, Any]) -> Dict[str, Any]:
    """``identity`` as it reads back from JSON (tuples become lists), so that equality means equal files."""
    try:
        return json.loads(json.dumps(identity, sort_keys=True))
    except TypeError as e:
        raise TypeError(f"the identity of a shard set must be JSON-serialisable: {e}") from None


def index_ranges(shards: Sequence[Shard]) -> str:
    """``"0..999, 3000..4499"``: the sample indices of ``shards``, consecutive shards merged."""
    spans: List[List[int]] = []
    for shard in sorted(shards, key=lambda s: s.start):
        if spans and spans[-1][1] == shard.start:
            spans[-1][1] = shard.end
        else:
            spans.append([shard.start, shard.end])
    return ", ".join(f"{a}..{b - 1}" for a, b in spans)


class ShardStore:
    """The shards of one draw of ``total`` samples in ``folder`` (see the module docstring).

    Opening checks ``folder``'s manifest, if there is one, against ``identity`` (a JSON-serialisable
    dict; ``total`` and ``shard_size`` are added to it) and raises :class:`ShardError` naming the
    fields that differ. Reads nothing else and writes nothing."""

    def __init__(self, folder: str, *, total: int, shard_size: int, identity: Dict[str, Any]):
        self.folder = folder
        self.total = _positive_int(total, "total")
        self.shard_size = _positive_int(shard_size, "shard_size")
        self.identity = _normalise({**identity, "total": self.total, "shard_size": self.shard_size})
        self.shards = [Shard(k, start, min(start + self.shard_size, self.total))
                       for k, start in enumerate(range(0, self.total, self.shard_size))]
        self._check_identity()

    @property
    def manifest_path(self) -> str:
        return os.path.join(self.folder, MANIFEST)

    def path(self, shard: Shard) -> str:
        return os.path.join(self.folder, shard.name)

    # ------------------------------------------------------------------ the manifest

    def _read_manifest(self) -> Optional[Dict[str, Any]]:
        if not os.path.isfile(self.manifest_path):
            return None
        try:
            with open(self.manifest_path) as f:
                manifest = json.load(f)
        except (OSError, ValueError) as e:
            raise ShardError(f"{self.manifest_path} is unreadable ({e}); use another folder or delete it") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("identity"), dict):
            raise ShardError(f"{self.manifest_path} is not a shard manifest (no 'identity'); use another folder "
                             "or delete it")
        return manifest

    def _check_identity(self) -> None:
        manifest = self._read_manifest()
        if manifest is None:
            if os.path.isdir(self.folder) and any(n.startswith("samples_") for n in os.listdir(self.folder)):
                raise ShardError(f"{self.folder} holds sample shards but no {MANIFEST}, so what they were drawn "
                                 "with is unknown; use another folder or delete it")
            return
        there, here = manifest["identity"], self.identity
        missing = "(unset)"
        differ = [key for key in sorted(set(there) | set(here)) if there.get(key, missing) != here.get(key, missing)]
        if differ:
            listing = "; ".join(f"{key}: {json.dumps(there.get(key, missing))} there, "
                                f"{json.dumps(here.get(key, missing))} now" for key in differ)
            raise ShardError(f"{self.folder} holds samples of another draw ({listing}); use another folder or "
                             "delete it to draw afresh")

    def _write_manifest(self, **extra: Any) -> None:
        record = {"format": FORMAT, "identity": self.identity, "num_shards": len(self.shards), **extra}
        atomic_write_bytes(json.dumps(record, indent=2, sort_keys=True).encode(), self.manifest_path)

    def prepare(self) -> List[str]:
        """For one process, before any draws: create the folder, delete the temporary files of writes a kill
        interrupted (returned), and write the manifest if there is none."""
        os.makedirs(self.folder, exist_ok=True)
        removed = []
        for name in sorted(os.listdir(self.folder)):
            path = os.path.join(self.folder, name)
            if name.startswith(TEMPORARY_PREFIX) and os.path.isfile(path):
                os.remove(path)
                removed.append(path)
                log.warning("removed %s, left by a write that was interrupted", path)
        if self._read_manifest() is None:
            self._write_manifest(complete=False)
        return removed

    def finish(self) -> Dict[str, Any]:
        """For one process, once every shard is there: the manifest records each shard's SHA-256 and NFE
        and ``complete: true``. Returns the manifest. :class:`ShardError` names missing shards."""
        self._check_complete()
        shards = []
        for shard in self.shards:
            path = self.path(shard)
            shards.append({"name": shard.name, "start": shard.start, "end": shard.end, "sha256": file_sha256(path),
                           "nfe": self._read(shard, keys=("nfe",))["nfe"]})
        self._write_manifest(complete=True, shards=shards, nfe=sum(s["nfe"] for s in shards))
        with open(self.manifest_path) as f:
            return json.load(f)

    # ------------------------------------------------------------------ shards

    def owned(self, rank: int, world_size: int) -> List[Shard]:
        """The shards of rank ``rank`` of ``world_size``: ``rank, rank + world_size, ...``."""
        world_size = _positive_int(world_size, "world_size")
        if isinstance(rank, bool) or not isinstance(rank, (int, np.integer)) or not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, {world_size}), got {rank!r}")
        return self.shards[rank::world_size]

    def missing(self, rank: int = 0, world_size: int = 1) -> List[Shard]:
        """Rank ``rank``'s shards still to draw, in order: absent, or damaged (renamed ``*.damaged`` here,
        with a warning naming the file)."""
        return [shard for shard in self.owned(rank, world_size) if not self.is_done(shard)]

    def is_done(self, shard: Shard) -> bool:
        """Whether ``shard``'s file is there and reads back whole with its indices; a damaged file is
        renamed ``<file>.damaged`` (for its owner only: no other process reads it meanwhile)."""
        path = self.path(shard)
        if not os.path.isfile(path):
            return False
        try:
            self._read(shard)
        except ShardError as e:
            target = path + ".damaged"
            os.replace(path, target)
            log.warning("%s; renamed to %s and drawn again", e, target)
            return False
        return True

    def _read(self, shard: Shard, keys: Optional[Sequence[str]] = None) -> Dict[str, Any]:
        """The arrays of ``shard`` (all, or ``keys``), every one read in full (zip CRCs checked) and checked
        against the shard's indices; :class:`ShardError` says what is wrong."""
        path = self.path(shard)
        try:
            with np.load(path, allow_pickle=False) as data:
                names = list(keys if keys is not None else data.files)
                arrays = {name: data[name] for name in names}
                indices = data["indices"] if keys is not None else arrays["indices"]
        except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as e:
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise ShardError(f"damaged sample shard {path} ({type(e).__name__}: {reason})") from None
        if not np.array_equal(indices, shard.indices()):
            raise ShardError(f"damaged sample shard {path} (it does not hold indices {shard.start}..{shard.end - 1})")
        for name, value in arrays.items():
            if name != "nfe" and len(value) != len(shard):
                raise ShardError(f"damaged sample shard {path} ({name} has {len(value)} rows, not {len(shard)})")
        if "nfe" in arrays:
            arrays["nfe"] = int(arrays["nfe"])
        return arrays

    def write(self, shard: Shard, samples: np.ndarray, labels: Optional[np.ndarray] = None, nfe: int = 0) -> str:
        """Write ``shard`` atomically: ``samples`` (and ``labels``) of its indices, in order; returns the path."""
        samples = np.asarray(samples)
        if samples.shape[0] != len(shard) or (labels is not None and len(labels) != len(shard)):
            raise ValueError(f"shard {shard.name} holds {len(shard)} samples; got {samples.shape[0]} samples"
                             + ("" if labels is None else f" and {len(labels)} labels"))
        arrays = {"samples": samples, "indices": shard.indices(), "nfe": np.int64(nfe)}
        if labels is not None:
            arrays["labels"] = np.asarray(labels, dtype=np.int64)
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **arrays)
        atomic_write_bytes(buffer.getvalue(), self.path(shard))
        return self.path(shard)

    def load(self, shards: Sequence[Shard]) -> Dict[str, np.ndarray]:
        """``samples``, ``indices`` (and ``labels``) of ``shards`` concatenated in their order, and ``nfe``
        (their sum). :class:`ShardError` names a shard that is absent or damaged."""
        parts = []
        for shard in shards:
            if not os.path.isfile(self.path(shard)):
                raise ShardError(f"sample shard {self.path(shard)} is missing; draw it first")
            parts.append(self._read(shard))
        if not parts:
            return {"nfe": 0}
        out: Dict[str, Any] = {key: np.concatenate([p[key] for p in parts]) for key in parts[0] if key != "nfe"}
        out["nfe"] = sum(p["nfe"] for p in parts)
        return out

    def _check_complete(self) -> None:
        absent = [shard for shard in self.shards if not os.path.isfile(self.path(shard))]
        if absent:
            raise ShardError(f"{self.folder} lacks the samples {index_ranges(absent)} ({len(absent)} of "
                             f"{len(self.shards)} shards); draw them first: rerun the same command")

    def load_all(self) -> Dict[str, np.ndarray]:
        """Every shard, concatenated in index order (:meth:`load`); :class:`ShardError` names the index
        ranges that are missing."""
        self._check_complete()
        return self.load(self.shards)

    def nfe(self) -> int:
        """The score evaluations of every shard present (those of the whole draw, once it is complete)."""
        return sum(self._read(shard, keys=("nfe",))["nfe"] for shard in self.shards
                   if os.path.isfile(self.path(shard)))


__all__ = ["ShardStore", "Shard", "ShardError", "index_ranges", "MANIFEST"]
