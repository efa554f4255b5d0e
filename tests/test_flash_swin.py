"""Flash Swin equals traditional Swin attention; KV-only padding changes only border windows."""

from __future__ import annotations

import pytest
import torch

from hrsam.modeling.flash_swin import AttentionLayout, FlashSwinAttention
from hrsam.modeling.rope import apply_rope, rope_tables
from hrsam.modeling.swin_reference import swin_window_attention
from hrsam.modeling.window_plan import window_offset, window_plan

DIM, HEADS = 32, 2


def make_attention(padding: str, seed: int = 0) -> FlashSwinAttention:
    torch.manual_seed(seed)
    attn = FlashSwinAttention(DIM, HEADS, padding=padding)
    for p in attn.parameters():
        torch.nn.init.normal_(p, std=0.2)
    return attn.eval()


def run_flash(attn: FlashSwinAttention, x: torch.Tensor, h: int, w: int, k: int, shift: int) -> torch.Tensor:
    plan = window_plan(((h, w),), k, shift, kv_padding=attn.padding_mode != "none")
    return attn(x, AttentionLayout.build(plan, attn.head_dim, x.device))


def run_traditional(
    attn: FlashSwinAttention, x: torch.Tensor, h: int, w: int, k: int, shift: int, fused: bool = False
) -> torch.Tensor:
    """Same weights and same RoPE positions, computed with roll + mask instead of index mappings."""
    q, kk, v = attn.qkv(x).view(h * w, 3, HEADS, DIM // HEADS).unbind(1)
    p = window_offset(k, shift)
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    cos, sin = rope_tables(torch.stack([ys.flatten() + p, xs.flatten() + p], 1), DIM // HEADS)
    q, kk = apply_rope(q, cos, sin), apply_rope(kk, cos, sin)
    grid = lambda t: t.view(h, w, HEADS, DIM // HEADS)  # noqa: E731
    out = swin_window_attention(grid(q), grid(kk), grid(v), k, shift, (DIM // HEADS) ** -0.5, fused=fused)
    return attn.proj(out.reshape(h * w, DIM))


@pytest.mark.parametrize("h,w,k", [(16, 16, 8), (24, 32, 8), (16, 16, 16), (32, 16, 4)])
@pytest.mark.parametrize("shift_half", [False, True])
def test_flash_swin_equals_traditional_swin_on_every_token(h: int, w: int, k: int, shift_half: bool) -> None:
    """The paper's equivalence claim, fp32, tolerance 1e-5 absolute on every output element."""
    attn = make_attention("none")
    x = torch.randn(h * w, DIM)
    shift = k // 2 if shift_half else 0
    with torch.no_grad():
        flash = run_flash(attn, x, h, w, k, shift)
        traditional = run_traditional(attn, x, h, w, k, shift)
        traditional_fused = run_traditional(attn, x, h, w, k, shift, fused=True)
    torch.testing.assert_close(flash, traditional, rtol=0, atol=1e-5)
    torch.testing.assert_close(flash, traditional_fused, rtol=0, atol=1e-5)


def border_tokens(h: int, w: int, k: int, shift: int) -> set[int]:
    """Tokens whose window has fewer than k*k real tokens (those KV-only padding touches)."""
    plan = window_plan(((h, w),), k, shift, kv_padding=False)
    cu = plan.cu_seqlens_q.tolist()
    short = set()
    for a, b in zip(cu[:-1], cu[1:], strict=True):
        if b - a < k * k:
            short.update(plan.q_index[a:b].tolist())
    return short


@pytest.mark.parametrize("h,w,k,shift", [(16, 16, 8, 4), (20, 12, 8, 0), (20, 12, 8, 4), (16, 16, 8, 0)])
@pytest.mark.parametrize("padding", ["token", "kv"])
def test_kv_only_padding_changes_exactly_the_border_windows(h: int, w: int, k: int, shift: int, padding: str) -> None:
    padded, unpadded = make_attention(padding), make_attention("none")
    unpadded.load_state_dict(padded.state_dict(), strict=False)
    x = torch.randn(h * w, DIM)
    with torch.no_grad():
        changed = (run_flash(padded, x, h, w, k, shift) - run_flash(unpadded, x, h, w, k, shift)).abs().amax(1) > 1e-6
    expected = border_tokens(h, w, k, shift)
    assert set(torch.nonzero(changed).flatten().tolist()) == expected
    if shift == 0 and h % k == 0 and w % k == 0:
        assert not expected, "plain windows on a multiple-of-k grid have no padding at all"


def authors_forward(attn: FlashSwinAttention, x: torch.Tensor, h: int, w: int, k: int, shift: int) -> torch.Tensor:
    """The authors' computation: gather [x; token] into full k*k windows (queries too), uniform blocks."""
    plan = window_plan(((h, w),), k, shift, kv_padding=True)
    slots = torch.cat([x, attn.padding])[plan.kv_index]
    q, kk, v = attn.qkv(slots).view(-1, 3, HEADS, DIM // HEADS).unbind(1)
    cos, sin = rope_tables(plan.kv_coords, DIM // HEADS)
    q, kk = apply_rope(q, cos, sin), apply_rope(kk, cos, sin)
    n = plan.num_windows
    win = lambda t: t.view(n, k * k, HEADS, DIM // HEADS)  # noqa: E731
    scores = torch.einsum("nqhd,nkhd->nhqk", win(q), win(kk)) * (DIM // HEADS) ** -0.5
    out = torch.einsum("nhqk,nkhd->nqhd", scores.softmax(-1), win(v)).reshape(-1, DIM)
    out = attn.proj(out)
    result = torch.empty(h * w + 1, DIM)
    result[plan.kv_index] = out
    return result[:-1]


@pytest.mark.parametrize("h,w,k,shift", [(16, 16, 8, 4), (20, 12, 8, 0), (13, 9, 4, 2)])
def test_token_padding_reproduces_the_authors_computation(h: int, w: int, k: int, shift: int) -> None:
    attn = make_attention("token")
    x = torch.randn(h * w, DIM)
    with torch.no_grad():
        ours, theirs = run_flash(attn, x, h, w, k, shift), authors_forward(attn, x, h, w, k, shift)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_batched_layout_equals_per_image_calls() -> None:
    attn = make_attention("token")
    h, w, k = 12, 20, 8
    x = torch.randn(2, h * w, DIM)
    plan = window_plan(((h, w),), k, k // 2, True, batch=2)
    with torch.no_grad():
        batched = attn(x.reshape(-1, DIM), AttentionLayout.build(plan, attn.head_dim, "cpu")).view(2, h * w, DIM)
        singles = torch.stack([run_flash(attn, x[i], h, w, k, k // 2) for i in range(2)])
    torch.testing.assert_close(batched, singles, rtol=0, atol=1e-5)


def test_gradients_reach_every_parameter() -> None:
    attn = make_attention("token")
    x = torch.randn(12 * 12, DIM, requires_grad=True)
    run_flash(attn, x, 12, 12, 8, 4).square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in attn.parameters())


def test_wrong_token_count_or_layout_is_refused() -> None:
    attn = make_attention("token")
    layout = AttentionLayout.build(window_plan(((8, 8),), 4, 2, True), attn.head_dim, "cpu")
    with pytest.raises(ValueError, match="expected tokens"):
        attn(torch.randn(63, DIM), layout)
    unpadded_layout = AttentionLayout.build(window_plan(((8, 8),), 4, 2, False), attn.head_dim, "cpu")
    with pytest.raises(ValueError, match="kv_padding"):
        attn(torch.randn(64, DIM), unpadded_layout)
