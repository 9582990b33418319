//! x86_64 kernels of the 4-bit panel product: on activations rounded to 16 bits, AVX2 and
//! AVX-512 VNNI (one column or several); in f32, AVX2 (one column) and AVX-512 (one or
//! several).

use super::{BLOCK, Columns, PANEL_BLOCK_BYTES, PANEL_ROWS, Quantized, QuantizedColumn, Scales};
use std::arch::x86_64::*;

/// Asks for the block `ahead` bytes past `bytes` ([`super::weight_prefetch_ahead`]): a
/// block's nine lines, well before the hardware's own prefetcher would fetch them.
#[inline(always)]
fn prefetch_block(bytes: &[u8], ahead: usize) {
    if ahead == 0 {
        return;
    }
    let base = bytes.as_ptr().wrapping_add(ahead);
    for line in 0..PANEL_BLOCK_BYTES.div_ceil(64) {
        // SAFETY: a prefetch is a hint: it never faults, whatever the address, and an address
        // past the panel's end is never read.
        unsafe { _mm_prefetch::<_MM_HINT_T0>(base.wrapping_add(64 * line) as *const i8) };
    }
}

/// `$block.tile::<W>($first, $rows)` for the tile's width `$width` (1 to 8): a kernel compiled
/// for each width keeps its accumulators in registers.
macro_rules! tile_of_width {
    ($width:expr, $block:expr, $first:expr, $rows:expr) => {
        match $width {
            8 => $block.tile::<8>($first, $rows),
            7 => $block.tile::<7>($first, $rows),
            6 => $block.tile::<6>($first, $rows),
            5 => $block.tile::<5>($first, $rows),
            4 => $block.tile::<4>($first, $rows),
            3 => $block.tile::<3>($first, $rows),
            2 => $block.tile::<2>($first, $rows),
            _ => $block.tile::<1>($first, $rows),
        }
    };
}

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
    let ahead = super::weight_prefetch_ahead();
    for ((bytes, xs), &block_sum) in panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.chunks_exact(BLOCK)).zip(block_sums) {
        prefetch_block(bytes, ahead);
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
    let ahead = super::weight_prefetch_ahead();
    for (blk, bytes) in panel.chunks_exact(PANEL_BLOCK_BYTES).enumerate() {
        prefetch_block(bytes, ahead);
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
                tile_of_width!(tile, block, t, rows);
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
    let ahead = super::weight_prefetch_ahead();
    for ((bytes, xs), &block_sum) in panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.chunks_exact(BLOCK)).zip(block_sums) {
        prefetch_block(bytes, ahead);
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

/// Byte indices for `_mm512_maskz_permutexvar_epi8` that turn 64 bytes of nibbles (positions
/// `4g..4g + 4`, 16 bytes each) into sixteen 32-bit lanes, lane j holding row j's byte of two
/// positions as two 16-bit words (the odd bytes are zeroed by [`WORD_MASK`]): `first` the
/// positions 0 and 1 of the four, else 2 and 3.
fn pair_index(first: bool) -> __m512i {
    let base = if first { 0 } else { 32 };
    let mut index = [0i8; 64];
    for j in 0..16 {
        index[4 * j] = (base + j) as i8;
        index[4 * j + 2] = (base + 16 + j) as i8;
    }
    // SAFETY: `index` is 64 bytes long.
    unsafe { _mm512_loadu_si512(index.as_ptr() as *const __m512i) }
}

/// Keeps the even bytes of each 32-bit lane: the low byte of each 16-bit word.
const WORD_MASK: __mmask64 = 0x5555_5555_5555_5555;

/// [`super::reference::panel_i16`] with `vpdpwssd`: per two positions, sixteen rows' bytes
/// become sixteen lanes of two 16-bit words (one permute), whose low and high nibbles (rows
/// j and j + 16) meet the pair of activations in one instruction each, 32 multiply-adds.
///
/// # Safety
/// The CPU has AVX-512F, BW, VNNI and VBMI; `panel` holds `x.len() / 32` blocks, `rows` 32
/// floats, `x_scales` and `x_sums` one value per block.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub(super) unsafe fn panel_vnni(panel: &[u8], placement: Scales, x: QuantizedColumn, rows: &mut [f32]) {
    assert!(panel.len() == x.values.len() / BLOCK * PANEL_BLOCK_BYTES && rows.len() == PANEL_ROWS);
    assert!(x.scales.len() == x.values.len() / BLOCK && x.sums.len() == x.scales.len());
    let (first, second) = (pair_index(true), pair_index(false));
    let low = _mm512_set1_epi16(0x0f);
    let (mut out_lo, mut out_hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
    let ahead = super::weight_prefetch_ahead();
    for (blk, bytes) in panel.chunks_exact(PANEL_BLOCK_BYTES).enumerate() {
        prefetch_block(bytes, ahead);
        let (scales, nibbles) = placement.split(bytes);
        let xs = &x.values[blk * BLOCK..][..BLOCK];
        // Rows 0..16 and 16..32, for the first and second pair of each four positions: four
        // chains, so that the adds' latency hides behind the other chains' work.
        let mut acc = [_mm512_setzero_si512(); 4];
        for (four, xs) in nibbles.chunks_exact(64).zip(xs.chunks_exact(4)) {
            // SAFETY: `four` is 64 bytes long, `xs` four 16-bit values (two pairs).
            let (v, x01, x23) = unsafe {
                (
                    _mm512_loadu_si512(four.as_ptr() as *const __m512i),
                    _mm512_set1_epi32((xs.as_ptr() as *const i32).read_unaligned()),
                    _mm512_set1_epi32((xs.as_ptr().add(2) as *const i32).read_unaligned()),
                )
            };
            let w01 = _mm512_maskz_permutexvar_epi8(WORD_MASK, first, v);
            let w23 = _mm512_maskz_permutexvar_epi8(WORD_MASK, second, v);
            acc[0] = _mm512_dpwssd_epi32(acc[0], _mm512_and_si512(w01, low), x01);
            acc[1] = _mm512_dpwssd_epi32(acc[1], _mm512_srli_epi16::<4>(w01), x01);
            acc[2] = _mm512_dpwssd_epi32(acc[2], _mm512_and_si512(w23, low), x23);
            acc[3] = _mm512_dpwssd_epi32(acc[3], _mm512_srli_epi16::<4>(w23), x23);
        }
        // sum(nibble * q) - 8 * sum(q), exact in 32 bits, then the two scales.
        let offset = _mm512_set1_epi32(8 * x.sums[blk]);
        let lo = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(acc[0], acc[2]), offset));
        let hi = _mm512_cvtepi32_ps(_mm512_sub_epi32(_mm512_add_epi32(acc[1], acc[3]), offset));
        let x_scale = _mm512_set1_ps(x.scales[blk]);
        // SAFETY: `scales` is 64 bytes long: 32 f16.
        let (scale_lo, scale_hi) = unsafe {
            (
                _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr() as *const __m256i)),
                _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(32) as *const __m256i)),
            )
        };
        out_lo = _mm512_fmadd_ps(lo, _mm512_mul_ps(scale_lo, x_scale), out_lo);
        out_hi = _mm512_fmadd_ps(hi, _mm512_mul_ps(scale_hi, x_scale), out_hi);
    }
    // SAFETY: `rows` is 32 floats long.
    unsafe {
        _mm512_storeu_ps(rows.as_mut_ptr(), out_lo);
        _mm512_storeu_ps(rows.as_mut_ptr().add(16), out_hi);
    }
}

