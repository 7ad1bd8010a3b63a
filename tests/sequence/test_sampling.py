import numpy as np
import pytest

from pipeline.cache.reader import FeatureCache
from pipeline.cache.writer import FeatureCacheWriter
from pipeline.errors import ActrecError
from pipeline.sequence.datasets import EvalClips, TrainClips
from pipeline.sequence.sampling import (
    SAMPLERS,
    eval_clip_indices,
    make_clip_sampler,
    spread_indices,
)


def train_clip_indices(n, length, rng, sampler="segments"):
    return make_clip_sampler(sampler).indices(n, length, rng)


def test_a_short_video_spreads_its_frames_evenly():
    assert spread_indices(3, 6).tolist() == [0, 0, 1, 1, 2, 2]
    assert spread_indices(3, 7).tolist() == [0, 0, 0, 1, 1, 2, 2]  # floor(j * 3 / 7)
    assert spread_indices(5, 3).tolist() == [0, 1, 2, 3, 4]
    for n in range(1, 12):
        frames = spread_indices(n, 12)
        counts = np.bincount(frames, minlength=n)
        assert (np.diff(frames) >= 0).all() and counts.min() >= 1 and counts.max() - counts.min() <= 1, n
    with pytest.raises(ActrecError, match="no frames"):
        spread_indices(0, 4)


def test_samplers_are_the_schema_choices_and_unknown_ones_are_refused():
    from pipeline.config import load_config

    assert SAMPLERS.names() == ["segments", "stride"]
    for name in SAMPLERS.names():
        assert load_config(None, [f"train.sampler={name}"]).train.sampler == name
    with pytest.raises(ActrecError, match="train.sampler: 'tsn' is not allowed. Allowed values: segments, stride"):
        load_config(None, ["train.sampler=tsn"])
    with pytest.raises(ActrecError, match="train.sampler: unknown sampler 'tsn'"):
        make_clip_sampler("tsn")


@pytest.mark.parametrize("n, length, segments_span, stride_span", [(3, 6, 3.0, 3.0), (40, 8, 40.0, 24.0),
                                                                    (8, 8, 8.0, 8.0)])
def test_span_is_the_frames_a_clip_covers(n, length, segments_span, stride_span):
    """A short video's clip covers its n frames, not the length of the clip; stride averages stride * length."""
    assert make_clip_sampler("segments").span(n, length) == segments_span
    assert make_clip_sampler("stride").span(n, length) == stride_span


def test_train_clips_use_every_allowed_stride_and_stay_inside_the_video():
    rng = np.random.default_rng(0)
    strides = set()
    for _ in range(300):
        clip = train_clip_indices(40, 8, rng, "stride")  # n // L = 5: strides 1..5
        steps = np.diff(clip)
        assert len(clip) == 8 and clip.min() >= 0 and clip.max() <= 39
        assert (steps == steps[0]).all()
        strides.add(int(steps[0]))
    assert strides == {1, 2, 3, 4, 5}


def test_train_clip_starts_cover_the_video():
    rng = np.random.default_rng(1)
    starts = {int(train_clip_indices(10, 8, rng, "stride")[0]) for _ in range(200)}  # stride 1 only: starts 0..2
    assert starts == {0, 1, 2}


@pytest.mark.parametrize("sampler", ["segments", "stride"])
def test_short_video_is_spread_evenly_in_training(sampler):
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert train_clip_indices(3, 6, rng, sampler).tolist() == [0, 0, 1, 1, 2, 2]


