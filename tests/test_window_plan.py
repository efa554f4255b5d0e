"""FLA index mappings against a brute-force construction of the windows."""

from __future__ import annotations

import pytest
import torch

from hrsam.modeling.window_plan import (
    canvas_size,
    multiscale_window_plan,
    plain_window_plan,
    shifted_window_plan,
    window_offset,
    window_plan,
)

CASES = [(64, 64, 16), (8, 8, 16), (16, 16, 16), (20, 37, 16), (5, 3, 4), (33, 16, 8), (1, 1, 4), (12, 30, 6)]


def brute_force_windows(h: int, w: int, k: int, shift: int) -> list[list[tuple[int, int]]]:
    """Windows as lists of (y, x) in raster order, windows in raster order, built token by token."""
    p = window_offset(k, shift)
    rows, cols = canvas_size(h, k, shift) // k, canvas_size(w, k, shift) // k
    windows: list[list[tuple[int, int]]] = [[] for _ in range(rows * cols)]
    for y in range(h):
        for x in range(w):
            windows[((y + p) // k) * cols + (x + p) // k].append((y, x))
    return windows


def segments(index: torch.Tensor, cu: torch.Tensor) -> list[list[int]]:
    cu = cu.tolist()
    return [index[a:b].tolist() for a, b in zip(cu[:-1], cu[1:], strict=True)]


@pytest.mark.parametrize("h,w,k", CASES)
@pytest.mark.parametrize("shift_kind", ["plain", "half", "odd"])
def test_windows_match_brute_force(h: int, w: int, k: int, shift_kind: str) -> None:
    shift = {"plain": 0, "half": k // 2, "odd": k - 1}[shift_kind]
    plan = window_plan(((h, w),), k, shift, kv_padding=False)
    expected = [[y * w + x for y, x in win] for win in brute_force_windows(h, w, k, shift)]
    assert all(expected), "every canvas window holds at least one real token"
    assert segments(plan.q_index, plan.cu_seqlens_q) == expected
    assert plan.max_seqlen_q == max(len(win) for win in expected)
    p = window_offset(k, shift)
    ys, xs = plan.q_index // w, plan.q_index % w
    assert torch.equal(plan.q_coords, torch.stack([ys + p, xs + p], dim=1))


@pytest.mark.parametrize("h,w,k", CASES)
@pytest.mark.parametrize("kv_padding", [False, True])
def test_query_mapping_is_a_bijection_and_inverse_restores_order(h: int, w: int, k: int, kv_padding: bool) -> None:
    for shift in (0, k // 2):
        plan = window_plan(((h, w),), k, shift, kv_padding)
        assert torch.equal(plan.q_index.sort().values, torch.arange(h * w))
        x = torch.randn(h * w, 3)
        assert torch.equal(x[plan.q_index][plan.q_inverse], x)
        assert plan.cu_seqlens_q.dtype == torch.int32 and plan.cu_seqlens_k.dtype == torch.int32
        assert int(plan.cu_seqlens_q[-1]) == h * w


@pytest.mark.parametrize("h,w,k", CASES)
def test_kv_padding_fills_every_window_to_k_squared(h: int, w: int, k: int) -> None:
    for shift in (0, k // 2):
        plan = window_plan(((h, w),), k, shift, kv_padding=True)
        plain = window_plan(((h, w),), k, shift, kv_padding=False)
        assert torch.equal(plan.cu_seqlens_k, torch.arange(plan.num_windows + 1, dtype=torch.int32) * k * k)
        assert plan.max_seqlen_k == k * k
        q_segs, kv_segs = segments(plan.q_index, plan.cu_seqlens_q), segments(plan.kv_index, plan.cu_seqlens_k)
        for q_seg, kv_seg in zip(q_segs, kv_segs, strict=True):
            real = [i for i in kv_seg if i != plan.pad_index]
            assert real == q_seg, "real key slots are the window's queries, in the same order"
            assert len(kv_seg) - len(real) == k * k - len(q_seg)
        # padded slots sit at their virtual canvas positions: the full canvas is covered once
        canvas = canvas_size(h, k, shift) * canvas_size(w, k, shift)
        assert plan.kv_coords.shape[0] == canvas
        assert len({tuple(c) for c in plan.kv_coords.tolist()}) == canvas
        assert torch.equal(plain.q_index, plan.q_index)


def test_window_counts_of_the_spec() -> None:
    assert plain_window_plan(64, 64, 16).num_windows == 16
    assert shifted_window_plan(64, 64, 16).num_windows == 25
    assert shifted_window_plan(128, 128, 16).num_windows == 81


@pytest.mark.parametrize("kv_padding", [False, True])
def test_multiscale_mapping_covers_both_grids(kv_padding: bool) -> None:
    main, anchor, k = (20, 24), (8, 8), 4
    for shift in (0, k // 2):
        plan = multiscale_window_plan(main, anchor, k, shift, kv_padding)
        first = window_plan((main,), k, shift, kv_padding)
        second = window_plan((anchor,), k, shift, kv_padding)
        n_main = main[0] * main[1]
        total = n_main + anchor[0] * anchor[1]
        assert torch.equal(plan.q_index, torch.cat([first.q_index, second.q_index + n_main]))
        assert torch.equal(plan.q_index.sort().values, torch.arange(total))
        assert plan.num_windows == first.num_windows + second.num_windows
        assert torch.equal(plan.q_coords, torch.cat([first.q_coords, second.q_coords]))
        if kv_padding:
            # one shared padding token at the very end (listing 4)
            shared = torch.tensor(total)
            expected = torch.cat([
                torch.where(first.kv_index == first.pad_index, shared, first.kv_index),
                torch.where(second.kv_index == second.pad_index, shared, second.kv_index + n_main),
            ])
            assert torch.equal(plan.kv_index, expected)
            assert plan.pad_index == total


def test_batch_plan_repeats_the_image_plan_with_offsets() -> None:
    one = window_plan(((10, 12), (4, 4)), 4, 2, True)
    two = window_plan(((10, 12), (4, 4)), 4, 2, True, batch=2)
    n = 10 * 12 + 16
    assert torch.equal(two.q_index, torch.cat([one.q_index, one.q_index + n]))
    pad = lambda t, off: torch.where(t == n, torch.tensor(2 * n), t + off)  # noqa: E731
    assert torch.equal(two.kv_index, torch.cat([pad(one.kv_index, 0), pad(one.kv_index, n)]))
    assert two.num_windows == 2 * one.num_windows


def test_plans_are_cached_per_shape() -> None:
    assert shifted_window_plan(40, 24, 16, True) is shifted_window_plan(40, 24, 16, True)


@pytest.mark.parametrize(
    "args",
    [(((4, 4),), 0, 0, False), (((4, 4),), 4, 4, False), (((0, 4),), 4, 0, False), (((4, 4),), 4, 0, False, 0)],
)
def test_bad_arguments_raise(args: tuple) -> None:
    with pytest.raises(ValueError):
        window_plan(*args)