/// [`panel_vnni`] for `n` quantized columns (`x`: n rows of k, `rows`: n rows of 32 outputs):
/// each block of the panel is unpacked once to 16 pairs of positions (rows 0..16 and
/// 16..32) as signed 16-bit nibbles, so no column sum is subtracted afterwards, then meets
/// the columns a tile of [`Quantized`] at a time (up to eight), each pair of a column
/// broadcast from memory.
///
/// # Safety
/// As [`panel_vnni`]; `x` holds n columns of the panel's k.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
pub(super) unsafe fn panel_columns_vnni(panel: &[u8], placement: Scales, x: &Quantized, rows: &mut [f32]) {
    let (n, k) = (x.n, x.k);
    let blocks = k / BLOCK;
    assert!(x.values.len() == n * k && panel.len() == blocks * PANEL_BLOCK_BYTES && rows.len() == n * PANEL_ROWS);
    assert!(x.scales.len() == n * blocks && (1..=8).contains(&x.tile));
    let (first, second) = (pair_index(true), pair_index(false));
    let low = _mm512_set1_epi16(0x0f);
    let eight = _mm512_set1_epi16(8);
    rows.fill(0.0);
    let mut weights = [_mm512_setzero_si512(); BLOCK];
    let ahead = super::weight_prefetch_ahead();
    for (blk, bytes) in panel.chunks_exact(PANEL_BLOCK_BYTES).enumerate() {
        prefetch_block(bytes, ahead);
        let (scales, nibbles) = placement.split(bytes);
        for (g, four) in nibbles.chunks_exact(64).enumerate() {
            // SAFETY: `four` is 64 bytes long.
            let v = unsafe { _mm512_loadu_si512(four.as_ptr() as *const __m512i) };
            let w01 = _mm512_maskz_permutexvar_epi8(WORD_MASK, first, v);
            let w23 = _mm512_maskz_permutexvar_epi8(WORD_MASK, second, v);
            // Signed nibbles (q - 8): the columns' sums leave the product.
            weights[4 * g] = _mm512_sub_epi16(_mm512_and_si512(w01, low), eight);
            weights[4 * g + 1] = _mm512_sub_epi16(_mm512_srli_epi16::<4>(w01), eight);
            weights[4 * g + 2] = _mm512_sub_epi16(_mm512_and_si512(w23, low), eight);
            weights[4 * g + 3] = _mm512_sub_epi16(_mm512_srli_epi16::<4>(w23), eight);
        }
        // SAFETY: `scales` is 64 bytes long: 32 f16.
        let scales = unsafe {
            [
                _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr() as *const __m256i)),
                _mm512_cvtph_ps(_mm256_loadu_si256(scales.as_ptr().add(32) as *const __m256i)),
            ]
        };
        let block = QuantizedBlock { weights: &weights, scales, x, blk };
        let mut t = 0;
        while t < n {
            let tile = (n - t).min(x.tile);
            let rows = &mut rows[t * PANEL_ROWS..(t + tile) * PANEL_ROWS];
            tile_of_width!(tile, block, t, rows);
            t += tile;
        }
    }
}

