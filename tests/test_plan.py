"""The context plan of each placement mode, checked against hand-worked examples."""
import pytest
import torch

from lrag_framework.interfaces import ROLE_LOCAL, ROLE_RETRIEVED, ROLE_SINK
from lrag_framework.generation.plan import Geometry, plan_block

PUBLIC = dict(block=3, window=12, sink=1, k=6, recency=5)


def row(plan, s=0):
    n = int(plan.valid[s].sum())
    return (plan.frame_ids[s, :n].tolist(), plan.positions[s, :n].tolist(),
            plan.roles[s, :n].tolist())


def test_reference_mode_matches_public_semantics():
    g = Geometry(**PUBLIC, placement="reference")
    # Block [30, 33): cache = sink 0 + frames 22..32 (window 12); local part fixed by K:
    # 12 - 1 - 6 = 5 frames incl. the block -> 2 previous frames (28, 29).
    plan = plan_block(g, 30, 3, [[3, 7, 11]])
    frames, positions, roles = row(plan)
    assert frames == [0, 3, 7, 11, 28, 29]
    assert positions == [0, 0, 0, 0, 7, 8]  # retrieved at 0, cached frames by slot
    assert roles == [ROLE_SINK] + [ROLE_RETRIEVED] * 3 + [ROLE_LOCAL] * 2
    assert plan.block_positions[0].tolist() == [9, 10, 11]
    # Before anything is retrieved the local part is already limited by K.
    frames, positions, _ = row(plan_block(g, 6, 3, [[]]))
    assert frames == [0, 4, 5] and positions == [0, 4, 5]


def test_fill_mode_gives_empty_retrieval_slots_to_local_frames():
    g = Geometry(**PUBLIC, placement="fill")
    plan = plan_block(g, 30, 3, [[3, 7], [1, 2, 3, 4, 5, 6]])
    assert row(plan, 0)[0] == [0, 3, 7, 24, 25, 26, 27, 28, 29]
    assert row(plan, 1)[0] == [0, 1, 2, 3, 4, 5, 6, 28, 29]
    assert plan.valid.all()  # both streams use the whole window
    assert row(plan_block(g, 30, 3, [[]]))[0] == [0] + list(range(22, 30))


def test_extend_mode_adds_retrieved_frames_on_top():
    g = Geometry(**PUBLIC, placement="extend")
    plan = plan_block(g, 30, 3, [[3, 7, 11], []])
    assert row(plan, 0)[0] == [0, 3, 7, 11] + list(range(22, 30))
    assert row(plan, 1)[0] == [0] + list(range(22, 30))
    assert plan.valid[1].sum() == 9 and plan.frame_ids[1, 9:].eq(-1).all()


def test_before_local_positions_take_the_vacated_slots():
    g = Geometry(**PUBLIC, placement="reference", retrieved_position="before_local")
    _, positions, _ = row(plan_block(g, 30, 3, [[3, 7, 11, 12, 13, 14]]))
    assert positions == [0, 1, 2, 3, 4, 5, 6, 7, 8]


def test_eligibility_skips_sink_cache_and_recency_guard():
    g = Geometry(**PUBLIC, placement="fill")
    has_kv = torch.ones(40, dtype=torch.bool)
    # Block [30, 33): frames < 19 were evicted before it started; guard R=5 -> eligible 1..13.
    assert g.eligible(30, has_kv).nonzero().flatten().tolist() == list(range(1, 14))
    has_kv[5] = False
    assert not g.eligible(30, has_kv)[5]
    assert not g.eligible(15, has_kv).any()


@pytest.mark.parametrize("placement,k,ok", [("reference", 9, False), ("reference", 8, True),
                                            ("fill", 11, True)])
def test_geometry_check(placement, k, ok):
    assert (not Geometry(3, 12, 1, k, 5, placement).check()) == ok


def test_loop_closure_frames_and_precision_ceiling():
    from lrag_framework.outputs.report import loop_closure_frames, precision_ceiling

    g = Geometry(block=2, window=4, sink=1, k=2, recency=1)
    t = 12
    same = torch.eye(t, dtype=torch.bool)
    same[8, 1] = same[1, 8] = True  # frame 8 shows the place of frame 1
    lc = loop_closure_frames(same, g, first_generated=2)
    # block 8: eligible = [1, 8 - 3 - 1) = 1..3, frame 1 same place -> frames 8, 9 only
    assert lc.nonzero().flatten().tolist() == [8, 9]
    # blocks 6, 8, 10 have eligible frames (1..1, 1..3, 1..5): k' = 1, 2, 2; same = 0, 1, 0
    assert precision_ceiling(same, g, first_generated=2) == pytest.approx((0 + 0.5 + 0) / 3)


def test_absolute_positions_are_frame_indices_once_the_cache_rolls():
    slots = Geometry(**PUBLIC, placement="reference")
    absolute = Geometry(**PUBLIC, placement="reference", positions="absolute")
    # Before the roll (block [6, 9), cache 0..8) both agree: a slot is the frame index.
    assert row(plan_block(slots, 6, 3, [[]])) == row(plan_block(absolute, 6, 3, [[]]))
    # Block [30, 33): the same frames, each at its own index, the sink at 0, the block at 30..32.
    plan = plan_block(absolute, 30, 3, [[3, 7, 11]])
    frames, positions, _ = row(plan)
    assert frames == [0, 3, 7, 11, 28, 29]
    assert positions == [0, 0, 0, 0, 28, 29]
    assert plan.block_positions[0].tolist() == [30, 31, 32]
    g = Geometry(**PUBLIC, placement="reference", retrieved_position="before_local",
                 positions="absolute")
    assert row(plan_block(g, 30, 3, [[3, 7, 11]]))[1] == [0, 25, 26, 27, 28, 29]


def test_absolute_positions_past_the_backbone_table_are_refused():
    absolute = Geometry(**PUBLIC, positions="absolute")
    assert absolute.position_errors(1024, 1024) == []
    (error,) = absolute.position_errors(1025, 1024)
    assert "positions: absolute" in error and "0 .. 1023" in error and "1025 > 1024" in error
    assert absolute.position_errors(10 ** 6, None) == []  # no bound declared
    assert Geometry(**PUBLIC).position_errors(10 ** 6, 1024) == []  # slots stay below window
