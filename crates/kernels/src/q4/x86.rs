//! x86_64 kernels of the 4-bit panel product: AVX2 (one column) and AVX-512 (one or several).

use super::{BLOCK, Columns, PANEL_BLOCK_BYTES, PANEL_ROWS, Scales};
use std::arch::x86_64::*;

/// [`panel_avx2`] with sixteen rows per register: per position, 16 bytes widen to
/// sixteen lanes whose low and high nibbles are rows 0..16 and 16..32. Two positions at a
/// time, in separate accumulators, to keep both FMA units fed.
///
/// # Safety
/// The CPU has AVX-512F; `panel` holds `x.len() / 32` blocks, `rows` 32 floats.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn panel_avx512(panel: &[u8], placement: Scales, x: &[f32], block_sums: &[f32], rows: &mut [f32]) {
    assert!(panel.len() == x.len() / BLOCK * PANEL_BLOCK_BYTES && rows.len() == PANEL_ROWS);
    let low = _mm512_set1_epi32(0x0f);
    let (mut out_lo, mut out_hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    for ((bytes, xs), &block_sum) in panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.chunks_exact(BLOCK)).zip(block_sums) {
        let (scales, nibbles) = placement.split(bytes);
        let mut acc = [_mm512_setzero_ps(); 4];
        for (pair, xs) in nibbles.chunks_exact(32).zip(xs.chunks_exact(2)) {
            // SAFETY: `pair` is 32 bytes long.
            let (v0, v1) = unsafe {
                (
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(pair.as_ptr() as *const __m128i)),
                    _mm512_cvtepu8_epi32(_mm_loadu_si128(pair.as_ptr().add(16) as *const __m128i)),
                )
            };
            let (x0, x1) = (_mm512_set1_ps(xs[0]), _mm512_set1_ps(xs[1]));
            acc[0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v0, low)), x0, acc[0]);
            acc[1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(v0)), x0, acc[1]);
            acc[2] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_and_si512(v1, low)), x1, acc[2]);
            acc[3] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(v1)), x1, acc[3]);
        }
        let offset = _mm512_set1_ps(8.0 * block_sum);
        // SAFETY: `scales` is 64 bytes long: 32 f16.
        let (scale_lo, scale_hi) = unsafe {
            (
                _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr() as *const __m256i)),
                _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(32) as *const __m256i)),
            )
        };
        let lo = _mm512_sub_ps(_mm512_add_ps(acc[0], acc[2]), offset);
        let hi = _mm512_sub_ps(_mm512_add_ps(acc[1], acc[3]), offset);
        out_lo = _mm512_fmadd_ps(lo, scale_lo, out_lo);
        out_hi = _mm512_fmadd_ps(hi, scale_hi, out_hi);
    }
    // SAFETY: `rows` is 32 floats long.
    unsafe {
        _mm512_storeu_ps(rows.as_mut_ptr(), out_lo);
        _mm512_storeu_ps(rows.as_mut_ptr().add(16), out_hi);
    }
}