/// One unpacked block of a panel, as 16-bit pairs, and the quantized columns.
struct QuantizedBlock<'a> {
    /// Per pair of positions: rows 0..16, rows 16..32.
    weights: &'a [__m512i; BLOCK],
    scales: [__m512; 2],
    x: &'a Quantized,
    blk: usize,
}

impl QuantizedBlock<'_> {
    /// Columns `first..first + T` (a tile of [`Quantized`]) times the block, added to their
    /// `rows` (T rows of 32).
    #[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx512vbmi")]
    fn tile<const T: usize>(&self, first: usize, rows: &mut [f32]) {
        let (k, blocks) = (self.x.k, self.x.k / BLOCK);
        assert!(first + T <= self.x.n && rows.len() == T * PANEL_ROWS);
        let mut acc = [[_mm512_setzero_si512(); 2]; T];
        // The tile's pairs for this block: per pair of positions, T columns side by side.
        let pairs = &self.x.values[first * k + self.blk * BLOCK * T..][..BLOCK * T];
        let base = pairs.as_ptr() as *const i32;
        for (pair, w) in self.weights.chunks_exact(2).enumerate() {
            for (t, acc) in acc.iter_mut().enumerate() {
                // SAFETY: pair `pair` of column `t` is inside `pairs` (BLOCK / 2 * T of them).
                let xv = _mm512_set1_epi32(unsafe { base.add(pair * T + t).read_unaligned() });
                acc[0] = _mm512_dpwssd_epi32(acc[0], w[0], xv);
                acc[1] = _mm512_dpwssd_epi32(acc[1], w[1], xv);
            }
        }
        let scales = &self.x.scales[first * blocks + self.blk * T..][..T];
        for ((row, acc), x_scale) in rows.chunks_exact_mut(PANEL_ROWS).zip(&acc).zip(scales) {
            let x_scale = _mm512_set1_ps(*x_scale);
            for (half, row) in row.chunks_exact_mut(16).enumerate() {
                let products = _mm512_cvtepi32_ps(acc[half]);
                // SAFETY: `row` is 16 floats long.
                unsafe {
                    let sum = _mm512_loadu_ps(row.as_ptr());
                    let scale = _mm512_mul_ps(self.scales[half], x_scale);
                    _mm512_storeu_ps(row.as_mut_ptr(), _mm512_fmadd_ps(products, scale, sum));
                }
            }
        }
    }
}

