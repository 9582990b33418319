//! aarch64 kernels of the 4-bit panel product: NEON for one column or several.
//!
//! NEON is part of every aarch64 CPU (the target enables it), so these need no run-time check;
//! they are `unsafe` only because Rust asks it of any `#[target_feature]` function.
//! They multiply in f32, as the reference does: the results are the reference's up to the
//! order of the additions. (An `sdot` path would have to round the activations to 8 bits,
//! which changes the numbers; it is not here.)

use std::arch::aarch64::*;

use super::{BLOCK, Columns, PANEL_BLOCK_BYTES, PANEL_ROWS, Scales};

/// A block's 32 f16 scales as eight vectors of four f32 (rows 0..4, 4..8, ...). `fcvtl` is
/// base ARMv8, but Rust's f16 vector types are not stable: it is written out.
#[target_feature(enable = "neon")]
fn scales_f32(scales: &[u8]) -> [float32x4_t; 8] {
    assert_eq!(scales.len(), PANEL_ROWS * 2);
    let mut out = [vdupq_n_f32(0.0); 8];
    for (pair, bytes) in out.chunks_exact_mut(2).zip(scales.chunks_exact(16)) {
        // SAFETY: `bytes` is 16 bytes long.
        let halves = unsafe { vld1q_u8(bytes.as_ptr()) };
        let (lo, hi): (float32x4_t, float32x4_t);
        // SAFETY: `fcvtl`/`fcvtl2` only read and write the registers named; no memory, no flags.
        unsafe {
            std::arch::asm!(
                "fcvtl {lo:v}.4s, {h:v}.4h",
                "fcvtl2 {hi:v}.4s, {h:v}.8h",
                h = in(vreg) halves,
                lo = out(vreg) lo,
                hi = out(vreg) hi,
                options(pure, nomem, nostack, preserves_flags),
            )
        };
        pair[0] = lo;
        pair[1] = hi;
    }
    out
}

/// The 16 nibble bytes of one position as 32 f32 weights (rows 0..32, four per vector).
#[target_feature(enable = "neon")]
fn position_weights(bytes: &[u8]) -> [float32x4_t; 8] {
    assert_eq!(bytes.len(), 16);
    // SAFETY: `bytes` is 16 bytes long.
    let v = unsafe { vld1q_u8(bytes.as_ptr()) };
    let (lo, hi) = (vandq_u8(v, vdupq_n_u8(0x0f)), vshrq_n_u8::<4>(v));
    let widen = |v: uint8x16_t| {
        let (a, b) = (vmovl_u8(vget_low_u8(v)), vmovl_high_u8(v));
        [
            vcvtq_f32_u32(vmovl_u16(vget_low_u16(a))),
            vcvtq_f32_u32(vmovl_high_u16(a)),
            vcvtq_f32_u32(vmovl_u16(vget_low_u16(b))),
            vcvtq_f32_u32(vmovl_high_u16(b)),
        ]
    };
    let (lo, hi) = (widen(lo), widen(hi));
    [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1], hi[2], hi[3]]
}

/// [`super::reference::panel`] with four rows per register: per position, 16 bytes become 32
/// floats that meet the activation in eight multiply-adds; four positions share one load of
/// the activations.
///
/// # Safety
/// The CPU has NEON: every aarch64 CPU does.
#[target_feature(enable = "neon")]
pub(super) unsafe fn panel_neon(panel: &[u8], placement: Scales, x: &[f32], block_sums: &[f32], rows: &mut [f32]) {
    assert!(panel.len() == x.len() / BLOCK * PANEL_BLOCK_BYTES && rows.len() == PANEL_ROWS);
    assert!(block_sums.len() == x.len() / BLOCK);
    let mut out = [vdupq_n_f32(0.0); 8];
    for ((bytes, xs), &block_sum) in panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.chunks_exact(BLOCK)).zip(block_sums) {
        let (scales, nibbles) = placement.split(bytes);
        let mut acc = [vdupq_n_f32(0.0); 8];
        for (four, xs) in nibbles.chunks_exact(64).zip(xs.chunks_exact(4)) {
            // SAFETY: `xs` is 4 floats long.
            let xv = unsafe { vld1q_f32(xs.as_ptr()) };
            let w = position_weights(&four[..16]);
            acc = std::array::from_fn(|i| vfmaq_laneq_f32::<0>(acc[i], w[i], xv));
            let w = position_weights(&four[16..32]);
            acc = std::array::from_fn(|i| vfmaq_laneq_f32::<1>(acc[i], w[i], xv));
            let w = position_weights(&four[32..48]);
            acc = std::array::from_fn(|i| vfmaq_laneq_f32::<2>(acc[i], w[i], xv));
            let w = position_weights(&four[48..]);
            acc = std::array::from_fn(|i| vfmaq_laneq_f32::<3>(acc[i], w[i], xv));
        }
        let offset = vdupq_n_f32(8.0 * block_sum);
        let scales = scales_f32(scales);
        for ((out, acc), scale) in out.iter_mut().zip(acc).zip(scales) {
            *out = vfmaq_f32(*out, vsubq_f32(acc, offset), scale);
        }
    }
    for (out, rows) in out.iter().zip(rows.chunks_exact_mut(4)) {
        // SAFETY: `rows` is 4 floats long.
        unsafe { vst1q_f32(rows.as_mut_ptr(), *out) };
    }
}

