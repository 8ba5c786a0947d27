"""The zoo entries and the download, against a real HTTP server on 127.0.0.1 started here."""

from __future__ import annotations

import hashlib
import http.server
import io
import os
import threading
import time

import pytest
import torch
import torchvision
from conftest import SHARED_DATA, max_abs_diff

from inceptionv3 import InceptionV3, count_flops, count_parameters, get_model, list_models, weights
from inceptionv3.fid_network import fid_inception_v3
from inceptionv3.weights import (
    FID_MODEL,
    ZOO,
    DownloadError,
    WeightFile,
    WeightsEntry,
    download_weights,
    imagenet_classes,
)


class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):
        pass  # a client that gave up on a trickle breaks the pipe: expected here


class Handler(http.server.BaseHTTPRequestHandler):
    """Behaviour by first path segment: good, missing, truncated, stall, flaky (fails once), trickle (one
    byte every 20 ms, for ever if the client waits: 100 KB would take half an hour)."""

    def log_message(self, *args):
        pass

    def do_GET(self):  # noqa: N802 - http.server's naming
        mode, name = self.path.strip("/").split("/", 1)
        body = self.server.files.get(name)
        self.server.requests.append(self.path)
        if mode == "missing" or body is None:
            self.send_error(404)
            return
        if mode == "trickle":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            for i in range(len(body)):
                self.wfile.write(body[i:i + 1])
                self.wfile.flush()
                time.sleep(0.02)
            return
        if mode == "slowheaders":  # a header byte every 20 ms for 10 s: each read is quick, the headers never end
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            for _ in range(500):
                try:
                    self.wfile.write(b"a")
                    self.wfile.flush()
                except OSError:
                    return
                time.sleep(0.02)
            return
        if mode == "stall":
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[:100])
            self.wfile.flush()
            time.sleep(3)
            return
        if mode == "truncated" or (mode == "flaky" and self.server.requests.count(self.path) == 1):
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def server():
    httpd = Server(("127.0.0.1", 0), Handler)
    httpd.files, httpd.requests = {}, []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("INCEPTIONV3_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("INCEPTIONV3_OFFLINE", raising=False)
    monkeypatch.delenv("INCEPTIONV3_MIRROR", raising=False)
    return tmp_path / "cache"


@pytest.fixture(scope="module")
def mmpretrain_file_bytes(tmp_path_factory) -> bytes:
    """A small-but-real checkpoint in mmpretrain's exact layout, serialised as torch.save does."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "ckpt.pth"
    state = {f"backbone.{k}": v for k, v in InceptionV3().state_dict().items()}
    torch.save({"state_dict": state, "meta": {"dataset_meta": {"classes": list(imagenet_classes())}}}, path)
    return path.read_bytes()


def hosted(server, body: bytes, stem: str = "inception-v3_3rdparty_8xb32_in1k") -> str:
    """Serve ``body`` under a torch.hub-style name carrying its own sha256 prefix."""
    name = f"{stem}-{hashlib.sha256(body).hexdigest()[:8]}.pth"
    server.files[name] = body
    return name


def entry_for(*files: WeightFile) -> WeightsEntry:
    return WeightsEntry("test-entry", files, ZOO["inception-v3_3rdparty_8xb32_in1k"].preprocess, (), "test", ())


def url(server, mode: str, name: str) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}/{mode}/{name}"


def test_good_file_is_downloaded_verified_and_cached(server, mmpretrain_file_bytes, isolated_cache):
    name = hosted(server, mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "good", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    path, chosen = download_weights(entry, progress=False)
    assert path == isolated_cache / name and path.read_bytes() == mmpretrain_file_bytes
    assert chosen.source == "mmpretrain"
    assert not list(isolated_cache.glob("*.partial"))
    download_weights(entry, progress=False)  # second call: served from the cache
    assert len(server.requests) == 1


def test_404_falls_back_to_the_next_url(server, mmpretrain_file_bytes):
    name = hosted(server, mmpretrain_file_bytes)
    digest = f"sha256:{name[-12:-4]}"
    entry = entry_for(
        WeightFile(url(server, "missing", name), "mmpretrain", digest),
        WeightFile(url(server, "good", name), "torchvision", digest, transform_input=True),
    )
    path, chosen = download_weights(entry, progress=False, retries=3)
    assert chosen.transform_input and path.read_bytes() == mmpretrain_file_bytes
    assert sum("/missing/" in r for r in server.requests) == 1  # a 404 is not retried


def test_truncated_body_is_never_used(server, mmpretrain_file_bytes, isolated_cache):
    name = hosted(server, mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "truncated", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    with pytest.raises(DownloadError, match="truncated|IncompleteRead|failed") as info:
        download_weights(entry, progress=False, retries=2)
    assert "attempt 2/2" in str(info.value)
    assert not any(isolated_cache.iterdir())


def test_wrong_hash_is_rejected_and_not_cached(server, mmpretrain_file_bytes, isolated_cache):
    name = hosted(server, mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "good", name), "mmpretrain", "sha256:00000000"))
    with pytest.raises(DownloadError, match="hash mismatch"):
        download_weights(entry, progress=False)
    assert not any(isolated_cache.iterdir())


def test_stalled_server_hits_the_timeout(server, mmpretrain_file_bytes):
    name = hosted(server, mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "stall", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    start = time.monotonic()
    with pytest.raises(DownloadError, match="timed out"):
        download_weights(entry, progress=False, retries=1, timeout=0.5)
    assert time.monotonic() - start < 2.5


def test_interrupted_download_is_retried(server, mmpretrain_file_bytes):
    name = hosted(server, mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "flaky", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    path, _ = download_weights(entry, progress=False, retries=3)
    assert path.read_bytes() == mmpretrain_file_bytes
    assert server.requests.count(f"/flaky/{name}") == 2


def test_corrupted_cache_entry_is_replaced(server, mmpretrain_file_bytes, isolated_cache):
    name = hosted(server, mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "good", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    path, _ = download_weights(entry, progress=False)
    path.write_bytes(b"bit rot")
    path, _ = download_weights(entry, progress=False)
    assert path.read_bytes() == mmpretrain_file_bytes and len(server.requests) == 2


def test_mirror_keeps_the_file_name(server, mmpretrain_file_bytes, monkeypatch, imagenet_batch):
    name = hosted(server, mmpretrain_file_bytes)
    monkeypatch.setenv("INCEPTIONV3_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/good/")
    entry = entry_for(WeightFile(f"https://download.example.invalid/some/dir/{name}", "mmpretrain",
                                 f"sha256:{name[-12:-4]}"))
    path, _ = download_weights(entry, progress=False)
    assert path.read_bytes() == mmpretrain_file_bytes and server.requests == [f"/good/{name}"]
    # The downloaded file is the served model: its logits are those of the served bytes, run by torchvision.
    served = torch.load(io.BytesIO(mmpretrain_file_bytes), weights_only=True)["state_dict"]
    reference = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False).eval()
    reference.load_state_dict({k.removeprefix("backbone."): v for k, v in served.items()})
    batch = imagenet_batch[:2]
    with torch.no_grad():
        ours, theirs = get_model(path)(batch), reference(batch)
    assert theirs.abs().max() > 1e-3 and max_abs_diff(ours, theirs) <= 1e-5


def test_offline_mode_uses_only_the_cache(server, mmpretrain_file_bytes, monkeypatch):
    name = hosted(server, mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "good", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    monkeypatch.setenv("INCEPTIONV3_OFFLINE", "1")
    with pytest.raises(DownloadError, match="INCEPTIONV3_OFFLINE"):
        download_weights(entry, progress=False)
    assert server.requests == []
    monkeypatch.delenv("INCEPTIONV3_OFFLINE")
    download_weights(entry, progress=False)
    monkeypatch.setenv("INCEPTIONV3_OFFLINE", "1")
    assert download_weights(entry, progress=False)[0].is_file()


def test_failure_message_names_urls_cache_and_the_weights_alternative(server, isolated_cache, monkeypatch):
    monkeypatch.setenv("INCEPTIONV3_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/missing")
    with pytest.raises(DownloadError) as info:
        get_model("inception-v3_3rdparty_8xb32_in1k")
    message = str(info.value)
    assert "inception-v3_3rdparty_8xb32_in1k_20220615-dcd4d910.pth: HTTP 404" in message
    assert "inception_v3_google-0cc3c7bd.pth: HTTP 404" in message
    assert str(isolated_cache) in message and "--weights PATH" in message


def test_the_real_zoo_entry_downloads_through_the_mirror_and_refuses_a_file_of_another_hash(
        server, mmpretrain_file_bytes, monkeypatch):
    """The real zoo entry end to end, through the mirror: the served file is ours, not the published one, so its
    hash check must fail (tests below load files served under test entries with their own hashes)."""
    server.files["inception-v3_3rdparty_8xb32_in1k_20220615-dcd4d910.pth"] = mmpretrain_file_bytes
    monkeypatch.setenv("INCEPTIONV3_MIRROR", f"http://127.0.0.1:{server.server_address[1]}/good")
    with pytest.raises(DownloadError, match="hash mismatch: expected sha256:dcd4d910"):
        get_model("inception-v3_3rdparty_8xb32_in1k")


def test_zoo_entries_carry_published_facts():
    assert list_models() == sorted(ZOO) and len(ZOO) >= 7
    assert list_models("*tf*") == ["inception_v3.tf_adv_in1k", "inception_v3.tf_in1k", "inception_v3.tf_slim_in1k"]
    classifier, fid_network = InceptionV3(), fid_inception_v3()
    for entry in ZOO.values():
        model = fid_network if entry.name == FID_MODEL else classifier  # the FID graph has 1008 classes
        assert entry.params == count_parameters(model)
        assert entry.macs == count_flops(model)
        assert entry.flops_mmpretrain == count_flops(model, convention="mmpretrain")
        assert entry.accuracy or entry.name == FID_MODEL  # no top-1 was ever published for the FID graph
        assert entry.license and entry.origin and entry.preprocess.crop == 299
        for weight_file in entry.files:
            assert weight_file.url.startswith(("https://", "http://"))
    mm = ZOO["inception-v3_3rdparty_8xb32_in1k"]
    assert (mm.accuracy[0].top1, mm.accuracy[0].top5) == (77.57, 93.58)
    assert [f.source for f in mm.files] == ["mmpretrain", "torchvision"] and mm.files[1].transform_input
    assert ZOO["inception_v3.tv_in1k"].accuracy[0].top1 == 77.294


def test_class_names_are_the_shared_imagenet_list():
    rows = (SHARED_DATA / "imagenet" / "classes.tsv").read_text().splitlines()[1:]
    assert imagenet_classes() == tuple(row.split("\t")[2] for row in rows)
    assert imagenet_classes()[0] == "tench, Tinca tinca"


def test_entry_without_published_hash_is_not_downloaded(server):
    entry = entry_for(WeightFile(url(server, "good", "x.tar.gz"), "tf-slim", None))
    with pytest.raises(DownloadError, match="no published hash"):
        download_weights(entry, progress=False)
    assert server.requests == []


def test_cached_file_shows_in_the_entry(isolated_cache, mmpretrain_file_bytes):
    entry = ZOO["inception_v3.tv_in1k"]
    assert entry.cached_file() is None
    isolated_cache.mkdir(parents=True)
    (isolated_cache / "inception_v3_google-0cc3c7bd.pth").write_bytes(mmpretrain_file_bytes)
    assert entry.cached_file() == isolated_cache / "inception_v3_google-0cc3c7bd.pth"


# --- deadlines, rates and leftovers ---------------------------------------------------------------


def test_trickling_server_hits_the_whole_transfer_deadline(server, mmpretrain_file_bytes, isolated_cache):
    """A byte every 20 ms never trips the per-read timeout; the deadline ends it, without a retry."""
    name = hosted(server, mmpretrain_file_bytes[:100_000])
    entry = entry_for(WeightFile(url(server, "trickle", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"not finished within the 0.5 s deadline") as info:
        download_weights(entry, progress=False, retries=3, timeout=5, deadline=0.5, min_rate=0)
    assert time.monotonic() - start < 3
    assert "attempt" not in str(info.value) and len(server.requests) == 1
    assert not list(isolated_cache.glob("*.partial"))


def test_the_deadline_covers_headers_that_trickle(server, mmpretrain_file_bytes, isolated_cache):
    """urlopen returns only after the headers, and each header byte arriving within the read timeout kept it
    going: a mirror that trickled them held `--deadline 20` past 90 s. The deadline now closes the connection."""
    name = hosted(server, mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "slowheaders", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    started = time.monotonic()
    with pytest.raises(DownloadError, match=r"not finished within the 0.5 s deadline \(headers"):
        download_weights(entry, progress=False, deadline=0.5, timeout=5, retries=1)
    assert time.monotonic() - started < 3 and not list(isolated_cache.glob("*.partial"))


def test_too_slow_transfer_is_abandoned_after_its_window(server, mmpretrain_file_bytes, isolated_cache):
    name = hosted(server, mmpretrain_file_bytes[:100_000])
    entry = entry_for(WeightFile(url(server, "trickle", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"too slow: \d+ B/s over the last 0.\d+ s \(minimum 1,000 B/s\)"):
        download_weights(entry, progress=False, min_rate=1000, rate_window=0.4)
    assert 0.4 <= time.monotonic() - start < 3
    assert not list(isolated_cache.glob("*.partial"))


def test_a_fast_transfer_is_not_held_to_the_window(server, mmpretrain_file_bytes):
    name = hosted(server, mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "good", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    path, _ = download_weights(entry, progress=False, min_rate=1000, rate_window=0.001, deadline=60)
    assert path.read_bytes() == mmpretrain_file_bytes


def test_ctrl_c_midway_leaves_no_partial_file(server, mmpretrain_file_bytes, isolated_cache, monkeypatch):
    name = hosted(server, mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "good", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    seen = []

    def interrupt(pace, received):
        seen.append(list(isolated_cache.glob("*.partial")))
        raise KeyboardInterrupt

    monkeypatch.setattr(weights._Pace, "check", interrupt)
    with pytest.raises(KeyboardInterrupt):
        download_weights(entry, progress=False)
    assert len(seen[0]) == 1  # the partial file existed while the transfer ran ...
    assert not any(isolated_cache.iterdir())  # ... and is gone


def test_partial_files_of_dead_downloads_are_removed(server, mmpretrain_file_bytes, isolated_cache):
    """A download killed outright (SIGKILL, power loss) cannot clean up; the next download of the file does."""
    name = hosted(server, mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "good", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    isolated_cache.mkdir(parents=True)
    dead = isolated_cache / f"{name}.999999999.0badf00d.partial"  # beyond any pid_max
    old_style = isolated_cache / f"{name}.999999998.partial"
    running = isolated_cache / f"{name}.{os.getppid()}.cafe.partial"  # a live process: maybe still downloading
    for leftover in (dead, old_style, running):
        leftover.write_bytes(b"half a file")
    download_weights(entry, progress=False)
    assert not dead.exists() and not old_style.exists() and running.exists()


def test_downloaded_file_gets_the_umask_permissions(server, mmpretrain_file_bytes, isolated_cache):
    name = hosted(server, mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "good", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    previous = os.umask(0o027)
    try:
        path, _ = download_weights(entry, progress=False)
    finally:
        os.umask(previous)
    assert path.stat().st_mode & 0o777 == 0o640


def test_full_digest_is_checked_when_known(server, mmpretrain_file_bytes):
    """The name's 8 hex digits match, the rest of the known digest does not: refused."""
    name = hosted(server, mmpretrain_file_bytes)
    digest = hashlib.sha256(mmpretrain_file_bytes).hexdigest()
    wrong = digest[:8] + ("0" if digest[8] != "0" else "1") + digest[9:]
    entry = entry_for(WeightFile(url(server, "good", name), "mmpretrain", f"sha256:{wrong}"))
    with pytest.raises(DownloadError, match="hash mismatch"):
        download_weights(entry, progress=False)


def test_zoo_gives_torchvisions_file_its_full_sha256():
    """Its name carries 32 bits of the hash, which can be matched on purpose; the full digest is known."""
    files = [f for entry in ZOO.values() for f in entry.files if f.filename == "inception_v3_google-0cc3c7bd.pth"]
    assert len(files) == 2
    for weight_file in files:
        algorithm, _, digest = weight_file.hash.partition(":")
        assert algorithm == "sha256" and len(digest) == 64 and digest.startswith("0cc3c7bd")


def test_a_file_brought_by_hand_enters_the_cache_only_if_its_hash_matches(server, mmpretrain_file_bytes,
                                                                          isolated_cache, tmp_path, capsys):
    """`download NAME --from FILE`, for machines without network: the copy lands where a download would put it,
    with its marker, and is then used offline; a file with another hash is refused and nothing is written."""
    from inceptionv3.cli import main
    from inceptionv3.weights import add_to_cache

    name = hosted(server, mmpretrain_file_bytes)
    copy = tmp_path / "usb" / name
    copy.parent.mkdir()
    copy.write_bytes(mmpretrain_file_bytes)
    entry = entry_for(WeightFile(url(server, "missing", name), "mmpretrain", f"sha256:{name[-12:-4]}"))
    path, _ = add_to_cache(entry, copy)
    assert path == isolated_cache / name and path.read_bytes() == mmpretrain_file_bytes
    os.environ["INCEPTIONV3_OFFLINE"] = "1"
    try:
        assert download_weights(entry, progress=False)[0] == path and server.requests == []
    finally:
        del os.environ["INCEPTIONV3_OFFLINE"]
    assert main(["download", "inception-v3_3rdparty_8xb32_in1k", "--from", str(copy)]) == 2
    assert "matches none of inception-v3_3rdparty_8xb32_in1k's files" in capsys.readouterr().err
    assert not (isolated_cache / "inception-v3_3rdparty_8xb32_in1k_20220615-dcd4d910.pth").exists()