/// [`Quantized::new`] for columns packed by tract in panels of `2 <= r <= 8` (per position,
/// the panel's `r` values side by side; one to a panel is [`quantize_rows`]'s), into tiles
/// of the same `r` columns: each pair of
/// positions is one register of `2 r` floats, rounded with its columns' inverse scales and
/// interleaved into `r` pairs of 16-bit values. The same arithmetic as [`super::round_block`]
/// (`cvtps` rounds to nearest even, as its magic number does), so the same values and sums.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn quantize_packed(columns: &Columns, x: &mut Quantized) {
    let (n, k, r, blocks) = (columns.n, columns.k, columns.r, columns.k / BLOCK);
    assert!((2..=8).contains(&r) && x.tile == r && x.n == n && x.k == k);
    assert!(x.values.len() == n * k && x.scales.len() == n * blocks);
    assert!(columns.panel_floats >= k * r && columns.data.len() >= n.div_ceil(r) * columns.panel_floats);
    let lanes = ((1u32 << (2 * r)) - 1) as __mmask16;
    let index = |f: &dyn Fn(usize) -> usize| {
        let mut index = [0i32; 16];
        for (l, i) in index.iter_mut().enumerate() {
            *i = f(l).min(15) as i32;
        }
        // SAFETY: 16 i32 are 64 bytes.
        unsafe { _mm512_loadu_si512(index.as_ptr() as *const __m512i) }
    };
    // Lane l of a pair: position l / r of the two, column l % r.
    let column_of = index(&|l| l % r);
    // Lanes r..2r onto 0..r.
    let second_row = index(&|l| l + r);
    // Output lane 2c + h takes the input lane of position h, column c.
    let interleave = index(&|l| (l % 2) * r + l / 2);
    let (zero, most) = (_mm512_setzero_ps(), _mm512_set1_ps(f32::MAX));
    let (top, nan) = (_mm512_set1_ps(32767.0), _mm512_set1_ps(f32::NAN));
    for panel in 0..n.div_ceil(r) {
        let first = panel * r;
        let width = (n - first).min(r);
        let source = &columns.data[panel * columns.panel_floats..][..k * r];
        for (blk, rows) in source.chunks_exact(BLOCK * r).enumerate() {
            let mut largest = zero;
            let mut unordered: __mmask16 = 0;
            for pair in rows.chunks_exact(2 * r) {
                // SAFETY: the mask reads the pair's 2r floats.
                let v = unsafe { _mm512_maskz_loadu_ps(lanes, pair.as_ptr()) };
                unordered |= _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(v, v);
                largest = _mm512_max_ps(largest, _mm512_abs_ps(v));
            }
            largest = _mm512_max_ps(largest, _mm512_permutexvar_ps(second_row, largest));
            let unordered = (unordered | unordered >> r) & ((1 << r) - 1);
            let finite = _mm512_cmp_ps_mask::<_CMP_LE_OQ>(largest, most) & !unordered;
            let usable = finite & _mm512_cmp_ps_mask::<_CMP_GT_OQ>(largest, zero);
            // An infinite or NaN value gives a NaN scale (NaN products), a block of zeros 0.
            let scales = _mm512_mask_blend_ps(finite, nan, _mm512_div_ps(largest, top));
            let at = &mut x.scales[first * blocks + blk * width..][..width];
            // SAFETY: the mask stores `width` floats, the length of `at`.
            unsafe { _mm512_mask_storeu_ps(at.as_mut_ptr(), (1 << width) - 1, scales) };
            let inverse = _mm512_permutexvar_ps(column_of, _mm512_maskz_div_ps(usable, top, largest));
            let usable = (0..2 * r).filter(|l| usable >> (l % r) & 1 == 1).fold(0, |m, l| m | 1 << l);
            let mut sums = _mm512_setzero_si512();
            for (pair, two) in rows.chunks_exact(2 * r).enumerate() {
                // SAFETY: the mask reads the pair's 2r floats.
                let v = unsafe { _mm512_maskz_loadu_ps(lanes, two.as_ptr()) };
                let q = _mm512_maskz_cvtps_epi32(usable, _mm512_mul_ps(v, inverse));
                sums = _mm512_add_epi32(sums, q);
                let q = _mm512_permutexvar_epi32(interleave, q);
                let at = &mut x.values[first * k + blk * BLOCK * width + pair * 2 * width..][..2 * width];
                // SAFETY: the mask stores `2 width` 16-bit values, the length of `at`.
                unsafe { _mm512_mask_cvtepi32_storeu_epi16(at.as_mut_ptr(), ((1u32 << (2 * width)) - 1) as u16, q) };
            }
            let sums = _mm512_add_epi32(sums, _mm512_permutexvar_epi32(second_row, sums));
            let at = &mut x.sums[first * blocks + blk * width..][..width];
            // SAFETY: the mask stores `width` i32, the length of `at`.
            unsafe { _mm512_mask_storeu_epi32(at.as_mut_ptr(), (1 << width) - 1, sums) };
        }
    }
}

/// [`quantize_packed`] for columns one to a panel (a decode step's one token): a block is two
/// registers, rounded with one scale and narrowed to 16 bits.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn quantize_rows(columns: &Columns, x: &mut Quantized) {
    let (n, k, blocks) = (columns.n, columns.k, columns.k / BLOCK);
    assert!(columns.r == 1 && x.tile == 1 && x.n == n && x.k == k);
    assert!(x.values.len() == n * k && x.scales.len() == n * blocks && x.sums.len() == n * blocks);
    assert!(columns.panel_floats >= k && columns.data.len() >= (n - 1) * columns.panel_floats + k);
    for t in 0..n {
        let column = &columns.data[t * columns.panel_floats..][..k];
        for (blk, block) in column.chunks_exact(BLOCK).enumerate() {
            // SAFETY: `block` is 32 floats long.
            let (a, b) = unsafe { (_mm512_loadu_ps(block.as_ptr()), _mm512_loadu_ps(block.as_ptr().add(16))) };
            let unordered = _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(a, a) | _mm512_cmp_ps_mask::<_CMP_UNORD_Q>(b, b);
            let largest = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(b)));
            let at = t * blocks + blk;
            let values = &mut x.values[t * k + blk * BLOCK..][..BLOCK];
            if unordered != 0 || !largest.is_finite() || largest == 0.0 {
                // As [`super::round_block`]: NaN products from a NaN or infinite value.
                values.fill(0);
                (x.scales[at], x.sums[at]) = (if unordered == 0 && largest == 0.0 { 0.0 } else { f32::NAN }, 0);
                continue;
            }
            let inverse = _mm512_set1_ps(32767.0 / largest);
            let qa = _mm512_cvtps_epi32(_mm512_mul_ps(a, inverse));
            let qb = _mm512_cvtps_epi32(_mm512_mul_ps(b, inverse));
            // SAFETY: `values` is 32 16-bit values: 16 from each register.
            unsafe {
                _mm256_storeu_si256(values.as_mut_ptr() as *mut __m256i, _mm512_cvtepi32_epi16(qa));
                _mm256_storeu_si256(values.as_mut_ptr().add(16) as *mut __m256i, _mm512_cvtepi32_epi16(qb));
            }
            (x.scales[at], x.sums[at]) = (largest / 32767.0, _mm512_reduce_add_epi32(_mm512_add_epi32(qa, qb)));
        }
    }
}

