"""MEDIA faults: broken, odd and huge clips in (copies of) the demo corpus, through prepare + extract.

Behaviour asserted (the contract):
- a clip that cannot be opened (zero bytes, truncated) is kept in the manifest with its text, flagged
  `unreadable_clip` (the decoder's words in attributes.clip_error), and both the audio and the face
  store list it as missing with that same reason;
- an mp4 without an audio stream is flagged `clip_without_audio`: audio missing with that reason,
  the face feature is still made;
- an mp4 whose video stream does not decode (garbage packets) or that has no video stream at all is
  flagged `clip_without_video`: face missing with that reason, the audio feature is still made;
- a 44.1 kHz or stereo IEMOCAP wav is resampled / downmixed: stored, not flagged (resampling is
  exact work, not a caveat: MELD's own mp4 audio is always resampled), and its feature matches the
  feature of the original 16 kHz mono file;
- a 10-minute clip completes: audio in window_s windows with a finite feature, face from at most
  max_frames frames spread over the whole clip.
"""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import av
import numpy as np
import pytest
import soundfile
import soxr
import torch

from pipeline.corpora import iemocap, meld
from tests.helpers.faults import (
    assert_accounted,
    build,
    extract,
    iemocap_wav,
    meld_clip,
    prepare,
    section,
    stored_feature,
)

pytestmark = pytest.mark.faults

DEV0 = [f"dev_dia0_utt{u}" for u in range(6)]  # the dev dialogue the media faults break
KEPT = [*DEV0, "train_dia0_utt0", "test_dia0_utt0"]  # the utterances of the trimmed MELD copy
LONG_CLIP_S = 600
LONG_CLIP_FPS = 1


@pytest.fixture(scope="module")
def audio_extractor(tiny_models, one_torch_thread):
    return build("audio", tiny_models)


@pytest.fixture(scope="module")
def face_extractor(tiny_models, one_torch_thread):
    return build("face", tiny_models)


def run_meld(raw: Path, tmp_path: Path, tiny_models, audio_extractor, face_extractor):
    """prepare, then both media stores; returns (audio accounting, face accounting)."""
    prepared = tmp_path / "prepared"
    prepare("meld", raw, prepared)
    out = []
    for modality, extractor in (("audio", audio_extractor), ("face", face_extractor)):
        store = tmp_path / f"store-{modality}"
        extract(modality, prepared, store, tiny_models, extractor=extractor)
        out.append(assert_accounted("meld", raw, prepared, store))
    assert sorted(out[0].rows) == sorted(KEPT)
    return out


def remux(src: Path, dst: Path, keep: set[str], garbage_video: bool = False) -> None:
    """Copy the `keep` streams ("audio", "video") of src into a new mp4; video packets optionally garbage."""
    rng = np.random.default_rng(0)
    with av.open(str(src)) as inp, av.open(str(dst), "w", format="mp4") as out:
        streams = {s.index: out.add_stream_from_template(s) for s in inp.streams if s.type in keep}
        for packet in inp.demux(*[s for s in inp.streams if s.index in streams]):
            if packet.dts is None:  # the demuxer's flush packet
                continue
            target = streams[packet.stream.index]
            if garbage_video and packet.stream.type == "video":
                junk = av.Packet(rng.integers(0, 256, max(packet.size, 64), dtype=np.uint8).tobytes())
                junk.pts, junk.dts, junk.time_base = packet.pts, packet.dts, packet.time_base
                junk.is_keyframe = packet.is_keyframe
                packet = junk
            packet.stream = target
            out.mux(packet)


@pytest.fixture(scope="module")
def ten_minute_clip(demo_corpus, tmp_path_factory) -> Path:
    """A 10-minute MELD-like mp4 (H.264 + AAC): a demo frame with a face at 1 fps, a gated tone at 16 kHz."""
    root, _ = demo_corpus
    with av.open(str(meld_clip(root / meld.RELEASE_DIR, "dev", 0, 0))) as clip:
        image = next(clip.decode(video=0)).to_ndarray(format="rgb24")
    path = tmp_path_factory.mktemp("long") / "ten_minutes.mp4"
    rate = 16_000
    with av.open(str(path), "w", format="mp4") as out:
        video = out.add_stream("libx264", rate=LONG_CLIP_FPS, options={"preset": "ultrafast", "g": "10"})
        video.width, video.height, video.pix_fmt = image.shape[1], image.shape[0], "yuv420p"
        sound = out.add_stream("aac", rate=rate, layout="mono")
        sound.bit_rate = 24_000
        for i in range(LONG_CLIP_S * LONG_CLIP_FPS):
            frame = av.VideoFrame.from_ndarray(image, format="rgb24")
            frame.pts = i
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        t = np.arange(LONG_CLIP_S * rate) / rate
        tone = (0.1 * np.sin(2 * np.pi * 220 * t) * (np.sin(2 * np.pi * t / 7) > 0)).astype(np.float32)
        frame = av.AudioFrame.from_ndarray(tone[np.newaxis], format="fltp", layout="mono")
        frame.sample_rate, frame.pts = rate, 0
        out.mux(sound.encode(frame))
        out.mux(sound.encode(None))
    return path