/// [`panel_neon`] for `n` columns (`block_sums`: n rows of k / 32, `rows`: n rows of 32
/// outputs): each block of the panel is unpacked once, to 32 positions of 32 floats, and
/// then meets the columns four at a time, sixteen rows at a time (16 sums in registers).
///
/// # Safety
/// The CPU has NEON: every aarch64 CPU does.
#[target_feature(enable = "neon")]
pub(super) unsafe fn panel_columns_neon(
    panel: &[u8],
    placement: Scales,
    columns: &Columns,
    block_sums: &[f32],
    rows: &mut [f32],
) {
    let (n, k) = (columns.n, columns.k);
    let blocks = k / BLOCK;
    assert!(panel.len() == blocks * PANEL_BLOCK_BYTES && block_sums.len() == n * blocks);
    assert!(rows.len() == n * PANEL_ROWS);
    rows.fill(0.0);
    let mut weights = [[vdupq_n_f32(0.0); 8]; BLOCK];
    for (blk, bytes) in panel.chunks_exact(PANEL_BLOCK_BYTES).enumerate() {
        let (scales, nibbles) = placement.split(bytes);
        for (w, bytes) in weights.iter_mut().zip(nibbles.chunks_exact(16)) {
            *w = position_weights(bytes);
        }
        let block = Block { weights: &weights, scales: scales_f32(scales), columns, block_sums, blk };
        for panel_first in (0..n).step_by(columns.r) {
            let panel_end = n.min(panel_first + columns.r);
            let mut t = panel_first;
            while t < panel_end {
                let tile = (panel_end - t).min(4);
                let rows = &mut rows[t * PANEL_ROWS..(t + tile) * PANEL_ROWS];
                match tile {
                    4 => block.tile::<4>(t, rows),
                    3 => block.tile::<3>(t, rows),
                    2 => block.tile::<2>(t, rows),
                    _ => block.tile::<1>(t, rows),
                }
                t += tile;
            }
        }
    }
}

/// One unpacked block of a panel and what the columns need of it.
struct Block<'a> {
    weights: &'a [[float32x4_t; 8]; BLOCK],
    scales: [float32x4_t; 8],
    columns: &'a Columns<'a>,
    block_sums: &'a [f32],
    blk: usize,
}

impl Block<'_> {
    /// Columns `first..first + T`, side by side in one of tract's panels, times the block,
    /// added to their `rows` (T rows of 32).
    #[target_feature(enable = "neon")]
    fn tile<const T: usize>(&self, first: usize, rows: &mut [f32]) {
        let columns = self.columns;
        let (step, blocks) = (columns.r, columns.k / BLOCK);
        assert!(first % step + T <= step && rows.len() == T * PANEL_ROWS);
        // The tile's values of this block: position `pos` of column `first + t` at `pos * step + t`.
        let x = &columns.data[columns.start(first) + self.blk * BLOCK * step..][..(BLOCK - 1) * step + T];
        for half in 0..2 {
            let mut acc = [[vdupq_n_f32(0.0); 4]; T];
            for (pos, w) in self.weights.iter().enumerate() {
                let w = &w[4 * half..4 * half + 4];
                for (t, acc) in acc.iter_mut().enumerate() {
                    let xv = x[pos * step + t];
                    for (a, w) in acc.iter_mut().zip(w) {
                        *a = vfmaq_n_f32(*a, *w, xv);
                    }
                }
            }
            for (t, row) in rows.chunks_exact_mut(PANEL_ROWS).enumerate() {
                let offset = vdupq_n_f32(8.0 * self.block_sums[(first + t) * blocks + self.blk]);
                let row = &mut row[16 * half..16 * half + 16];
                for (i, (a, out)) in acc[t].iter().zip(row.chunks_exact_mut(4)).enumerate() {
                    // SAFETY: `out` is 4 floats long.
                    unsafe {
                        let sum = vld1q_f32(out.as_ptr());
                        vst1q_f32(out.as_mut_ptr(), vfmaq_f32(sum, vsubq_f32(*a, offset), self.scales[4 * half + i]));
                    }
                }
            }
        }
    }
}