/// [`super::reference::panel_i16`] with AVX2's `vpmaddwd`: per two positions, each 16 bytes
/// widen to 16-bit words and interleave into lanes of two words (one row, both positions),
/// whose low and high nibbles meet the pair of activations, 16 multiply-adds an instruction.
/// The interleave takes rows 0..4 and 8..12 into one register, 4..8 and 12..16 into the
/// other; the block's sums are put back in row order before they are scaled.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; the sizes are those of [`panel_vnni`].
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn panel_avx2_i16(panel: &[u8], placement: Scales, x: QuantizedColumn, rows: &mut [f32]) {
    assert!(panel.len() == x.values.len() / BLOCK * PANEL_BLOCK_BYTES && rows.len() == PANEL_ROWS);
    assert!(x.scales.len() == x.values.len() / BLOCK && x.sums.len() == x.scales.len());
    let low = _mm256_set1_epi16(0x0f);
    let mut out = [_mm256_setzero_ps(); 4];
    let ahead = super::weight_prefetch_ahead();
    for (blk, bytes) in panel.chunks_exact(PANEL_BLOCK_BYTES).enumerate() {
        prefetch_block(bytes, ahead);
        let (scales, nibbles) = placement.split(bytes);
        let xs = &x.values[blk * BLOCK..][..BLOCK];
        // Rows (0..4, 8..12), (4..8, 12..16), and the same plus 16.
        let mut acc = [_mm256_setzero_si256(); 4];
        for (pair, xs) in nibbles.chunks_exact(32).zip(xs.chunks_exact(2)) {
            // SAFETY: `pair` is 32 bytes long, `xs` two 16-bit values.
            let (a, b, xv) = unsafe {
                (
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(pair.as_ptr() as *const __m128i)),
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(pair.as_ptr().add(16) as *const __m128i)),
                    _mm256_set1_epi32((xs.as_ptr() as *const i32).read_unaligned()),
                )
            };
            let (first, second) = (_mm256_unpacklo_epi16(a, b), _mm256_unpackhi_epi16(a, b));
            let products = [
                _mm256_madd_epi16(_mm256_and_si256(first, low), xv),
                _mm256_madd_epi16(_mm256_and_si256(second, low), xv),
                _mm256_madd_epi16(_mm256_srli_epi16::<4>(first), xv),
                _mm256_madd_epi16(_mm256_srli_epi16::<4>(second), xv),
            ];
            for (acc, p) in acc.iter_mut().zip(products) {
                *acc = _mm256_add_epi32(*acc, p);
            }
        }
        let offset = _mm256_set1_epi32(8 * x.sums[blk]);
        let x_scale = _mm256_set1_ps(x.scales[blk]);
        // Rows 0..8, 8..16, 16..24, 24..32.
        let in_order = [
            _mm256_permute2x128_si256::<0x20>(acc[0], acc[1]),
            _mm256_permute2x128_si256::<0x31>(acc[0], acc[1]),
            _mm256_permute2x128_si256::<0x20>(acc[2], acc[3]),
            _mm256_permute2x128_si256::<0x31>(acc[2], acc[3]),
        ];
        for ((sums, out), scales) in in_order.iter().zip(out.iter_mut()).zip(scales.chunks_exact(16)) {
            // SAFETY: `scales` is 16 bytes long: eight f16.
            let scale = _mm256_cvtph_ps(unsafe { _mm_loadu_si128(scales.as_ptr() as *const __m128i) });
            let products = _mm256_cvtepi32_ps(_mm256_sub_epi32(*sums, offset));
            *out = _mm256_fmadd_ps(products, _mm256_mul_ps(scale, x_scale), *out);
        }
    }
    for (out, rows) in out.iter().zip(rows.chunks_exact_mut(8)) {
        // SAFETY: `rows` is 8 floats long.
        unsafe { _mm256_storeu_ps(rows.as_mut_ptr(), *out) };
    }
}

