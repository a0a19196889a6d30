"""The procedural world: determinism, ground truth, overlap, actions and camera paths."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lrag_adapters.world import (ACTION_SCALE, SAME_PLACE_OVERLAP, World, actions, make_clip,
                                 overlap, overlap_matrix, path_from_actions, random_walk,
                                 revisit, same_place)

F = 64


@pytest.fixture(scope="module")
def world():
    return World(7)


@pytest.fixture(scope="module")
def empty():
    return World(3, n_subjects=0)


def cam(*xy):
    return np.array(xy, dtype=np.int64).reshape(-1, 2)


def test_clip_shapes_range_and_determinism():
    frames, acts, truths = make_clip(5, 40)
    assert frames.shape == (40, 3, F, F) and frames.dtype == np.float32
    assert acts.shape == (40, 2) and acts.dtype == np.float32
    assert len(truths) == 40 and [t.t for t in truths] == list(range(40))
    assert frames.min() >= -1 and frames.max() <= 1 and frames.std() > 0.2
    again, acts2, truths2 = make_clip(5, 40)
    np.testing.assert_array_equal(frames, again)
    np.testing.assert_array_equal(acts, acts2)
    assert truths == truths2
    other, _, _ = make_clip(6, 40)
    np.testing.assert_array_equal(World(5).panorama, World(5, n_subjects=0).panorama)
    assert np.abs(frames - other).mean() > 0.1


def test_different_worlds_differ_at_the_same_camera():
    path = cam([100, 8], [300, 0])
    a, _ = World(1).render(path)
    b, _ = World(2).render(path)
    assert np.abs(a - b).mean() > 0.1


def test_places_look_distinct(empty):
    xs = np.arange(0, empty.width, F)  # non-overlapping views around the panorama
    frames, _ = empty.render(np.stack((xs, np.full_like(xs, 8)), axis=1))
    flat = frames.reshape(len(xs), -1)
    dist = np.abs(flat[:, None] - flat[None]).mean(-1)  # [n, n]
    assert dist[~np.eye(len(xs), dtype=bool)].min() > 0.1


def test_same_position_is_overlap_one_and_same_background(world):
    path = revisit(11, 300, y_max=world.y_max)
    frames, truths = world.render(path)
    ov = overlap_matrix(truths, truths)
    same = np.argwhere(np.all(path[:, None] == path[None], axis=-1) & (np.arange(300)[:, None]
                                                                       + 20 < np.arange(300)))
    assert len(same) > 10, "a revisit path returns to the same positions"
    moving = [i for i, s in enumerate(world.subjects) if s.moving]
    assert moving
    for a, b in same:
        assert ov[a, b] == 1.0 and same_place(truths[a], truths[b])
        keep = np.ones((F, F), bool)
        for box in truths[a].subjects + truths[b].subjects:
            if box.subject in moving:
                keep[box.y0:box.y1, box.x0:box.x1] = False
        np.testing.assert_array_equal(frames[a][:, keep], frames[b][:, keep])


def test_half_frame_apart(empty):
    frames, truths = empty.render(cam([200, 4], [232, 4]))
    assert overlap(*truths) == 0.5 and same_place(*truths)
    np.testing.assert_array_equal(frames[0][..., 32:], frames[1][..., :32])
    _, (_, below) = empty.render(cam([200, 4], [216, 12]))
    assert overlap(truths[0], below) == pytest.approx(0.75 * 0.875)


def test_far_apart_is_zero(empty):
    _, truths = empty.render(cam([10, 0], [10 + F, 0], [300, 16]))
    ov = overlap_matrix(truths, truths)
    np.testing.assert_array_equal(ov, np.eye(3))
    assert not same_place(truths[0], truths[1])


def test_wrap_around(empty):
    w = empty.width
    frames, truths = empty.render(cam([w - 16, 0], [16, 0], [-16, 0], [2 * w - 16, 0]))
    assert [t.x for t in truths] == [w - 16, 16, w - 16, w - 16]
    assert overlap(truths[0], truths[1]) == 0.5
    np.testing.assert_array_equal(frames[0][..., 32:], frames[1][..., :32])
    np.testing.assert_array_equal(frames[0][..., :16], empty.panorama[:, :F, w - 16:])
    np.testing.assert_array_equal(frames[0][..., 16:], empty.panorama[:, :F, :F - 16])
    np.testing.assert_array_equal(frames[0], frames[2])
    np.testing.assert_array_equal(frames[0], frames[3])


@given(st.lists(st.tuples(st.integers(-5000, 5000), st.integers(0, 16)), min_size=1,
                max_size=20))
def test_overlap_matrix_matches_pairwise(points):
    _, truths = World(0, n_subjects=0).render(np.array(points, dtype=np.int64))
    m = overlap_matrix(truths, truths[::-1])
    assert m.shape == (len(points), len(points))
    for i, a in enumerate(truths):
        for j, b in enumerate(truths[::-1]):
            assert m[i, j] == overlap(a, b) == overlap(b, a)
            dx = abs(a.x - b.x) % a.width
            dx = min(dx, a.width - dx)
            expected = max(0, F - dx) * max(0, F - abs(a.y - b.y)) / F ** 2
            assert m[i, j] == pytest.approx(expected)


def test_overlap_rejects_mixed_worlds():
    _, a = World(0, n_subjects=0).render(cam([0, 0]))
    _, b = World(0, n_subjects=0, width_frames=4).render(cam([0, 0]))
    with pytest.raises(ValueError, match="width, frame"):
        overlap(a[0], b[0])
    assert overlap_matrix([], a).shape == (0, 1)


@given(st.integers(0, 10_000), st.integers(1, 200), st.sampled_from(["walk", "revisit"]))
def test_actions_round_trip(seed, length, kind):
    path = (random_walk(seed, length) if kind == "walk" else revisit(seed, length))
    acts = actions(path)
    assert acts.shape == (length, 2) and not acts[0].any()
    assert np.abs(acts).max() <= 1.0
    np.testing.assert_array_equal(path_from_actions(acts, tuple(path[0])), path)


@given(st.lists(st.tuples(st.integers(-10**6, 10**6), st.integers(-100, 100)), min_size=1,
                max_size=30))
def test_any_integer_path_round_trips(points):
    path = np.array(points, dtype=np.int64)
    acts = actions(path)
    np.testing.assert_array_equal(acts[1:] * ACTION_SCALE, np.diff(path, axis=0))
    np.testing.assert_array_equal(path_from_actions(acts, tuple(path[0])), path)


def test_random_walk_turns_back_and_stays_in_rows():
    path = random_walk(0, 2000, y_max=16)
    dx = np.diff(path[:, 0])
    assert (dx > 0).any() and (dx < 0).any()
    assert path[:, 1].min() >= 0 and path[:, 1].max() <= 16 and len(set(path[:, 1])) > 3
    np.testing.assert_array_equal(path, random_walk(0, 2000, y_max=16))
    assert not np.array_equal(path, random_walk(1, 2000, y_max=16))


def test_revisit_pans_away_and_comes_back():
    path = revisit(4, 400, span_frames=3)
    np.testing.assert_array_equal(path, revisit(4, 400, span_frames=3))
    away = np.abs(path[:, 0] - path[0, 0])
    assert away.max() >= 3 * F - 5
    returns = np.flatnonzero(np.all(path == path[0], axis=1))
    assert len(returns) >= 3, "back at the start several times"
    assert np.unique(path[:, 1]).size == 1


def test_subjects_in_view_appear_in_truth(world):
    for s, subject in enumerate(world.subjects):
        centre = subject.centres(np.array([0]))[0]
        y = int(np.clip(centre[1] - F // 2, 0, world.y_max))
        frames, truths = world.render(cam([centre[0] - F // 2, y], [centre[0] + 4 * F, y]))
        box = truths[0].visible(s)
        assert box is not None and box.fraction == 1.0
        cx, cy = F // 2, centre[1] - y
        assert box.x0 <= cx < box.x1 and box.y0 <= cy < box.y1
        assert box.x1 - box.x0 <= 2 * subject.radius + 1
        rgb, mask = subject.sprite()
        patch = frames[0][:, cy - subject.radius:cy + subject.radius + 1,
                          cx - subject.radius:cx + subject.radius + 1]
        np.testing.assert_array_equal(patch[:, mask], rgb[:, mask])
        assert truths[1].visible(s) is None  # half a panorama away


def test_subject_partly_in_view(world):
    subject = world.subjects[0]
    cx, cy = subject.centres(np.array([0]))[0]
    y = int(np.clip(cy - F // 2, 0, world.y_max))
    _, truths = world.render(cam([cx + 2, y]))  # the centre 2 px left of the frame
    box = truths[0].visible(0)
    assert box.x0 == 0 and box.x1 <= subject.radius - 1 and 0 < box.fraction < 0.5


def test_moving_subjects_move(world):
    s = next(i for i, sub in enumerate(world.subjects) if sub.moving)
    subject = world.subjects[s]
    times = np.arange(subject.period)
    centres = subject.centres(times)
    assert np.ptp(centres[:, 0]) >= 2 * subject.amp_x - 1
    x = int(subject.x - F // 2)
    y = int(np.clip(subject.y - F // 2, 0, world.y_max))
    _, truths = world.render(np.tile([x, y], (subject.period, 1)))
    lefts = [t.visible(s).x0 for t in truths]
    assert len(set(lefts)) > 3  # the static camera sees it sway


def test_bad_input_is_a_value_error(world):
    with pytest.raises(ValueError, match="y must be in"):
        world.render(cam([0, world.y_max + 1]))
    with pytest.raises(ValueError, match="shape"):
        world.render(np.zeros((4, 3), np.int64))
    with pytest.raises(ValueError, match="integer"):
        world.render(np.zeros((4, 2)))
    with pytest.raises(ValueError, match="n_subjects"):
        World(0, n_subjects=20)
    with pytest.raises(ValueError, match="width_frames"):
        World(0, width_frames=1)
    with pytest.raises(ValueError, match="path must be"):
        make_clip(0, 8, path="spiral")
    with pytest.raises(ValueError, match="actions must be"):
        path_from_actions(np.zeros((3, 3)), (0, 0))


def test_render_a_thousand_frames(world):
    frames, truths = world.render(random_walk(2, 1000, y_max=world.y_max))
    assert frames.shape == (1000, 3, F, F) and len(truths) == 1000
    assert sum(len(t.subjects) for t in truths) > 0
    assert SAME_PLACE_OVERLAP == 0.5
