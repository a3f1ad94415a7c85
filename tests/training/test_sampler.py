"""Duration-bucketed batching: budget, coverage, determinism, resumption and sharding."""

from __future__ import annotations

import random

import pytest

from asrlib.datasets.ljspeech import load_corpus
from asrlib.training.sampler import DurationBucketSampler

BUDGET = 60.0  # seconds of padded audio per batch


def _durations(count: int, low: float = 1.0, high: float = 10.0, seed: int = 0) -> list[float]:
    rng = random.Random(seed)
    return [rng.uniform(low, high) for _ in range(count)]


def _padding_share(batches: list[list[int]], durations: list[float]) -> float:
    padded = sum(len(batch) * max(durations[i] for i in batch) for batch in batches)
    return 1 - sum(durations[i] for batch in batches for i in batch) / padded


def _sampler(durations: list[float], **kwargs) -> DurationBucketSampler:
    return DurationBucketSampler(durations, max_batch_seconds=kwargs.pop("max_batch_seconds", BUDGET), **kwargs)


def test_batches_within_budget():
    durations = _durations(500)
    for batch in _sampler(durations):
        assert len(batch) * max(durations[i] for i in batch) <= BUDGET, batch


def test_overlong_clip_alone():
    durations = [*_durations(100), 95.0, 3.0]
    batches = list(_sampler(durations))
    holding = [batch for batch in batches if 100 in batch]
    assert holding == [[100]]
    for batch in batches:
        if batch != [100]:
            assert len(batch) * max(durations[i] for i in batch) <= BUDGET


def test_every_index_once():
    durations = _durations(777)
    indices = [i for batch in _sampler(durations) for i in batch]
    assert sorted(indices) == list(range(777))


def test_every_index_once_later_epoch():
    sampler = _sampler(_durations(333), num_buckets=7)
    sampler.start_epoch(5)
    assert sorted(i for batch in sampler for i in batch) == list(range(333))


def test_len_counts_batches():
    sampler = _sampler(_durations(400))
    assert len(sampler) == len(list(sampler))


def test_same_seed_same_batches():
    durations = _durations(300)
    assert list(_sampler(durations, seed=4)) == list(_sampler(durations, seed=4))


def test_other_seed_other_batches():
    durations = _durations(300)
    assert list(_sampler(durations, seed=4)) != list(_sampler(durations, seed=5))


def test_epochs_differ():
    sampler = _sampler(_durations(300))
    first = list(sampler)
    sampler.start_epoch(1)
    assert list(sampler) != first


def test_no_shuffle_sorted_by_duration():
    durations = _durations(50)
    batches = list(_sampler(durations, shuffle=False, num_buckets=1))
    order = [i for batch in batches for i in batch]
    assert order == sorted(range(50), key=lambda i: durations[i])


def test_resume_mid_epoch():
    durations = _durations(400)
    sampler = _sampler(durations, seed=3)
    sampler.start_epoch(2)
    batches = list(sampler)
    for _ in range(7):
        sampler.advance()

    resumed = _sampler(durations, seed=0)  # the seed comes from the saved state
    resumed.load_state_dict(sampler.state_dict())
    assert list(resumed) == batches[7:]


def test_resume_next_epoch_matches():
    durations = _durations(200)
    sampler = _sampler(durations, seed=1)
    sampler.advance()
    resumed = _sampler(durations)
    resumed.load_state_dict(sampler.state_dict())
    sampler.start_epoch(1)
    resumed.start_epoch(1)
    assert list(resumed) == list(sampler)


def test_state_dict_contents():
    sampler = _sampler(_durations(50), seed=9)
    sampler.start_epoch(3)
    sampler.advance()
    sampler.advance()
    assert sampler.state_dict() == {"epoch": 3, "position": 2, "seed": 9, "world_size": 1}


def test_shards_disjoint_equal_length():
    durations = _durations(501)
    shards = [list(_sampler(durations, seed=2, rank=rank, world_size=2)) for rank in (0, 1)]
    first = {i for batch in shards[0] for i in batch}
    second = {i for batch in shards[1] for i in batch}
    assert len(shards[0]) == len(shards[1])
    assert not first & second
    kept = _sampler(durations, seed=2, world_size=2).global_batches()
    assert len(first | second) == sum(len(batch) for batch in kept)
    assert len(durations) - len(first | second) <= 20  # only single-clip tails of buckets are dropped


def test_shards_union_is_single_process_batch():
    durations = _durations(501)
    budget = 60.0
    single = list(DurationBucketSampler(durations, max_batch_seconds=2 * budget, seed=2))
    shards = [list(DurationBucketSampler(durations, max_batch_seconds=budget, seed=2, rank=r, world_size=2))
              for r in (0, 1)]
    # A global batch of one clip cannot be split over two processes, so that run drops it.
    single = [batch for batch in single if len(batch) >= 2]
    assert len(single) == len(shards[0])
    for step, batch in enumerate(single):
        assert sorted(batch) == sorted(shards[0][step] + shards[1][step])


def test_world_size_mismatch_rejected():
    durations = _durations(100)
    single = _sampler(durations)
    pair = _sampler(durations, rank=0, world_size=2)
    with pytest.raises(ValueError, match=r"world size 1.*resume with the same number of processes"):
        pair.load_state_dict(single.state_dict())


def test_padding_share_ljspeech_like():
    durations = _durations(5000, 1.0, 10.0)
    batches = list(DurationBucketSampler(durations, max_batch_seconds=240.0, num_buckets=20))
    assert _padding_share(batches, durations) < 0.10


def test_padding_share_real_clips(ljspeech_mini):
    durations = [clip.duration for clip in load_corpus(ljspeech_mini).clips]
    batches = list(DurationBucketSampler(durations, max_batch_seconds=60.0, num_buckets=20))
    assert _padding_share(batches, durations) < 0.10


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_batch_seconds": 0.0}, "max_batch_seconds"),
        ({"num_buckets": 0}, "num_buckets"),
        ({"rank": 2, "world_size": 2}, "rank 2"),
    ],
)
def test_invalid_arguments_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _sampler(_durations(10), **kwargs)


def test_empty_dataset_rejected():
    with pytest.raises(ValueError, match="empty"):
        _sampler([])


def test_more_buckets_than_clips():
    sampler = _sampler([2.0, 3.0, 4.0], num_buckets=20)
    assert sorted(i for batch in sampler for i in batch) == [0, 1, 2]