/// [`panel_avx2_i16`] for `n` quantized columns (`x`: n rows of k in tiles, `rows`: n rows of
/// 32 outputs): each block of the panel is unpacked once, per pair of positions to four
/// registers of rows 0..8, 8..16, 16..24 and 24..32 (lanes of two 16-bit nibbles, one row,
/// both positions), which then meet the columns two at a time (eight accumulators and the
/// pair's four weight registers of sixteen; three at a time spilled and ran 10-20% slower on
/// an AMD EPYC Zen 3), each pair of a column broadcast from memory. The same integer sums and
/// the same rounding of their scaling as [`panel_columns_vnni`], so the same outputs.
///
/// # Safety
/// As [`panel_avx2_i16`]; `x` holds n columns of the panel's k.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn panel_columns_avx2_i16(panel: &[u8], placement: Scales, x: &Quantized, rows: &mut [f32]) {
    let (n, k) = (x.n, x.k);
    let blocks = k / BLOCK;
    assert!(x.values.len() == n * k && panel.len() == blocks * PANEL_BLOCK_BYTES && rows.len() == n * PANEL_ROWS);
    assert!(x.scales.len() == n * blocks && x.sums.len() == n * blocks && x.tile >= 1);
    let low = _mm256_set1_epi16(0x0f);
    rows.fill(0.0);
    let mut weights = [_mm256_setzero_si256(); 4 * BLOCK / 2];
    let ahead = super::weight_prefetch_ahead();
    for (blk, bytes) in panel.chunks_exact(PANEL_BLOCK_BYTES).enumerate() {
        prefetch_block(bytes, ahead);
        let (scales, nibbles) = placement.split(bytes);
        for (w, pair) in weights.chunks_exact_mut(4).zip(nibbles.chunks_exact(32)) {
            // SAFETY: `pair` is 32 bytes long: two positions of 16.
            let (a, b) = unsafe {
                (
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(pair.as_ptr() as *const __m128i)),
                    _mm256_cvtepu8_epi16(_mm_loadu_si128(pair.as_ptr().add(16) as *const __m128i)),
                )
            };
            // Lanes of rows (0..4, 8..12) and (4..8, 12..16), then in order.
            let (lo, hi) = (_mm256_unpacklo_epi16(a, b), _mm256_unpackhi_epi16(a, b));
            let (first, second) =
                (_mm256_permute2x128_si256::<0x20>(lo, hi), _mm256_permute2x128_si256::<0x31>(lo, hi));
            w[0] = _mm256_and_si256(first, low);
            w[1] = _mm256_and_si256(second, low);
            w[2] = _mm256_srli_epi16::<4>(first);
            w[3] = _mm256_srli_epi16::<4>(second);
        }
        // SAFETY: `scales` is 64 bytes long: 32 f16, eight per register.
        let scales = unsafe {
            [0, 16, 32, 48].map(|at| _mm256_cvtph_ps(_mm_loadu_si128(scales.as_ptr().add(at) as *const __m128i)))
        };
        let block = PairedBlock { weights: &weights, scales, x, blk };
        let mut tile_first = 0;
        while tile_first < n {
            let width = (n - tile_first).min(x.tile);
            let mut at = 0;
            while at < width {
                let columns = (width - at).min(2);
                let rows = &mut rows[(tile_first + at) * PANEL_ROWS..(tile_first + at + columns) * PANEL_ROWS];
                match columns {
                    2 => block.columns::<2>(tile_first, width, at, rows),
                    _ => block.columns::<1>(tile_first, width, at, rows),
                }
                at += columns;
            }
            tile_first += width;
        }
    }
}

/// One unpacked block of a panel for AVX2, and the quantized columns.
struct PairedBlock<'a> {
    /// Per pair of positions: rows 0..8, 8..16, 16..24, 24..32 (unsigned nibbles).
    weights: &'a [__m256i; 4 * BLOCK / 2],
    /// The rows' scales, eight per register.
    scales: [__m256; 4],
    x: &'a Quantized,
    blk: usize,
}