def test_segment_clips_take_one_frame_of_each_segment_in_order():
    rng = np.random.default_rng(2)
    seen = set()
    for _ in range(200):
        clip = train_clip_indices(40, 8, rng)  # segments of 5 frames
        assert (clip // 5).tolist() == list(range(8))
        seen.update(clip.tolist())
    assert seen == set(range(40))  # every frame of every segment gets drawn


def span(clip) -> int:
    return int(clip[-1] - clip[0])


@pytest.mark.parametrize("n", [12, 79, 186, 1700])
def test_evaluation_clips_move_at_a_speed_training_clips_take(n):
    """The span of an evaluation clip lies inside the range of spans of training clips (same time scale)."""
    length, rng = 40, np.random.default_rng(n)
    spans = [span(train_clip_indices(n, length, rng)) for _ in range(2000)]
    for clip in eval_clip_indices(n, length, clips=5):
        assert min(spans) <= span(clip) <= max(spans), (n, span(clip), min(spans), max(spans))


@pytest.mark.parametrize("n", [79, 186])
def test_the_seed_sampler_trains_faster_than_it_evaluates(n):
    """Why ``stride`` is not the default: its training spans stay below the evaluation span."""
    length, rng = 40, np.random.default_rng(n)
    spans = [span(train_clip_indices(n, length, rng, "stride")) for _ in range(2000)]
    assert max(spans) < span(eval_clip_indices(n, length, clips=1)[0])


def test_one_eval_clip_spans_the_whole_video_evenly():
    assert eval_clip_indices(32, 16, 1).tolist() == [list(range(1, 32, 2))]
    assert eval_clip_indices(8, 8, 1).tolist() == [list(range(8))]
    # A short video: every evaluation clip is the evenly spread one, floor(j * 3 / 5).
    assert eval_clip_indices(3, 5, 3).tolist() == [[0, 0, 1, 1, 2]] * 3


def test_several_eval_clips_take_other_offsets_of_the_same_segments():
    clips = eval_clip_indices(40, 10, 4)
    assert clips.shape == (4, 10)
    # Segment j holds frames 4j..4j+3; clip k takes offset k.
    for k in range(4):
        assert clips[k].tolist() == [4 * j + k for j in range(10)]
    assert len(np.unique(clips)) == 40


def write_cache(path, lengths, dim=3, flip=False):
    """Feature value = frame index (plain) or -frame index (mirrored), so reads can be checked exactly."""
    with FeatureCacheWriter(path, {"test": 1}, ["A", "B"], dim, flip=flip, dtype="float32") as writer:
        for i, n in enumerate(lengths):
            plain = np.repeat(np.arange(n, dtype=np.float32)[:, None], dim, axis=1) + 1000 * i
            writer.add(f"A/v_A_g{i + 1:02d}_c01", i % 2, plain, -plain if flip else None)
        writer.add_failure("B/v_B_g99_c01", "DecodeError: corrupt")
    return FeatureCache(path)


def test_train_dataset_reads_the_sampled_frames_and_flips_whole_clips(tmp_path):
    cache = write_cache(tmp_path / "c.h5", [20, 5], flip=True)
    data = TrainClips(cache, [0, 1], [0, 1], length=4, seed=3, flip=True)
    signs = []
    for epoch in range(12):
        data.set_epoch(epoch)
        clip, label = data[0]
        assert clip.shape == (4, 3) and label == 0
        values = clip[:, 0].numpy()
        signs.append(np.sign(values[values != 0]).mean() if (values != 0).any() else 0)
        frames = np.abs(values)
        assert np.all(frames == np.round(frames)) and frames.max() <= 19
        assert ((frames // 5).tolist() == [0, 1, 2, 3])  # one frame of each 5-frame segment, in order
    # Whole clips come from one side: every clip is all-plain or all-mirrored, and both occur.
    assert set(signs) <= {-1.0, 1.0, 0} and {-1.0, 1.0} <= set(signs)


def test_train_dataset_is_deterministic_per_seed_and_epoch(tmp_path):
    cache = write_cache(tmp_path / "c.h5", [50])
    a = TrainClips(cache, [0], [0], length=5, seed=7, flip=False)
    b = TrainClips(cache, [0], [0], length=5, seed=7, flip=False)
    draws = []
    for epoch in range(6):
        a.set_epoch(epoch)
        b.set_epoch(epoch)
        assert np.array_equal(a[0][0], b[0][0])
        draws.append(a[0][0][:, 0].tolist())
    assert len({tuple(d) for d in draws}) > 1  # epochs differ


def test_eval_dataset_returns_all_clips_of_a_video(tmp_path):
    cache = write_cache(tmp_path / "c.h5", [12, 30])
    data = EvalClips(cache, [1], [1], length=6, clips=2)
    clips, label = data[0]
    assert clips.shape == (2, 6, 3) and label == 1
    expected = 1000 + eval_clip_indices(30, 6, 2)
    assert np.array_equal(clips[:, :, 0].numpy(), expected)


def test_memory_and_disk_reads_agree(tmp_path):
    cache = write_cache(tmp_path / "c.h5", [9, 14], flip=True)
    disk = EvalClips(cache, [0, 1], [0, 1], length=4, clips=3)
    from_disk = [disk[k][0] for k in range(2)]
    assert cache.place("disk") == "disk"
    assert cache.place("auto") == "memory"  # a few KiB fit in a quarter of any machine's RAM
    from_memory = [disk[k][0] for k in range(2)]
    for a, b in zip(from_disk, from_memory):
        assert np.array_equal(a, b)


@pytest.mark.parametrize("setting, has_flip, expected", [("auto", True, True), ("auto", False, False),
                                                          (False, True, False), (True, True, True)])
def test_train_flip_follows_the_setting_and_the_cache(tmp_path, tiny_config, setting, has_flip, expected):
    from pipeline.sequence.train import use_flip

    cache = write_cache(tmp_path / "c.h5", [6], flip=has_flip)
    tiny_config.train.flip = setting
    assert use_flip(tiny_config, cache) is expected


def test_train_flip_on_a_cache_without_mirrored_features_is_refused(tmp_path, tiny_config):
    from pipeline.sequence.train import use_flip

    tiny_config.train.flip = True
    with pytest.raises(ActrecError, match="train.flip=true but .* has no mirrored features"):
        use_flip(tiny_config, write_cache(tmp_path / "c.h5", [6]))


def test_placing_features_in_memory_can_leave_the_mirrored_ones_on_disk(tmp_path):
    """Evaluation never reads mirrored features: it loads (and counts) only the plain ones."""
    cache = write_cache(tmp_path / "c.h5", [6, 4], flip=True)
    assert cache.nbytes_to_load(flip=False) * 2 == cache.nbytes_to_load(flip=True) == cache.nbytes
    assert cache.place("memory", flip=False) == "memory"
    assert set(cache._memory) == {False}
    assert cache.frames(1, np.array([0, 3]))[:, 0].tolist() == [1000.0, 1003.0]
