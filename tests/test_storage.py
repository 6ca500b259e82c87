"""Storage locations: URIs keep their scheme and query options through every join; Ray's scheme-less
checkpoint paths become URIs again; a node copies a folder from storage once."""

import pyarrow.fs as pafs
import pytest

from hybrid import storage

S3 = "s3://sweeps/cl1?endpoint_override=127.0.0.1:9000&scheme=http"


def test_join_keeps_the_query_at_the_end():
    assert (
        storage.join(S3, "name", "train") == "s3://sweeps/cl1/name/train?endpoint_override=127.0.0.1:9000&scheme=http"
    )
    assert storage.join("s3://b", "x/") == "s3://b/x"
    assert storage.join("/tmp/a", "b", "c") == "/tmp/a/b/c"


def test_resolve_makes_only_local_paths_absolute(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert storage.resolve("outputs") == str(tmp_path / "outputs")
    assert storage.resolve(S3) == S3 and storage.resolve("file:///shared/x") == "file:///shared/x"


def test_rays_checkpoint_paths_become_uris_again():
    """Ray's `Checkpoint.path` on S3 is `bucket/prefix/...`, without scheme or query."""
    fs_path = "sweeps/cl1/name/train/t1/checkpoint_000003"
    uri = storage.with_path(S3, fs_path)
    assert uri == "s3://sweeps/cl1/name/train/t1/checkpoint_000003?endpoint_override=127.0.0.1:9000&scheme=http"
    assert storage.with_path(S3, uri) == uri  # already a URI
    assert storage.filesystem(uri)[1] == fs_path
    assert isinstance(storage.filesystem(uri)[0], pafs.S3FileSystem)
    assert storage.with_path("/tmp/local", "/tmp/local/c") == "/tmp/local/c"
    assert storage.with_path("file:///shared", "/shared/c") == "file:///shared/c"


def test_local_folders_are_used_in_place(tmp_path):
    (tmp_path / "w.bin").write_bytes(b"123")
    assert storage.local_copy(str(tmp_path)) == tmp_path
    assert storage.local_copy(tmp_path.as_uri()) == tmp_path
    first = storage.stamp(str(tmp_path))
    (tmp_path / "w.bin").write_bytes(b"1234")
    assert storage.stamp(str(tmp_path)) != first
    with pytest.raises(FileNotFoundError, match="no such folder"):
        storage.stamp(str(tmp_path / "missing"))


def test_a_folder_in_storage_is_copied_once_per_node(s3_bucket, tmp_path, monkeypatch):
    """Copied into the node's cache on first use, reused after, copied again when the files change."""
    monkeypatch.setenv("HYBRID_SWEEP_CACHE", str(tmp_path / "cache"))
    uri = storage.join(s3_bucket, "run", "encoder")
    fs, path = storage.filesystem(uri)
    for name, data in (("model.safetensors", b"weights"), ("config.json", b"{}")):
        with fs.open_output_stream(f"{path}/{name}") as f:
            f.write(data)
    copy = storage.local_copy(uri)
    assert copy.is_relative_to(tmp_path / "cache") and (copy / "model.safetensors").read_bytes() == b"weights"
    (copy / "marker").write_text("same copy")
    assert storage.local_copy(uri) == copy and (copy / "marker").exists()
    with fs.open_output_stream(f"{path}/model.safetensors") as f:
        f.write(b"new weights")
    fresh = storage.local_copy(uri)
    assert fresh != copy and (fresh / "model.safetensors").read_bytes() == b"new weights"
    assert storage.exists(storage.join(uri, "config.json")) and not storage.exists(storage.join(uri, "nope"))
    assert storage.read_text(storage.join(uri, "config.json")) == "{}"


def test_a_file_overwritten_while_read_comes_back_whole(s3_bucket, tmp_path):
    """The lease's heartbeat is overwritten every fraction of a second while others read it: every read is
    one version, old or new, never a torn mix (pyarrow's size-then-range read gave the new bytes plus a
    tail of the old length)."""
    import threading

    versions = [b"{" + b'"beat": 1.5' + b"}", b"{" + b'"beat": 1.25' + b"}", b"{" + b'"beat": 1.125' + b"}"]
    for where in (storage.join(s3_bucket, "torn", "lease"), str(tmp_path / "torn" / "lease")):
        storage.write_bytes(where, versions[0])
        stop = threading.Event()

        def overwrite():
            while not stop.is_set():
                for v in versions:
                    storage.write_bytes(where, v)

        writer = threading.Thread(target=overwrite)
        writer.start()
        try:
            seen = [storage.read_bytes(where) for _ in range(300)]
        finally:
            stop.set()
            writer.join()
        assert set(seen) <= set(versions), {s for s in seen if s not in versions}
        assert len(set(seen)) > 1  # the reads did race the writes