impl PairedBlock<'_> {
    /// Columns `at..at + C` of the tile of `width` columns from `first`, times the block,
    /// added to their `rows` (C rows of 32).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn columns<const C: usize>(&self, first: usize, width: usize, at: usize, rows: &mut [f32]) {
        let (k, blocks) = (self.x.k, self.x.k / BLOCK);
        assert!(at + C <= width && first + width <= self.x.n && rows.len() == C * PANEL_ROWS);
        let mut acc = [[_mm256_setzero_si256(); 4]; C];
        // The tile's pairs for this block: per pair of positions, `width` columns side by side.
        let pairs = &self.x.values[first * k + self.blk * BLOCK * width..][..BLOCK * width];
        let base = pairs.as_ptr() as *const i32;
        for (pair, w) in self.weights.chunks_exact(4).enumerate() {
            for (c, acc) in acc.iter_mut().enumerate() {
                // SAFETY: pair `pair` of column `at + c` is inside `pairs` (BLOCK / 2 * width).
                let xv = _mm256_set1_epi32(unsafe { base.add(pair * width + at + c).read_unaligned() });
                for (acc, w) in acc.iter_mut().zip(w) {
                    *acc = _mm256_add_epi32(*acc, _mm256_madd_epi16(*w, xv));
                }
            }
        }
        let at_block = first * blocks + self.blk * width + at;
        let (x_scales, x_sums) = (&self.x.scales[at_block..][..C], &self.x.sums[at_block..][..C]);
        for (((row, acc), x_scale), x_sum) in rows.chunks_exact_mut(PANEL_ROWS).zip(&acc).zip(x_scales).zip(x_sums) {
            // The nibbles' offset of 8, as in [`panel_avx2_i16`].
            let (x_scale, offset) = (_mm256_set1_ps(*x_scale), _mm256_set1_epi32(8 * x_sum));
            for ((eight, acc), scale) in row.chunks_exact_mut(8).zip(acc).zip(&self.scales) {
                let products = _mm256_cvtepi32_ps(_mm256_sub_epi32(*acc, offset));
                // SAFETY: `eight` is 8 floats long.
                unsafe {
                    let sum = _mm256_loadu_ps(eight.as_ptr());
                    _mm256_storeu_ps(
                        eight.as_mut_ptr(),
                        _mm256_fmadd_ps(products, _mm256_mul_ps(*scale, x_scale), sum),
                    );
                }
            }
        }
    }
}

/// [`quantize_packed`] for AVX2: columns packed by tract in panels of `1 <= r <= 8`, into
/// tiles of the same `r` columns. A position's `r` values are one register (lane = column),
/// so a column's largest value, inverse scale and sum stay in its lane; each pair of
/// positions is stored as `r` lanes of two 16-bit values. The same arithmetic as
/// [`super::round_block`], so the same values and sums.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_packed_avx2(columns: &Columns, x: &mut Quantized) {
    let (n, k, r, blocks) = (columns.n, columns.k, columns.r, columns.k / BLOCK);
    assert!((1..=8).contains(&r) && x.tile == r && x.n == n && x.k == k);
    assert!(x.values.len() == n * k && x.scales.len() == n * blocks && x.sums.len() == n * blocks);
    assert!(columns.panel_floats >= k * r && columns.data.len() >= (n.div_ceil(r) - 1) * columns.panel_floats + k * r);
    let lanes_of = |count: usize| {
        let mask: [i32; 8] = std::array::from_fn(|l| if l < count { -1 } else { 0 });
        // SAFETY: 8 i32 are 32 bytes.
        unsafe { _mm256_loadu_si256(mask.as_ptr() as *const __m256i) }
    };
    let sign = _mm256_set1_ps(-0.0);
    let (most, top, nan) = (_mm256_set1_ps(f32::MAX), _mm256_set1_ps(32767.0), _mm256_set1_ps(f32::NAN));
    let low_words = _mm256_set1_epi32(0xffff);
    let read = lanes_of(r);
    for panel in 0..n.div_ceil(r) {
        let first = panel * r;
        let width = (n - first).min(r);
        let written = lanes_of(width);
        let source = &columns.data[panel * columns.panel_floats..][..k * r];
        for (blk, positions) in source.chunks_exact(BLOCK * r).enumerate() {
            let load = |p: usize| {
                // SAFETY: p < BLOCK: the mask reads position p's `r` floats, inside `positions`.
                unsafe { _mm256_maskload_ps(positions.as_ptr().add(p * r), read) }
            };
            let (mut largest, mut unordered) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            for p in 0..BLOCK {
                let v = load(p);
                unordered = _mm256_or_ps(unordered, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                largest = _mm256_max_ps(largest, _mm256_andnot_ps(sign, v));
            }
            let finite = _mm256_andnot_ps(unordered, _mm256_cmp_ps::<_CMP_LE_OQ>(largest, most));
            let usable = _mm256_and_ps(finite, _mm256_cmp_ps::<_CMP_GT_OQ>(largest, _mm256_setzero_ps()));
            // An infinite or NaN value gives a NaN scale (NaN products), a block of zeros 0.
            let scales = _mm256_blendv_ps(nan, _mm256_div_ps(largest, top), finite);
            let inverse = _mm256_and_ps(usable, _mm256_div_ps(top, largest));
            let usable = _mm256_castps_si256(usable);
            let mut sums = _mm256_setzero_si256();
            for pair in 0..BLOCK / 2 {
                let q = |p| _mm256_and_si256(usable, _mm256_cvtps_epi32(_mm256_mul_ps(load(p), inverse)));
                let (even, odd) = (q(2 * pair), q(2 * pair + 1));
                sums = _mm256_add_epi32(sums, _mm256_add_epi32(even, odd));
                let words = _mm256_or_si256(_mm256_and_si256(even, low_words), _mm256_slli_epi32::<16>(odd));
                let at = &mut x.values[first * k + blk * BLOCK * width + pair * 2 * width..][..2 * width];
                // SAFETY: the mask stores `width` lanes of two 16-bit values, the length of `at`.
                unsafe { _mm256_maskstore_epi32(at.as_mut_ptr() as *mut i32, written, words) };
            }
            let at = first * blocks + blk * width;
            // SAFETY: the masks store `width` values, inside `scales` and `sums` (n * blocks).
            unsafe {
                _mm256_maskstore_ps(x.scales[at..][..width].as_mut_ptr(), written, scales);
                _mm256_maskstore_epi32(x.sums[at..][..width].as_mut_ptr(), written, sums);
            }
        }
    }
}