# --- MELD clips --------------------------------------------------------------------------------------


def assert_unreadable_clip(audio, face, uid: str) -> None:
    row = audio.rows[uid]
    assert row["flags"] == ["unreadable_clip"]
    assert (row["has_text"], row["has_audio"], row["has_video"]) == (True, False, False)
    assert row["audio_path"] is None and row["video_path"] is None
    assert audio.missing == {uid: "unreadable_clip"}
    assert face.missing == {uid: "unreadable_clip"}
    assert audio.stored == face.stored == set(KEPT) - {uid}


def test_zero_byte_mp4(meld_raw, tmp_path, tiny_models, audio_extractor, face_extractor) -> None:
    meld_clip(meld_raw, "dev", 0, 1).write_bytes(b"")
    audio, face = run_meld(meld_raw, tmp_path, tiny_models, audio_extractor, face_extractor)
    assert_unreadable_clip(audio, face, "dev_dia0_utt1")
    assert audio.rows["dev_dia0_utt1"]["attributes"]["clip_error"] == "empty file"


def test_truncated_mp4(meld_raw, tmp_path, tiny_models, audio_extractor, face_extractor) -> None:
    clip = meld_clip(meld_raw, "dev", 0, 3)
    data = clip.read_bytes()
    clip.write_bytes(data[: len(data) // 2])
    audio, face = run_meld(meld_raw, tmp_path, tiny_models, audio_extractor, face_extractor)
    assert_unreadable_clip(audio, face, "dev_dia0_utt3")
    error = audio.rows["dev_dia0_utt3"]["attributes"]["clip_error"]
    assert error and "\n" not in error and str(clip) not in error  # the decoder's words, on one line


def remux_in_place(clip: Path, tmp_path: Path, **kwargs) -> None:
    """Rewrite `clip` from its own streams (see `remux`), via a copy of the original in tmp_path."""
    original = tmp_path / "original.mp4"
    shutil.move(clip, original)
    remux(original, clip, **kwargs)


def test_mp4_without_audio_stream(meld_raw, tmp_path, tiny_models, audio_extractor, face_extractor) -> None:
    clip = meld_clip(meld_raw, "dev", 0, 4)
    remux_in_place(clip, tmp_path, keep={"video"})
    audio, face = run_meld(meld_raw, tmp_path, tiny_models, audio_extractor, face_extractor)
    row = audio.rows["dev_dia0_utt4"]
    assert row["flags"] == ["clip_without_audio"]
    assert (row["has_audio"], row["has_video"], row["audio_path"]) == (False, True, None)
    assert audio.missing == {"dev_dia0_utt4": "clip_without_audio"}
    assert "dev_dia0_utt4" in face.stored and not face.missing
    assert torch.isfinite(stored_feature(tmp_path / "store-face", "dev_dia0_utt4")).all()


def test_mp4_whose_video_stream_has_no_decodable_frame(
    meld_raw, tmp_path, tiny_models, audio_extractor, face_extractor
) -> None:
    clip = meld_clip(meld_raw, "dev", 0, 0)
    remux_in_place(clip, tmp_path, keep={"audio", "video"}, garbage_video=True)
    audio, face = run_meld(meld_raw, tmp_path, tiny_models, audio_extractor, face_extractor)
    row = audio.rows["dev_dia0_utt0"]
    assert row["flags"] == ["clip_without_video"]
    assert row["attributes"]["clip_error"] == "no decodable video frame"
    assert (row["has_audio"], row["has_video"], row["video_path"]) == (True, False, None)
    assert face.missing == {"dev_dia0_utt0": "clip_without_video"}
    assert "dev_dia0_utt0" in audio.stored and not audio.missing


def test_audio_only_mp4_for_the_face_extractor(meld_raw, tmp_path, tiny_models, audio_extractor, face_extractor) -> None:
    clip = meld_clip(meld_raw, "dev", 0, 5)
    remux_in_place(clip, tmp_path, keep={"audio"})
    audio, face = run_meld(meld_raw, tmp_path, tiny_models, audio_extractor, face_extractor)
    row = audio.rows["dev_dia0_utt5"]
    assert row["flags"] == ["clip_without_video"] and "clip_error" not in row["attributes"]
    assert (row["has_audio"], row["has_video"]) == (True, False)
    assert face.missing == {"dev_dia0_utt5": "clip_without_video"}
    assert "dev_dia0_utt5" in audio.stored and not audio.missing


def test_ten_minute_clip(meld_raw, tmp_path, tiny_models, audio_extractor, face_extractor, ten_minute_clip) -> None:
    shutil.copyfile(ten_minute_clip, meld_clip(meld_raw, "dev", 0, 2))
    audio, face = run_meld(meld_raw, tmp_path, tiny_models, audio_extractor, face_extractor)
    uid = "dev_dia0_utt2"
    row = audio.rows[uid]
    assert row["flags"] == [] and row["has_audio"] and row["has_video"]
    assert row["audio_end_s"] == pytest.approx(LONG_CLIP_S, abs=0.1)
    assert not audio.missing and not face.missing and uid not in audio.flagged
    feature = stored_feature(tmp_path / "store-audio", uid)
    assert feature.shape == (audio_extractor.output_dim,) and torch.isfinite(feature).all()
    # windowed: the decoder cut it into window_s pieces (30 x 20 s), never one 10-minute input
    decoded = audio_extractor.decoder()(row)
    lengths = [stop - start for start, stop in decoded.data.windows]
    assert len(lengths) == LONG_CLIP_S / audio_extractor.config.window_s
    assert max(lengths) <= audio_extractor.window_samples
    # face: at most max_frames frames, spread over the whole 10 minutes
    assert torch.isfinite(stored_feature(tmp_path / "store-face", uid)).all()
    picked = face_extractor.decoder()(row)
    max_frames = face_extractor.config.max_frames
    assert picked.data["frames"].shape[0] == max_frames
    assert picked.data["times"][0] < LONG_CLIP_S / max_frames and picked.data["times"][-1] > LONG_CLIP_S * (1 - 1 / max_frames)


# --- IEMOCAP wavs ------------------------------------------------------------------------------------

WAV_UID = "Ses01F_impro02_F001"


def run_iemocap_audio(raw: Path, tmp_path: Path, tiny_models, audio_extractor, demo_corpus):
    """prepare + audio store of the faulty copy, and the feature of WAV_UID's original file."""
    prepared, store = tmp_path / "prepared", tmp_path / "store-audio"
    prepare("iemocap", raw, prepared)
    extract("audio", prepared, store, tiny_models, extractor=audio_extractor)
    acc = assert_accounted("iemocap", raw, prepared, store)
    pristine = demo_corpus[0] / iemocap.RELEASE_DIR
    decoder = dataclasses.replace(audio_extractor.decoder(), raw_root=pristine)
    with torch.inference_mode():
        (reference,) = audio_extractor.encode([decoder(acc.rows[WAV_UID])])
    dtype = getattr(torch, section("audio", tiny_models)["dtype"])
    return acc, stored_feature(store, WAV_UID), reference.feature.to(dtype).float()


def test_wav_with_wrong_sample_rate_is_resampled(iemocap_raw, tmp_path, tiny_models, audio_extractor, demo_corpus) -> None:
    wav = iemocap_wav(iemocap_raw, WAV_UID)
    samples, rate = soundfile.read(str(wav), dtype="float32")
    assert rate == 16_000
    soundfile.write(str(wav), soxr.resample(samples, rate, 44_100, quality="VHQ"), 44_100, subtype="PCM_16")
    acc, feature, reference = run_iemocap_audio(iemocap_raw, tmp_path, tiny_models, audio_extractor, demo_corpus)
    assert acc.rows[WAV_UID]["has_audio"] and acc.rows[WAV_UID]["flags"] == []
    assert WAV_UID in acc.stored and WAV_UID not in acc.flagged and not acc.missing
    assert torch.isfinite(feature).all()
    # resampled back to 16 kHz: the same audio up to the resamplers' band edge. Measured with the tiny
    # model: 5% relative difference; skipping the resampling gives ~20%, another utterance ~22%
    distance = (feature - reference).norm()
    assert distance < 0.1 * reference.norm()
    others = [stored_feature(tmp_path / "store-audio", uid) for uid in sorted(acc.stored - {WAV_UID})]
    assert len(others) > 40 and all(distance < (feature - other).norm() for other in others)
    assert not torch.equal(feature, reference)  # the file really was different


def test_stereo_wav_is_downmixed(iemocap_raw, tmp_path, tiny_models, audio_extractor, demo_corpus) -> None:
    wav = iemocap_wav(iemocap_raw, WAV_UID)
    samples, rate = soundfile.read(str(wav), dtype="int16")
    soundfile.write(str(wav), np.stack([samples, samples], axis=1), rate, subtype="PCM_16")
    assert soundfile.info(str(wav)).channels == 2
    acc, feature, reference = run_iemocap_audio(iemocap_raw, tmp_path, tiny_models, audio_extractor, demo_corpus)
    assert acc.rows[WAV_UID]["has_audio"] and acc.rows[WAV_UID]["flags"] == []
    assert WAV_UID in acc.stored and WAV_UID not in acc.flagged and not acc.missing
    # the mean of two identical channels is the mono signal: the very same feature
    assert torch.equal(feature, reference)
