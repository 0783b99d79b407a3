"""The fleet's transfer primitives (flywheel/contracts/transfer.py) and payload checks
(flywheel/contracts/fleet.py): resume, offsets, hashes, paths and names."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from flywheel.contracts.fleet import ArmPoll, EpisodeChunk, EpisodeCommit, FleetState, WeightsFetch
from flywheel.contracts.protocol import Message, MessageType, ProtocolError, decode, encode
from flywheel.contracts.transfer import (
    FileEntry,
    Receiver,
    TransferRefused,
    check_arm,
    check_relative,
    download,
    read_chunk,
)

CONTENT = bytes(range(256)) * 40  # 10240 bytes
ENTRY = FileEntry("data/chunk-000/file-000.parquet", len(CONTENT), hashlib.sha256(CONTENT).hexdigest())


def _send_all(receiver: Receiver, entry: FileEntry, content: bytes, chunk: int, start: int = 0) -> int:
    held = receiver.receive(entry, start, b"")
    while held < entry.size:
        held = receiver.receive(entry, held, content[held : held + chunk])
    return held


def test_a_file_arrives_complete_and_verified_in_chunks(tmp_path):
    receiver = Receiver(tmp_path)
    assert _send_all(receiver, ENTRY, CONTENT, 3000) == len(CONTENT)
    assert (tmp_path / ENTRY.path).read_bytes() == CONTENT
    assert not list(tmp_path.rglob("*.part"))  # renamed complete
    # A repeat of any chunk after completion (a lost reply) writes nothing and says "all held".
    assert receiver.receive(ENTRY, 0, CONTENT[:3000]) == len(CONTENT)
    assert (tmp_path / ENTRY.path).read_bytes() == CONTENT


def test_a_chunk_at_the_wrong_offset_is_not_written(tmp_path):
    receiver = Receiver(tmp_path)
    assert receiver.receive(ENTRY, 0, CONTENT[:1000]) == 1000
    assert receiver.receive(ENTRY, 0, CONTENT[:1000]) == 1000  # repeated: not appended twice
    assert receiver.receive(ENTRY, 2000, CONTENT[2000:3000]) == 1000  # early: not written
    assert receiver.part(ENTRY).read_bytes() == CONTENT[:1000]
    with pytest.raises(TransferRefused, match="exceeds the size"):
        receiver.receive(ENTRY, 1000, CONTENT[1000:] + b"extra")


def test_a_partial_file_resumes_after_a_restart_of_the_receiver(tmp_path):
    first = Receiver(tmp_path)
    first.receive(ENTRY, 0, CONTENT[:4096])
    second = Receiver(tmp_path)  # a new process: the running hash is rebuilt from the part
    assert second.receive(ENTRY, 0, b"") == 4096  # the sender learns where to resume
    assert _send_all(second, ENTRY, CONTENT, 4096, start=4096) == len(CONTENT)
    assert (tmp_path / ENTRY.path).read_bytes() == CONTENT


def test_a_sha_mismatch_is_refused_and_the_part_discarded(tmp_path):
    receiver = Receiver(tmp_path)
    corrupt = bytearray(CONTENT)
    corrupt[5000] ^= 0xFF
    receiver.receive(ENTRY, 0, bytes(corrupt[:5000]))
    with pytest.raises(TransferRefused, match="sha256"):
        receiver.receive(ENTRY, 5000, bytes(corrupt[5000:]))
    assert not (tmp_path / ENTRY.path).exists()
    assert not receiver.part(ENTRY).exists()
    assert _send_all(receiver, ENTRY, CONTENT, 4096) == len(CONTENT)  # a clean resend is taken


def test_a_file_announced_again_with_other_content_starts_over(tmp_path):
    receiver = Receiver(tmp_path)
    _send_all(receiver, ENTRY, CONTENT, 4096)
    newer = CONTENT + b"one more episode"  # e.g. info.json rewritten by the recorder meanwhile
    entry = FileEntry(ENTRY.path, len(newer), hashlib.sha256(newer).hexdigest())
    assert receiver.receive(entry, 0, b"") == 0
    assert _send_all(receiver, entry, newer, 4096) == len(newer)
    assert (tmp_path / ENTRY.path).read_bytes() == newer


def test_download_resumes_from_what_is_there_and_checks_the_hash(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(CONTENT)
    asked = []

    def fetch(offset, length):
        asked.append(offset)
        return read_chunk(source, offset, length)

    dest = tmp_path / "dest" / "model.safetensors"
    dest.parent.mkdir()
    dest.write_bytes(CONTENT[:6000])  # left by an interrupted fetch
    assert download(dest, ENTRY, fetch, 3000) == len(CONTENT) - 6000
    assert asked == [6000, 9000] and dest.read_bytes() == CONTENT
    bad = bytearray(CONTENT[:6000])
    bad[10] ^= 0xFF
    dest.write_bytes(bytes(bad))  # a corrupted partial file
    with pytest.raises(TransferRefused, match="sha256"):
        download(dest, ENTRY, fetch, 3000)
    assert not dest.exists()  # discarded: the next try starts from 0


@pytest.mark.parametrize(
    "path",
    ["../etc/passwd", "/etc/passwd", "data/../../x", "data//x", "data/./x", "x.parquet", "videos/a.mp4",
     "data\\x", "data/x.part", ""],
)  # fmt: skip
def test_episode_file_paths_outside_data_and_meta_are_refused(path):
    with pytest.raises(ProtocolError, match=r"episode_chunk\.path"):
        EpisodeChunk.from_message(
            decode(encode(EpisodeChunk("arm", 0, FileEntry(path, 1, "0" * 64), 0, b"x").to_message()))
        )


def test_good_paths_and_names_pass():
    assert check_relative("meta/episodes/chunk-000/file-003.parquet", under=("data", "meta"))
    assert check_relative("policy_preprocessor.json") == "policy_preprocessor.json"
    assert check_arm("kitchen-arm_2") == "kitchen-arm_2"


@pytest.mark.parametrize("arm", ["", "a/b", "..", "a b", "x" * 65, "ärm", 7, None])
def test_arm_names_that_are_not_allowed_are_refused(arm):
    with pytest.raises(ProtocolError, match=r"arm_poll\.arm"):
        ArmPoll.from_message(Message(MessageType.ARM_POLL, {"arm": arm, "acting_version": None}))


def test_payloads_round_trip_and_name_the_bad_field():
    chunk = EpisodeChunk("a1", 3, ENTRY, 4096, CONTENT[:10])
    back = EpisodeChunk.from_message(decode(encode(chunk.to_message())))
    assert back == chunk and back.data == CONTENT[:10]
    state = FleetState(4, 2, (FileEntry("model.safetensors", 10, "a" * 64),))
    assert FleetState.from_message(decode(encode(state.to_message()))) == state
    commit = EpisodeCommit("a1", 3, (ENTRY,))
    assert EpisodeCommit.from_message(decode(encode(commit.to_message()))) == commit
    bad = chunk.to_message()
    bad.fields["offset"] = -1
    with pytest.raises(ProtocolError, match=r"episode_chunk.offset: -1"):
        EpisodeChunk.from_message(bad)
    bad = chunk.to_message()
    bad.arrays["data"] = np.zeros(3, np.float32)
    with pytest.raises(ProtocolError, match=r"episode_chunk\.arrays\.data"):
        EpisodeChunk.from_message(bad)
    with pytest.raises(ProtocolError, match=r"weights_fetch\.name"):
        WeightsFetch.from_message(
            WeightsFetch("a1", 1, "../models/v0002/model.safetensors", 0, 10).to_message()
        )
    with pytest.raises(ProtocolError, match=r"sha256"):
        EpisodeCommit.from_message(EpisodeCommit("a1", 0, (FileEntry(ENTRY.path, 1, "NOTHEX"),)).to_message())