/// [`panel_avx512`] for `n` columns (`block_sums`: n rows of k / 32, `rows`: n rows of 32
/// outputs): each block of the panel is unpacked once, to 32 positions of 32 floats, and
/// then meets the columns eight at a time.
///
/// # Safety
/// The CPU has AVX-512F; the slices have the sizes above.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn panel_columns_avx512(
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
    let low = _mm512_set1_epi32(0x0f);
    // The outputs change once per block: they live in `rows`, a tile's sums in registers.
    rows.fill(0.0);
    let mut weights = [_mm512_setzero_ps(); 2 * BLOCK];
    for (blk, bytes) in panel.chunks_exact(PANEL_BLOCK_BYTES).enumerate() {
        let (scales, nibbles) = placement.split(bytes);
        for (pos, bytes) in nibbles.chunks_exact(16).enumerate() {
            // SAFETY: `bytes` is 16 bytes long.
            let v = _mm512_cvtepu8_epi32(unsafe { _mm_loadu_si128(bytes.as_ptr() as *const __m128i) });
            weights[2 * pos] = _mm512_cvtepi32_ps(_mm512_and_si512(v, low));
            weights[2 * pos + 1] = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(v));
        }
        // SAFETY: `scales` is 64 bytes long: 32 f16.
        let scales = unsafe {
            [
                _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr() as *const __m256i)),
                _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(32) as *const __m256i)),
            ]
        };
        // Tiles of up to eight columns that lie side by side, in one of tract's panels.
        let block = Block { weights: &weights, scales, columns, block_sums, blk };
        for panel_first in (0..n).step_by(columns.r) {
            let panel_end = n.min(panel_first + columns.r);
            let mut t = panel_first;
            while t < panel_end {
                let tile = (panel_end - t).min(8);
                let rows = &mut rows[t * PANEL_ROWS..(t + tile) * PANEL_ROWS];
                match tile {
                    8 => block.tile::<8>(t, rows),
                    7 => block.tile::<7>(t, rows),
                    6 => block.tile::<6>(t, rows),
                    5 => block.tile::<5>(t, rows),
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
    weights: &'a [__m512; 2 * BLOCK],
    scales: [__m512; 2],
    columns: &'a Columns<'a>,
    block_sums: &'a [f32],
    blk: usize,
}

impl Block<'_> {
    /// Columns `first..first + T`, side by side in one of tract's panels, times the block,
    /// added to their `rows` (T rows of 32).
    #[target_feature(enable = "avx512f")]
    fn tile<const T: usize>(&self, first: usize, rows: &mut [f32]) {
        let columns = self.columns;
        let (step, blocks) = (columns.r, columns.k / BLOCK);
        assert!(first % step + T <= step);
        // The tile's values of this block: position `pos` of column `first + t` at `pos * step + t`.
        let x = &columns.data[columns.start(first) + self.blk * BLOCK * step..][..(BLOCK - 1) * step + T];
        let mut acc = [[_mm512_setzero_ps(); 2]; T];
        for (pos, w) in self.weights.chunks_exact(2).enumerate() {
            // SAFETY: pos < 32 and t < T, so `pos * step + t` is inside `x`.
            let x = unsafe { x.as_ptr().add(pos * step) };
            for (t, acc) in acc.iter_mut().enumerate() {
                // SAFETY: t < T, so `pos * step + t` is inside the tile's values (as above).
                let xv = _mm512_set1_ps(unsafe { *x.add(t) });
                acc[0] = _mm512_fmadd_ps(w[0], xv, acc[0]);
                acc[1] = _mm512_fmadd_ps(w[1], xv, acc[1]);
            }
        }
        for (t, row) in rows.chunks_exact_mut(PANEL_ROWS).enumerate() {
            let offset = _mm512_set1_ps(8.0 * self.block_sums[(first + t) * blocks + self.blk]);
            for (half, row) in row.chunks_exact_mut(16).enumerate() {
                // SAFETY: `row` is 16 floats long.
                unsafe {
                    let sum = _mm512_loadu_ps(row.as_ptr());
                    let scaled = _mm512_fmadd_ps(_mm512_sub_ps(acc[t][half], offset), self.scales[half], sum);
                    _mm512_storeu_ps(row.as_mut_ptr(), scaled);
                }
            }
        }
    }
}

/// [`super::reference::panel`] with eight rows per register: per position, 16 bytes become
/// 32 floats that meet the broadcast activation in four FMAs.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `panel` holds `x.len() / 32` blocks, `rows` 32 floats.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn panel_avx2(panel: &[u8], placement: Scales, x: &[f32], block_sums: &[f32], rows: &mut [f32]) {
    assert!(panel.len() == x.len() / BLOCK * PANEL_BLOCK_BYTES && rows.len() == PANEL_ROWS);
    let low = _mm256_set1_epi32(0x0f);
    let mut out = [_mm256_setzero_ps(); 4];
    for ((bytes, xs), &block_sum) in panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.chunks_exact(BLOCK)).zip(block_sums) {
        let (scales, nibbles) = placement.split(bytes);
        let mut acc = [_mm256_setzero_ps(); 4];
        for (pos, xv) in nibbles.chunks_exact(16).zip(xs) {
            // Bytes 0..8 hold rows 0..8 (low nibbles) and 16..24 (high), bytes 8..16 the rest;
            // widened from memory, so that only the widening uses the shuffle port.
            // SAFETY: `pos` is 16 bytes long.
            let (a, b) = unsafe {
                (
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(pos.as_ptr() as *const __m128i)),
                    _mm256_cvtepu8_epi32(_mm_loadl_epi64(pos.as_ptr().add(8) as *const __m128i)),
                )
            };
            let xv = _mm256_set1_ps(*xv);
            let w0 = _mm256_cvtepi32_ps(_mm256_and_si256(a, low));
            let w1 = _mm256_cvtepi32_ps(_mm256_and_si256(b, low));
            let w2 = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(a));
            let w3 = _mm256_cvtepi32_ps(_mm256_srli_epi32::<4>(b));
            acc[0] = _mm256_fmadd_ps(w0, xv, acc[0]);
            acc[1] = _mm256_fmadd_ps(w1, xv, acc[1]);
            acc[2] = _mm256_fmadd_ps(w2, xv, acc[2]);
            acc[3] = _mm256_fmadd_ps(w3, xv, acc[3]);
        }
        let offset = _mm256_set1_ps(8.0 * block_sum);
        for ((acc, out), scales) in acc.iter().zip(out.iter_mut()).zip(scales.chunks_exact(16)) {
            // SAFETY: `scales` is 16 bytes long: eight f16.
            let scale = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(scales.as_ptr() as *const __m128i) });
            *out = _mm256_fmadd_ps(_mm256_sub_ps(*acc, offset), scale, *out);
        }
    }
    for (out, rows) in out.iter().zip(rows.chunks_exact_mut(8)) {
        // SAFETY: `rows` is 8 floats long.
        unsafe { _mm256_storeu_ps(rows.as_mut_ptr(), *out) };
    }
}