/// [`quantize_rows`] for AVX2: a block of a column is four registers, rounded with one scale
/// and narrowed to 16 bits.
///
/// # Safety
/// The CPU has AVX2.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_rows_avx2(columns: &Columns, x: &mut Quantized) {
    let (n, k, blocks) = (columns.n, columns.k, columns.k / BLOCK);
    assert!(columns.r == 1 && x.tile == 1 && x.n == n && x.k == k);
    assert!(x.values.len() == n * k && x.scales.len() == n * blocks && x.sums.len() == n * blocks);
    assert!(columns.panel_floats >= k && columns.data.len() >= (n - 1) * columns.panel_floats + k);
    let sign = _mm256_set1_ps(-0.0);
    for t in 0..n {
        let column = &columns.data[t * columns.panel_floats..][..k];
        for (blk, block) in column.chunks_exact(BLOCK).enumerate() {
            // SAFETY: `block` is 32 floats long: four registers.
            let v: [__m256; 4] = std::array::from_fn(|i| unsafe { _mm256_loadu_ps(block.as_ptr().add(8 * i)) });
            let mut unordered = _mm256_setzero_ps();
            let mut largest = _mm256_setzero_ps();
            for v in v {
                unordered = _mm256_or_ps(unordered, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v));
                largest = _mm256_max_ps(largest, _mm256_andnot_ps(sign, v));
            }
            let mut lanes = [0f32; 8];
            // SAFETY: `lanes` is 8 floats long.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), largest) };
            let largest = lanes.iter().fold(0f32, |m, &v| m.max(v));
            let at = t * blocks + blk;
            let values = &mut x.values[t * k + blk * BLOCK..][..BLOCK];
            if _mm256_movemask_ps(unordered) != 0 || !largest.is_finite() || largest == 0.0 {
                // As [`super::round_block`]: NaN products from a NaN or infinite value.
                values.fill(0);
                let zeros = _mm256_movemask_ps(unordered) == 0 && largest == 0.0;
                (x.scales[at], x.sums[at]) = (if zeros { 0.0 } else { f32::NAN }, 0);
                continue;
            }
            let inverse = _mm256_set1_ps(32767.0 / largest);
            let q = v.map(|v| _mm256_cvtps_epi32(_mm256_mul_ps(v, inverse)));
            // `packs` interleaves the halves of its two registers: put them back in order.
            let order = |a, b| _mm256_permute4x64_epi64::<0b11_01_10_00>(_mm256_packs_epi32(a, b));
            // SAFETY: `values` is 32 16-bit values: 16 from each pair of registers.
            unsafe {
                _mm256_storeu_si256(values.as_mut_ptr() as *mut __m256i, order(q[0], q[1]));
                _mm256_storeu_si256(values.as_mut_ptr().add(16) as *mut __m256i, order(q[2], q[3]));
            }
            let mut sums = [0i32; 8];
            let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
            // SAFETY: `sums` is 8 i32 long.
            unsafe { _mm256_storeu_si256(sums.as_mut_ptr() as *mut __m256i, sum) };
            (x.scales[at], x.sums[at]) = (largest / 32767.0, sums.iter().sum());
        }
    }
}

/// [`super::zero_point_products`] compiled for AVX-512.
///
/// # Safety
/// The CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn zero_point_products_avx512(
    z: &[f32],
    m: usize,
    sums: &[f32],
    blocks: usize,
    out: &mut [f32],
    stride_m: usize,
    stride_n: usize,
) {
    super::zero_point_products(z, m, sums, blocks, out, stride_m, stride_n)
}

/// [`super::zero_point_products`] compiled for AVX2.
///
/// # Safety
/// The CPU has AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn zero_point_products_avx2(
    z: &[f32],
    m: usize,
    sums: &[f32],
    blocks: usize,
    out: &mut [f32],
    stride_m: usize,
    stride_n: usize,
) {
    super::zero_point_products(z, m, sums, blocks, out, stride_m, stride_n)
}
