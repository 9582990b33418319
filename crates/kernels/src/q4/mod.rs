//! The fused 4-bit product over tract's packed Q4_0 panels: `c = W x` for one column (a
//! decode step) or several (a prompt chunk), multiplying as it unpacks.
//!
//! The packed panel (`Q4_0` for 32 rows, nibbles zipped by 16) holds, for each block of 32
//! values along k: the 32 rows' f16 scales, and for each of the 32 positions 16 bytes whose
//! low nibbles are rows 0..16 and high nibbles rows 16..32, each value `(nibble - 8) * scale`.
//! tract puts the scales before the nibbles on x86_64 and after them on aarch64 (its
//! `scales_at_end`, [`Scales`]); the kernels read either. [`layout::pack`] writes both from
//! GGML blocks; the engine checks that tract packs the same.
//!
//! Paths: [`reference`] (value by value, every CPU), `x86` (on activations rounded to 16 bits
//! per block, [`Quantized`]: one column or several with AVX2 and with AVX-512 VNNI; else in
//! f32: one column with AVX2, one or several with AVX-512), `aarch64` (NEON in f32 for one or
//! several).
//! [`product`] dispatches on the [`Isa`] it is given.

use std::borrow::Cow;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::Isa;
use crate::spin_team::SpinTeam;

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub mod layout;
pub mod reference;
#[cfg(target_arch = "x86_64")]
mod x86;

/// How far ahead of the block being multiplied the x86 kernels ask for the weights, in bytes,
/// unless `EDGELLM_WEIGHT_PREFETCH` (bytes, 0 = off) says otherwise. A decode step streams
/// 76 MB of weights that no cache holds; asked for this far ahead, each line is on its way
/// before the hardware's prefetcher would have asked, and the product runs closer to the
/// memory's bandwidth (README, "Weights asked for ahead").
pub const DEFAULT_WEIGHT_PREFETCH_AHEAD: usize = 8192;

/// `usize::MAX` until first read.
static WEIGHT_PREFETCH_AHEAD: AtomicUsize = AtomicUsize::new(usize::MAX);

/// The prefetch distance in force ([`DEFAULT_WEIGHT_PREFETCH_AHEAD`]).
pub fn weight_prefetch_ahead() -> usize {
    match WEIGHT_PREFETCH_AHEAD.load(Ordering::Relaxed) {
        usize::MAX => {
            let ahead = std::env::var("EDGELLM_WEIGHT_PREFETCH")
                .ok()
                .and_then(|bytes| bytes.trim().parse().ok())
                .unwrap_or(DEFAULT_WEIGHT_PREFETCH_AHEAD);
            set_weight_prefetch_ahead(ahead);
            ahead
        }
        ahead => ahead,
    }
}

/// Sets the prefetch distance for the whole process (0: none), for side-by-side measurements.
pub fn set_weight_prefetch_ahead(bytes: usize) {
    WEIGHT_PREFETCH_AHEAD.store(bytes.min(usize::MAX - 1), Ordering::Relaxed);
}

/// Rows in a packed panel, values in a block along k.
pub const PANEL_ROWS: usize = 32;
pub const BLOCK: usize = 32;
/// Bytes of one block of one panel: 32 f16 scales, then 32 positions of 16 bytes.
pub const PANEL_BLOCK_BYTES: usize = PANEL_ROWS * 2 + BLOCK * PANEL_ROWS / 2;

/// Where each block of a panel keeps its 32 f16 scales: before its nibbles or after them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scales {
    /// Scales, then nibbles: tract's packing for the f32 kernels on x86_64.
    First,
    /// Nibbles, then scales: tract's packing for the f32 kernels on aarch64 (`scales_at_end`).
    Last,
}

impl Scales {
    /// tract's `scales_at_end` flag for this placement.
    pub fn at_end(self) -> bool {
        self == Scales::Last
    }

    /// One panel block (`PANEL_BLOCK_BYTES`) as its scales (64 bytes) and nibbles (512 bytes).
    #[inline(always)]
    pub fn split(self, block: &[u8]) -> (&[u8], &[u8]) {
        match self {
            Scales::First => block.split_at(PANEL_ROWS * 2),
            Scales::Last => {
                let (nibbles, scales) = block.split_at(BLOCK * PANEL_ROWS / 2);
                (scales, nibbles)
            }
        }
    }
}

/// `n` columns of `k` activations (one per token) laid out as tract packs them: panels of `r`
/// columns, each `k` steps of `r` floats, `panel_floats` apart. Read where they are, since a
/// copy of a prompt chunk's activations cost more than a tenth of its products.
pub struct Columns<'a> {
    data: Cow<'a, [f32]>,
    n: usize,
    k: usize,
    r: usize,
    panel_floats: usize,
}

impl<'a> Columns<'a> {
    pub fn new(data: Cow<'a, [f32]>, n: usize, k: usize, r: usize, panel_floats: usize) -> Option<Columns<'a>> {
        let fits = n > 0 && r > 0 && panel_floats >= k * r && data.len() >= n.div_ceil(r) * panel_floats;
        fits.then_some(Columns { data, n, k, r, panel_floats })
    }

    /// `n` columns packed by tract, as raw bytes (read in place when they are aligned).
    pub fn from_bytes(bytes: &'a [u8], n: usize, k: usize, r: usize, panel_floats: usize) -> Option<Columns<'a>> {
        // SAFETY: any four bytes are an f32; the aligned middle is used only when it is all.
        let data = match unsafe { bytes.align_to::<f32>() } {
            (&[], floats, &[]) => Cow::Borrowed(floats),
            _ => Cow::Owned(bytes.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect()),
        };
        Columns::new(data, n, k, r, panel_floats)
    }

    /// How many columns (tokens).
    pub fn len(&self) -> usize {
        self.n
    }

    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// `n` rows of `k` floats, one after the other.
    pub fn contiguous(rows: &'a [f32], n: usize, k: usize) -> Option<Columns<'a>> {
        Columns::new(Cow::Borrowed(rows), n, k, 1, k)
    }

    /// Where column `t` starts; its values are `r` apart.
    fn start(&self, t: usize) -> usize {
        t / self.r * self.panel_floats + t % self.r
    }

    /// The columns as `n` rows of `k`, for the kernels that read one column at a time: in
    /// place when tract packed them one per panel (a decode step).
    fn rows(&self) -> Cow<'_, [f32]> {
        if self.r == 1 && (self.n == 1 || self.panel_floats == self.k) {
            return Cow::Borrowed(&self.data[..(self.n - 1) * self.panel_floats + self.k]);
        }
        let mut rows = vec![0f32; self.n * self.k];
        for (t, row) in rows.chunks_exact_mut(self.k).enumerate() {
            let column = &self.data[self.start(t)..];
            for (i, x) in row.iter_mut().enumerate() {
                *x = column[i * self.r];
            }
        }
        Cow::Owned(rows)
    }

    /// The sum of each block of 32 values: `n` rows of `k / 32`. A panel's `r` columns are
    /// summed side by side, as they lie. (What a weight's zero points multiply.)
    pub fn block_sums(&self) -> Vec<f32> {
        let blocks = self.k / BLOCK;
        if self.r == 1 {
            let column = |t| &self.data[self.start(t)..][..self.k];
            return (0..self.n).flat_map(|t| column(t).chunks_exact(BLOCK).map(|b| b.iter().sum())).collect();
        }
        let mut sums = vec![0f32; self.n * blocks];
        let mut acc = vec![0f32; self.r];
        for first in (0..self.n).step_by(self.r) {
            let width = self.r.min(self.n - first);
            let panel = &self.data[self.start(first)..][..self.k * self.r];
            for (blk, block) in panel.chunks_exact(BLOCK * self.r).enumerate() {
                acc.fill(0.0);
                for step in block.chunks_exact(self.r) {
                    for (a, x) in acc[..width].iter_mut().zip(&step[..width]) {
                        *a += x;
                    }
                }
                for (c, a) in acc[..width].iter().enumerate() {
                    sums[(first + c) * blocks + blk] = *a;
                }
            }
        }
        sums
    }
}

/// Activations rounded to 16 bits, per block of 32 values of each column: `value = q *
/// scale`, with `scale = max |x| / 32767`, so the rounding error is at most 1.5e-5 of the
/// block's largest value. The integer products of a block are exact; each block's sum of `q`
/// carries the nibbles' offset of 8, as `block_sums` does for f32.
///
/// The columns are laid out in tiles of `tile` columns (the last may be narrower): in a tile
/// of `w` columns starting at column `t0`, from `t0 * k` on, per block, per pair of positions,
/// the `w` columns' pairs side by side, so that a kernel taking the tile's columns together
/// reads one stream. With `tile = 1` that is each column's `k` values in a row.
pub struct Quantized {
    n: usize,
    k: usize,
    tile: usize,
    values: Vec<i16>,
    /// Per tile, per block, per column of the tile.
    scales: Vec<f32>,
    /// Per tile, per block, per column of the tile: the sum of the block's `q`.
    sums: Vec<i32>,
}

impl Quantized {
    /// The columns, rounded block by block, in tiles of `tile` columns.
    pub fn new(columns: &Columns, tile: usize) -> Quantized {
        #[cfg(target_arch = "x86_64")]
        if tile == columns.r && tile <= 8 && Isa::detected().runs(Isa::Avx512) {
            let mut quantized = Quantized::zeros(columns, tile);
            // SAFETY: the CPU has AVX-512F (checked).
            unsafe {
                if tile == 1 {
                    x86::quantize_rows(columns, &mut quantized);
                } else {
                    x86::quantize_packed(columns, &mut quantized);
                }
            }
            return quantized;
        }
        #[cfg(target_arch = "x86_64")]
        if tile == columns.r && tile <= 8 && Isa::detected().runs(Isa::Avx2) {
            let mut quantized = Quantized::zeros(columns, tile);
            // SAFETY: the CPU has AVX2 (checked).
            unsafe {
                if tile == 1 {
                    x86::quantize_rows_avx2(columns, &mut quantized);
                } else {
                    x86::quantize_packed_avx2(columns, &mut quantized);
                }
            }
            return quantized;
        }
        Quantized::value_by_value(columns, tile)
    }

    fn zeros(columns: &Columns, tile: usize) -> Quantized {
        let (n, k) = (columns.n, columns.k);
        let blocks = k / BLOCK;
        assert!(tile >= 1);
        Quantized { n, k, tile, values: vec![0; n * k], scales: vec![0.0; n * blocks], sums: vec![0; n * blocks] }
    }

    /// [`Quantized::new`] on every CPU, one block of one column at a time.
    fn value_by_value(columns: &Columns, tile: usize) -> Quantized {
        let (n, k) = (columns.n, columns.k);
        let blocks = k / BLOCK;
        let mut quantized = Quantized::zeros(columns, tile);
        let mut block = [0f32; BLOCK];
        let mut rounded = [0i16; BLOCK];
        for t in 0..n {
            let column = &columns.data[columns.start(t)..];
            let first = t / tile * tile;
            let (width, at) = ((n - first).min(tile), t - first);
            for blk in 0..blocks {
                for (i, x) in block.iter_mut().enumerate() {
                    *x = column[(blk * BLOCK + i) * columns.r];
                }
                let scale_at = first * blocks + blk * width + at;
                (quantized.scales[scale_at], quantized.sums[scale_at]) = round_block(&block, &mut rounded);
                let values = &mut quantized.values[first * k + blk * BLOCK * width..][..BLOCK * width];
                for (pair, q) in rounded.chunks_exact(2).enumerate() {
                    values[(pair * width + at) * 2..][..2].copy_from_slice(q);
                }
            }
        }
        quantized
    }

    /// Column `t`: what the one-column kernels read (columns in tiles of one).
    pub fn column(&self, t: usize) -> QuantizedColumn<'_> {
        assert!(t < self.n, "column {t} of {}", self.n);
        assert_eq!(self.tile, 1, "columns laid out in tiles of {}", self.tile);
        let blocks = self.k / BLOCK;
        QuantizedColumn {
            values: &self.values[t * self.k..][..self.k],
            scales: &self.scales[t * blocks..][..blocks],
            sums: &self.sums[t * blocks..][..blocks],
        }
    }
}

/// One column of [`Quantized`].
#[derive(Clone, Copy)]
pub struct QuantizedColumn<'a> {
    values: &'a [i16],
    scales: &'a [f32],
    sums: &'a [i32],
}

/// One block rounded to 16 bits: its scale and the sum of its values. Rounds to nearest by
/// adding 1.5 * 2^23 (exact for |v| <= 32767), which compiles to vector code where `round`
/// would call libm for every value.
fn round_block(x: &[f32; BLOCK], out: &mut [i16]) -> (f32, i32) {
    const ROUND: f32 = 12_582_912.0;
    // NaN propagates (`f32::max` would drop it).
    let largest = x.iter().fold(0f32, |m, v| if m.is_nan() || v.is_nan() { f32::NAN } else { m.max(v.abs()) });
    if largest == 0.0 || !largest.is_finite() {
        out.fill(0);
        // A block with an infinite or NaN value gives NaN products, as in f32.
        return (if largest == 0.0 { 0.0 } else { f32::NAN }, 0);
    }
    let inverse = 32767.0 / largest;
    let mut sum = 0i32;
    for (q, &v) in out.iter_mut().zip(x) {
        *q = ((v * inverse + ROUND) - ROUND) as i16;
        sum += *q as i32;
    }
    (largest / 32767.0, sum)
}

/// The product's output tensor, `n` rows of `m` at the given strides, written panel by panel
/// from several threads: each panel's 32 outputs of every row go to places no other panel's do.
pub struct Outputs<'a> {
    ptr: *mut f32,
    borrow: std::marker::PhantomData<&'a mut [f32]>,
    len: usize,
    m: usize,
    n: usize,
    stride_m: usize,
    stride_n: usize,
}

// SAFETY: threads write disjoint elements (`store_panel`), and the owner waits for them all.
unsafe impl Sync for Outputs<'_> {}

impl<'a> Outputs<'a> {
    pub fn new(out: &'a mut [f32], m: usize, n: usize, stride_m: usize, stride_n: usize) -> Outputs<'a> {
        assert!(m > 0 && n > 0 && (m - 1) * stride_m + (n - 1) * stride_n < out.len());
        Outputs { ptr: out.as_mut_ptr(), borrow: std::marker::PhantomData, len: out.len(), m, n, stride_m, stride_n }
    }

    /// Stores panel `p`'s outputs (`n` rows of 32, padding rows beyond `m` left out).
    ///
    /// # Safety
    /// No other thread stores the same panel at the same time.
    unsafe fn store_panel(&self, p: usize, rows: &[f32]) {
        assert_eq!(rows.len(), self.n * PANEL_ROWS);
        let valid = PANEL_ROWS.min(self.m.saturating_sub(p * PANEL_ROWS));
        for (t, row) in rows.chunks_exact(PANEL_ROWS).enumerate() {
            let first = t * self.stride_n + p * PANEL_ROWS * self.stride_m;
            if self.stride_m == 1 {
                debug_assert!(first + valid <= self.len);
                // SAFETY: as below, for the `valid` elements from `first`.
                unsafe { self.ptr.add(first).copy_from_nonoverlapping(row.as_ptr(), valid) };
                continue;
            }
            for (i, &v) in row[..valid].iter().enumerate() {
                let at = first + i * self.stride_m;
                debug_assert!(at < self.len);
                // SAFETY: `at` is inside the buffer (checked in `new`, as t < n and row < m) and
                // only this panel's store writes it.
                unsafe { *self.ptr.add(at) = v };
            }
        }
    }
}

/// Products with fewer multiply-adds than this stay on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// Multiply-adds per part of a product shared out over a team, at least (a few microseconds).
const PART_MIN_MACS: usize = 1 << 17;

/// Parts per thread of a large product: a helper that loses its core mid-part holds an
/// eighth of a two-thread job, not half of it, and the caller runs the rest.
const PARTS_PER_THREAD: usize = 4;

/// How many parts a product of `macs` multiply-adds is cut into for `threads` threads: one per
/// thread for a small one, up to [`PARTS_PER_THREAD`] per thread as long as each part keeps
/// [`PART_MIN_MACS`].
fn parts_of(macs: usize, threads: usize) -> usize {
    (macs / PART_MIN_MACS).clamp(threads, threads * PARTS_PER_THREAD)
}

/// Columns per tile of the kernel for several rounded columns: tract's panel of `r` columns
/// (6 for its AVX-512 kernels), which the columns are rounded from in place, up to eight.
fn chunk_tile(columns: &Columns) -> usize {
    if columns.r <= 8 { columns.r } else { 8 }
}

/// Whether `n` columns take the path on activations rounded to 16 bits.
fn rounds(isa: Isa, n: usize) -> bool {
    if n > 1 && isa.fused_q4_chunks() { isa.rounds_chunk_activations() } else { isa.rounds_activations() }
}

/// `W x` for the `n` columns into `outputs`, over whole panels, shared out over `team` when
/// there is one and the product is large enough, with the kernels of `isa` (which the CPU
/// must run: `Isa::current()` or lower).
pub fn product(panels: &[u8], scales: Scales, columns: &Columns, outputs: &Outputs, team: Option<&SpinTeam>, isa: Isa) {
    products(&[Weight { panels, scales, outputs }], columns, team, isa)
}

/// One of several weights that multiply the same columns ([`products`]).
pub struct Weight<'a, 'o> {
    /// Whole panels of `k / BLOCK * PANEL_BLOCK_BYTES` bytes.
    pub panels: &'a [u8],
    pub scales: Scales,
    pub outputs: &'a Outputs<'o>,
}

/// `W x` for every weight (each `m_i x k`) and the same `n` columns, as one job: the columns
/// are rounded once, and all the weights' panels are shared out over `team` together. A
/// layer's q, k and v (and its gate and up) read the same activations; three products were
/// three roundings and three waits for the team.
pub fn products(weights: &[Weight], columns: &Columns, team: Option<&SpinTeam>, isa: Isa) {
    assert!(Isa::detected().runs(isa), "{isa:?} is not a path this CPU runs");
    let (n, k) = (columns.n, columns.k);
    let panel_bytes = k / BLOCK * PANEL_BLOCK_BYTES;
    // Panels before each weight's first, in the one numbering the parts share out.
    let mut first_panels = Vec::with_capacity(weights.len() + 1);
    first_panels.push(0);
    for weight in weights {
        let n_panels = weight.panels.len() / panel_bytes;
        assert_eq!(weight.panels.len(), n_panels * panel_bytes, "whole panels of k = {k}");
        assert_eq!(n, weight.outputs.n, "outputs for {} columns, {n} given", weight.outputs.n);
        assert_eq!(n_panels, weight.outputs.m.div_ceil(PANEL_ROWS), "panels for m = {}", weight.outputs.m);
        first_panels.push(first_panels.last().copied().unwrap_or(0) + n_panels);
    }
    let n_panels = first_panels.last().copied().unwrap_or(0);
    let several = n > 1 && isa.fused_q4_chunks();
    // Columns rounded to 16 bits are rounded once, for every panel.
    let quantized = rounds(isa, n).then(|| Quantized::new(columns, if several { chunk_tile(columns) } else { 1 }));
    // sum(nibble * x) - 8 * sum(x) per block: the offset leaves the inner loop.
    let block_sums = if quantized.is_some() { Vec::new() } else { columns.block_sums() };
    let rows = if several || quantized.is_some() { Cow::Borrowed(&[][..]) } else { columns.rows() };
    let run = |first: usize, count: usize| {
        let mut out = vec![0f32; n * PANEL_ROWS];
        for global in first..(first + count).min(n_panels) {
            let w = first_panels.partition_point(|&start| start <= global) - 1;
            let (weight, p) = (&weights[w], global - first_panels[w]);
            let (panel, scales) = (&weight.panels[p * panel_bytes..][..panel_bytes], weight.scales);
            match (&quantized, several) {
                // SAFETY: the CPU runs `isa` (checked): AVX-512 with VNNI and VBMI; the slices
                // have the kernel's sizes (asserted inside).
                #[cfg(target_arch = "x86_64")]
                (Some(x), true) if isa == Isa::Avx512Vnni => unsafe {
                    x86::panel_columns_vnni(panel, scales, x, &mut out)
                },
                // SAFETY: as above: AVX2, FMA and F16C.
                #[cfg(target_arch = "x86_64")]
                (Some(x), true) if isa == Isa::Avx2 => unsafe {
                    x86::panel_columns_avx2_i16(panel, scales, x, &mut out)
                },
                (Some(x), _) => {
                    for (t, out) in out.chunks_exact_mut(PANEL_ROWS).enumerate() {
                        product_panel_rounded(panel, scales, x.column(t), out, isa);
                    }
                }
                // SAFETY: the CPU runs `isa` (checked): AVX-512; the slices have the kernel's
                // sizes (asserted inside).
                #[cfg(target_arch = "x86_64")]
                (None, true) if isa == Isa::Avx512 => unsafe {
                    x86::panel_columns_avx512(panel, scales, columns, &block_sums, &mut out)
                },
                // SAFETY: every aarch64 CPU has NEON; the slices have the kernel's sizes
                // (asserted inside).
                #[cfg(target_arch = "aarch64")]
                (None, true) => unsafe { aarch64::panel_columns_neon(panel, scales, columns, &block_sums, &mut out) },
                _ => product_panel(panel, scales, k, &rows, &block_sums, &mut out, isa),
            }
            // SAFETY: each panel is stored by the one part that holds it.
            unsafe { weight.outputs.store_panel(p, &out) };
        }
    };
    match team {
        Some(team) if team.threads() > 1 && n_panels * PANEL_ROWS * n * k >= PARALLEL_MIN_MACS => {
            let parts = parts_of(n_panels * PANEL_ROWS * n * k, team.threads());
            team.run_ranges(n_panels, parts, &|panels| run(panels.start, panels.len()));
        }
        _ => run(0, n_panels),
    }
}

/// One panel times `n` columns given as rows of `k` (`xs`): `out` gets `n` rows of 32.
fn product_panel(panel: &[u8], scales: Scales, k: usize, xs: &[f32], block_sums: &[f32], out: &mut [f32], isa: Isa) {
    let blocks = k / BLOCK;
    for ((x, sums), out) in
        xs.chunks_exact(k).zip(block_sums.chunks_exact(blocks)).zip(out.chunks_exact_mut(PANEL_ROWS))
    {
        match isa {
            // SAFETY: `product` checked that the CPU runs `isa`; the slices have the kernel's
            // sizes (asserted inside).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { x86::panel_avx512(panel, scales, x, sums, out) },
            // SAFETY: as above.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { x86::panel_avx2(panel, scales, x, sums, out) },
            // SAFETY: every aarch64 CPU has NEON; the sizes are asserted inside.
            #[cfg(target_arch = "aarch64")]
            Isa::Neon | Isa::NeonDotprod => unsafe { aarch64::panel_neon(panel, scales, x, sums, out) },
            _ => reference::panel(panel, scales, x, sums, out),
        }
    }
}

/// One panel times one column rounded to 16 bits: `out` gets 32 rows.
fn product_panel_rounded(panel: &[u8], scales: Scales, x: QuantizedColumn, out: &mut [f32], isa: Isa) {
    match isa {
        // SAFETY: `product` checked that the CPU runs `isa`; the slices have the kernel's
        // sizes (asserted inside).
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512Vnni => unsafe { x86::panel_vnni(panel, scales, x, out) },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::panel_avx2_i16(panel, scales, x, out) },
        _ => reference::panel_i16(panel, scales, x, out),
    }
}

/// Adds a weight's zero-point products to `n` columns of outputs: `out[t][i] += sum over b of
/// z[b][i] * sums[t][b]`, with `z` block-major (`blocks` rows of `m`), `sums` the columns'
/// block sums (`n` rows of `blocks`, [`Columns::block_sums`]) and the outputs `stride_m` and
/// `stride_n` apart. One pass per block over a column's `m` outputs, in the widest vectors
/// `isa` has (the same code compiled for them).
#[allow(clippy::too_many_arguments)]
pub fn add_zero_point_products(
    z: &[f32],
    m: usize,
    sums: &[f32],
    blocks: usize,
    out: &mut [f32],
    stride_m: usize,
    stride_n: usize,
    isa: Isa,
) {
    assert!(Isa::detected().runs(isa), "{isa:?} is not a path this CPU runs");
    assert!(m > 0 && blocks > 0 && z.len() == m * blocks && sums.len().is_multiple_of(blocks));
    let n = sums.len() / blocks;
    assert!(n == 0 || (n - 1) * stride_n + (m - 1) * stride_m < out.len());
    match isa {
        // SAFETY: the CPU runs `isa` (asserted above); the function is safe code compiled
        // with these features.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 | Isa::Avx512Vnni => unsafe {
            x86::zero_point_products_avx512(z, m, sums, blocks, out, stride_m, stride_n)
        },
        // SAFETY: as above.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { x86::zero_point_products_avx2(z, m, sums, blocks, out, stride_m, stride_n) },
        _ => zero_point_products(z, m, sums, blocks, out, stride_m, stride_n),
    }
}

/// [`add_zero_point_products`] in plain Rust, for the compiler to vectorise.
#[inline(always)]
pub(crate) fn zero_point_products(
    z: &[f32],
    m: usize,
    sums: &[f32],
    blocks: usize,
    out: &mut [f32],
    stride_m: usize,
    stride_n: usize,
) {
    let axpy = |acc: &mut [f32], column_sums: &[f32]| {
        for (z_block, &s) in z.chunks_exact(m).zip(column_sums) {
            for (a, &zv) in acc.iter_mut().zip(z_block) {
                *a += zv * s;
            }
        }
    };
    if stride_m == 1 {
        for (t, column_sums) in sums.chunks_exact(blocks).enumerate() {
            axpy(&mut out[t * stride_n..][..m], column_sums);
        }
        return;
    }
    let mut column = vec![0f32; m];
    for (t, column_sums) in sums.chunks_exact(blocks).enumerate() {
        column.fill(0.0);
        axpy(&mut column, column_sums);
        for (i, v) in column.iter().enumerate() {
            out[t * stride_n + i * stride_m] += v;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_products_are_cut_into_more_parts_than_threads() {
        assert_eq!(parts_of(PARALLEL_MIN_MACS, 2), 2, "a small product: one part per thread");
        assert_eq!(parts_of(6 * PART_MIN_MACS, 2), 6);
        assert_eq!(parts_of(1 << 30, 2), 2 * PARTS_PER_THREAD, "at most four per thread");
        assert_eq!(parts_of(1 << 30, 3), 3 * PARTS_PER_THREAD);
    }

    /// The zero-point products on every path this CPU runs equal the sums computed in f64,
    /// into rows of `m` (in place) and transposed, for an `m` that is no multiple of a vector.
    #[test]
    fn zero_point_products_equal_the_f64_sums_on_every_path() {
        let (m, blocks, n) = (37, 5, 3);
        let z: Vec<f32> = (0..m * blocks).map(|i| ((i * 29 % 61) as f32 - 30.0) * 0.25).collect();
        let sums: Vec<f32> = (0..n * blocks).map(|i| ((i * 7 % 13) as f32 - 6.0) * 1.5).collect();
        let start = |t: usize, i: usize| (t * m + i) as f32 * 0.5;
        for isa in EVERY_PATH.into_iter().filter(|isa| Isa::detected().runs(*isa)) {
            for (stride_m, stride_n) in [(1, m), (n, 1)] {
                let mut out = vec![0f32; m * n];
                for t in 0..n {
                    for i in 0..m {
                        out[t * stride_n + i * stride_m] = start(t, i);
                    }
                }
                add_zero_point_products(&z, m, &sums, blocks, &mut out, stride_m, stride_n, isa);
                for t in 0..n {
                    for i in 0..m {
                        let exact: f64 = start(t, i) as f64
                            + (0..blocks).map(|b| z[b * m + i] as f64 * sums[t * blocks + b] as f64).sum::<f64>();
                        let got = out[t * stride_n + i * stride_m] as f64;
                        assert!(
                            (got - exact).abs() <= 1e-4 * exact.abs().max(1.0),
                            "{isa:?} ({stride_m}, {stride_n}) column {t} row {i}: {got} vs {exact}"
                        );
                    }
                }
            }
        }
    }

    const EVERY_PATH: [Isa; 6] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Avx512Vnni, Isa::Neon, Isa::NeonDotprod];

    /// Every path this CPU runs, the scalar reference included, agrees with the product
    /// computed in f64 from the values the GGML blocks stand for (padding rows included), for
    /// both placements of the scales, one column and several, given as rows or packed in
    /// panels of 16 as tract does (NaN in the padding, which must not be read), into rows of m
    /// or transposed, on one thread and split over two. Paths on activations rounded to 16
    /// bits may differ by what the rounding moves.
    #[test]
    fn every_path_equals_the_dequantized_product() {
        let team = SpinTeam::new(2).expect("threads");
        let paths: Vec<Isa> = EVERY_PATH.into_iter().filter(|isa| Isa::detected().runs(*isa)).collect();
        assert!(paths.contains(&Isa::Scalar));
        #[cfg(target_arch = "aarch64")]
        assert!(paths.contains(&Isa::Neon), "every aarch64 CPU runs NEON");
        for (m, k) in [(64, 64), (96, 576), (40, 128), (1, 32), (33, 96), (320, 576)] {
            let (ggml, values) = layout::example(m, k, (m * k) as u64);
            let packings =
                [Scales::First, Scales::Last].map(|placement| (placement, layout::pack(&ggml, m, k, placement)));
            for (_, weights) in &packings {
                assert_eq!(weights.len(), m.div_ceil(PANEL_ROWS) * k / BLOCK * PANEL_BLOCK_BYTES);
            }
            let x: Vec<f32> = (0..k).map(|i| ((i as f32) * 0.37).sin()).collect();
            let expected: Vec<f64> =
                (0..m).map(|r| (0..k).map(|c| values[r * k + c] as f64 * x[c] as f64).sum()).collect();
            // What rounding x to 16 bits per block may move each product by: half a step
            // (the block's largest |x| / 32767) times the row's |weights|.
            let largest: Vec<f64> =
                x.chunks_exact(BLOCK).map(|b| b.iter().fold(0f64, |m, v| m.max(v.abs() as f64))).collect();
            let rounding: Vec<f64> = (0..m)
                .map(|r| (0..k).map(|c| (values[r * k + c] as f64).abs() * largest[c / BLOCK] * 0.5 / 32767.0).sum())
                .collect();
            // Column t is x scaled by (t + 1), so its products are expected's.
            for n in [1usize, 2, 3, 5, 8, 13, 17] {
                let xs: Vec<f32> = (0..n).flat_map(|t| x.iter().map(move |v| v * (t + 1) as f32)).collect();
                // Packed as tract packs for its AVX-512 kernels (6) and others (16).
                let pack = |r: usize| {
                    let mut packed_xs = vec![f32::NAN; n.div_ceil(r) * k * r];
                    for (t, row) in xs.chunks_exact(k).enumerate() {
                        for (i, &v) in row.iter().enumerate() {
                            packed_xs[t / r * k * r + i * r + t % r] = v;
                        }
                    }
                    packed_xs
                };
                let (by_6, by_16) = (pack(6), pack(16));
                let layouts = [
                    ("rows", Columns::contiguous(&xs, n, k).expect("fits")),
                    ("packed by 6", Columns::new(Cow::Borrowed(&by_6), n, k, 6, k * 6).expect("fits")),
                    ("packed by 16", Columns::new(Cow::Borrowed(&by_16), n, k, 16, k * 16).expect("fits")),
                ];
                for (isa, (placement, weights)) in paths.iter().flat_map(|isa| packings.iter().map(move |p| (isa, p))) {
                    for (layout, columns) in &layouts {
                        for (threads, team) in [("one thread", None), ("two threads", Some(&team))] {
                            for (stride_m, stride_n) in [(1, m), (n, 1)] {
                                let mut out = vec![f32::NAN; m * n];
                                let outputs = Outputs::new(&mut out, m, n, stride_m, stride_n);
                                product(weights, *placement, columns, &outputs, team, *isa);
                                for t in 0..n {
                                    for (row, expected) in expected.iter().enumerate() {
                                        let got = out[t * stride_n + row * stride_m] as f64;
                                        let want = expected * (t + 1) as f64;
                                        let rounded = if rounds(*isa, n) { rounding[row] } else { 0.0 };
                                        assert!(
                                            (got - want).abs() < 1e-4 * (1.0 + want.abs()) + rounded * (t + 1) as f64,
                                            "{isa:?} {placement:?} {m}x{k}, {n} columns as {layout}, {threads}, stride_m {stride_m}: {got} vs {want}"
                                        );
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }

    /// Several weights over the same columns in one job give, weight by weight, what each
    /// product alone gives (the same kernels on the same rounding), on every path, for one
    /// column and several, on one thread and two, with weights of different heights (q, k
    /// and v of a layer are 576, 192 and 192 rows; a panel count that does not split evenly).
    #[test]
    fn products_of_several_weights_equal_each_product_alone() {
        let team = SpinTeam::new(2).expect("threads");
        let paths: Vec<Isa> = EVERY_PATH.into_iter().filter(|isa| Isa::detected().runs(*isa)).collect();
        let k = 96;
        let heights = [160, 64, 33];
        let weights: Vec<Vec<u8>> = heights
            .iter()
            .map(|&m| layout::pack(&layout::example(m, k, (m * 31) as u64).0, m, k, Scales::First))
            .collect();
        for n in [1usize, 3, 8, 13] {
            let r = 8;
            let xs: Vec<f32> =
                (0..n.div_ceil(r) * k * r).map(|i| ((i as f32) * 0.53).sin() * (1 + i % 5) as f32).collect();
            let columns = Columns::new(Cow::Borrowed(&xs), n, k, r, k * r).expect("fits");
            for (isa, team) in paths.iter().flat_map(|isa| [(*isa, None), (*isa, Some(&team))]) {
                let alone: Vec<Vec<f32>> = heights
                    .iter()
                    .zip(&weights)
                    .map(|(&m, w)| {
                        let mut out = vec![f32::NAN; m * n];
                        product(w, Scales::First, &columns, &Outputs::new(&mut out, m, n, 1, m), None, isa);
                        out
                    })
                    .collect();
                let mut outs: Vec<Vec<f32>> = heights.iter().map(|&m| vec![f32::NAN; m * n]).collect();
                let outputs: Vec<Outputs> =
                    outs.iter_mut().zip(&heights).map(|(out, &m)| Outputs::new(out, m, n, 1, m)).collect();
                let jobs: Vec<Weight> = weights
                    .iter()
                    .zip(&outputs)
                    .map(|(w, outputs)| Weight { panels: w, scales: Scales::First, outputs })
                    .collect();
                products(&jobs, &columns, team, isa);
                drop(outputs);
                for ((m, got), want) in heights.iter().zip(&outs).zip(&alone) {
                    assert!(got.iter().all(|v| v.is_finite()), "{isa:?} m {m} n {n}: an output left unwritten");
                    assert_eq!(
                        got,
                        want,
                        "{isa:?} m {m} n {n}, {}",
                        if team.is_some() { "two threads" } else { "one" }
                    );
                }
            }
        }
    }

    /// The paths on activations rounded to 16 bits equal their integer reference (the same
    /// rounding, sums exact), for one column and for several (tiles of 1 to 8 columns), on one
    /// thread and two; and rounding
    /// keeps NaN and infinity visible instead of turning them into numbers.
    #[test]
    fn rounded_paths_equal_their_reference() {
        let team = SpinTeam::new(2).expect("threads");
        let paths: Vec<Isa> =
            EVERY_PATH.into_iter().filter(|isa| isa.rounds_activations() && Isa::detected().runs(*isa)).collect();
        if paths.is_empty() {
            eprintln!("no path on rounded activations on this CPU ({:?})", Isa::detected());
        }
        for (m, k) in [(64, 64), (33, 96), (96, 576)] {
            let (ggml, _) = layout::example(m, k, (m + k) as u64);
            let weights = layout::pack(&ggml, m, k, Scales::First);
            for n in [1usize, 3, 8, 11] {
                let xs: Vec<f32> = (0..n * k).map(|i| ((i as f32) * 0.61).cos() * (1 + i % 7) as f32).collect();
                let columns = Columns::contiguous(&xs, n, k).expect("fits");
                let quantized = Quantized::new(&columns, 1);
                let mut expected = vec![0f32; n * m];
                for t in 0..n {
                    let mut rows = [0f32; PANEL_ROWS];
                    for p in 0..m.div_ceil(PANEL_ROWS) {
                        let panel = &weights[p * k / BLOCK * PANEL_BLOCK_BYTES..][..k / BLOCK * PANEL_BLOCK_BYTES];
                        reference::panel_i16(panel, Scales::First, quantized.column(t), &mut rows);
                        for (r, v) in rows.iter().enumerate().filter(|(r, _)| p * PANEL_ROWS + r < m) {
                            expected[t * m + p * PANEL_ROWS + r] = *v;
                        }
                    }
                }
                let rounding = paths.iter().filter(|isa| rounds(**isa, n));
                for (isa, team) in rounding.flat_map(|isa| [(isa, None), (isa, Some(&team))]) {
                    let mut out = vec![f32::NAN; m * n];
                    product(&weights, Scales::First, &columns, &Outputs::new(&mut out, m, n, 1, m), team, *isa);
                    for (i, (got, want)) in out.iter().zip(&expected).enumerate() {
                        assert!(
                            (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                            "{isa:?} {m}x{k} n {n} at {i}: {got} vs {want}"
                        );
                    }
                }
            }
        }
        let mut block = [0.5f32; BLOCK];
        block[3] = f32::INFINITY;
        let mut values = [0i16; BLOCK];
        assert!(round_block(&block, &mut values).0.is_nan());
        block[3] = -2.0;
        let (scale, sum) = round_block(&block, &mut values);
        assert_eq!((values[3], values[0]), (-32767, 8192));
        assert_eq!(sum, 31 * 8192 - 32767);
        assert!((scale - 2.0 / 32767.0).abs() < 1e-12);
    }

    /// Not a test: prints each path's time for SmolLM2-135M's shapes, one column (a decode
    /// step) and 64 (a prompt chunk), in alternating rounds on one thread.
    /// `cargo test --release -p edgellm-kernels -- --ignored --nocapture paths_side_by_side`
    #[test]
    #[ignore]
    fn paths_side_by_side() {
        let paths: Vec<Isa> = EVERY_PATH.into_iter().filter(|isa| Isa::detected().runs(*isa)).collect();
        for (m, k) in [(576, 576), (1536, 576), (576, 1536), (49152, 576)] {
            let (ggml, _) = layout::example(m, k, 7);
            let weights = layout::pack(&ggml, m, k, Scales::First);
            for n in [1usize, 13, 64] {
                // Packed in panels of 6 columns, as tract packs a prompt chunk for AVX-512.
                let r = 6;
                let xs: Vec<f32> = (0..n.div_ceil(r) * k * r).map(|i| ((i as f32) * 0.37).sin()).collect();
                let columns = Columns::new(Cow::Borrowed(&xs), n, k, r, k * r).expect("fits");
                let mut out = vec![0f32; m * n];
                let mut best = vec![f64::MAX; paths.len()];
                let reps = (2_000_000_000 / (m * k * n)).clamp(1, 2000);
                for _round in 0..5 {
                    for (i, isa) in paths.iter().enumerate() {
                        let started = std::time::Instant::now();
                        for _ in 0..reps {
                            product(&weights, Scales::First, &columns, &Outputs::new(&mut out, m, n, 1, m), None, *isa);
                        }
                        best[i] = best[i].min(started.elapsed().as_secs_f64() / reps as f64);
                    }
                }
                let line: Vec<String> = paths
                    .iter()
                    .zip(&best)
                    .map(|(isa, t)| {
                        format!("{} {:.1} us ({:.1} GMAC/s)", isa.name(), t * 1e6, (m * k * n) as f64 / t / 1e9)
                    })
                    .collect();
                println!("{m}x{k} n={n}: {}", line.join(", "));
            }
        }
    }

    /// Not a test: prints the time of one down_proj-sized product (1536 x 576, 0.5 MB of
    /// weights, one column) with its weights in the cache (the same weight again and again)
    /// and streamed from memory (200 copies in turn, 100 MB: no cache holds them, as in a
    /// decode step), on one thread and on a team of two, with the bytes per second each
    /// implies, with the weights asked for ahead ([`weight_prefetch_ahead`]) and without. Where
    /// "streamed" is much slower than "cached" and gains little from a second thread, decode is
    /// bound by memory, not by the kernels: the best of five alternating rounds.
    /// `cargo test --release -p edgellm-kernels -- --ignored --nocapture cached_and_streamed_weights_side_by_side`
    #[test]
    #[ignore]
    fn cached_and_streamed_weights_side_by_side() {
        let team = SpinTeam::new(2).expect("threads");
        let isa = Isa::current();
        let (m, k) = (1536usize, 576usize);
        let weight = layout::pack(&layout::example(m, k, 7).0, m, k, Scales::First);
        let copies: Vec<Vec<u8>> = (0..200).map(|_| weight.clone()).collect();
        let xs: Vec<f32> = (0..k).map(|i| ((i as f32) * 0.37).sin()).collect();
        let columns = Columns::new(Cow::Borrowed(&xs), 1, k, 1, k).expect("fits");
        let mut out = vec![0f32; m];
        let mut run = |weights: &[&Vec<u8>], team: Option<&SpinTeam>| {
            let started = std::time::Instant::now();
            for w in weights {
                product(w, Scales::First, &columns, &Outputs::new(&mut out, m, 1, 1, m), team, isa);
            }
            started.elapsed().as_secs_f64() / weights.len() as f64
        };
        let cached: Vec<&Vec<u8>> = std::iter::repeat_n(&copies[0], 800).collect();
        let streamed: Vec<&Vec<u8>> = copies.iter().cycle().take(800).collect();
        let distances = [0, DEFAULT_WEIGHT_PREFETCH_AHEAD];
        for (threads, team) in [("1 thread", None), ("2 threads", Some(&team))] {
            let (mut hot, mut cold) = ([f64::MAX; 2], [f64::MAX; 2]);
            for round in 0..5 {
                for i in [round % 2, 1 - round % 2] {
                    set_weight_prefetch_ahead(distances[i]);
                    hot[i] = hot[i].min(run(&cached, team));
                    cold[i] = cold[i].min(run(&streamed, team));
                }
            }
            let rate = |seconds: f64| weight.len() as f64 / seconds / 1e9;
            for i in 0..2 {
                println!(
                    "{isa:?} {m}x{k} ({} KB), {threads}, prefetch {:>4} B ahead: cached {:.1} us ({:.1} GB/s), streamed {:.1} us ({:.1} GB/s)",
                    weight.len() / 1000,
                    distances[i],
                    hot[i] * 1e6,
                    rate(hot[i]),
                    cold[i] * 1e6,
                    rate(cold[i])
                );
            }
        }
        set_weight_prefetch_ahead(DEFAULT_WEIGHT_PREFETCH_AHEAD);
    }

    /// Not a test: prints the time of a layer's q, k and v (576, 192 and 192 rows of 576) and
    /// of its gate and up (1536 and 1536 of 576) as one job ([`products`]) and as one product
    /// each, for one column and a 20-token chunk (panels of 8), on one thread and on a team of
    /// two: the best of alternating rounds.
    /// `cargo test --release -p edgellm-kernels -- --ignored --nocapture grouped_products_side_by_side`
    #[test]
    #[ignore]
    fn grouped_products_side_by_side() {
        let team = SpinTeam::new(2).expect("threads");
        let isa = Isa::current();
        let k = 576;
        for heights in [&[576usize, 192, 192][..], &[1536, 1536][..]] {
            let weights: Vec<Vec<u8>> = heights
                .iter()
                .map(|&m| layout::pack(&layout::example(m, k, m as u64).0, m, k, Scales::First))
                .collect();
            for n in [1usize, 20] {
                let r = if n == 1 { 1 } else { 8 };
                let xs: Vec<f32> = (0..n.div_ceil(r) * k * r).map(|i| ((i as f32) * 0.37).sin()).collect();
                let columns = Columns::new(Cow::Borrowed(&xs), n, k, r, k * r).expect("fits");
                let mut outs: Vec<Vec<f32>> = heights.iter().map(|&m| vec![0f32; m * n]).collect();
                for (threads, team) in [("1 thread", None), ("2 threads", Some(&team))] {
                    let reps = if n == 1 { 2000 } else { 200 };
                    let (mut apart, mut together) = (f64::MAX, f64::MAX);
                    for _round in 0..7 {
                        let started = std::time::Instant::now();
                        for _ in 0..reps {
                            for ((w, out), &m) in weights.iter().zip(outs.iter_mut()).zip(heights) {
                                product(w, Scales::First, &columns, &Outputs::new(out, m, n, 1, m), team, isa);
                            }
                        }
                        apart = apart.min(started.elapsed().as_secs_f64() / reps as f64);
                        let started = std::time::Instant::now();
                        for _ in 0..reps {
                            let outputs: Vec<Outputs> =
                                outs.iter_mut().zip(heights).map(|(out, &m)| Outputs::new(out, m, n, 1, m)).collect();
                            let jobs: Vec<Weight> = weights
                                .iter()
                                .zip(&outputs)
                                .map(|(w, outputs)| Weight { panels: w, scales: Scales::First, outputs })
                                .collect();
                            products(&jobs, &columns, team, isa);
                        }
                        together = together.min(started.elapsed().as_secs_f64() / reps as f64);
                    }
                    println!(
                        "{heights:?}x{k} n={n}, {threads}: apart {:.1} us, one job {:.1} us ({:.3}x)",
                        apart * 1e6,
                        together * 1e6,
                        apart / together
                    );
                }
            }
        }
    }

    /// Rounding columns packed as tract packs a prompt chunk (`r` to a panel) gives the same
    /// values and scales on the vector path as value by value, for whole and partial panels,
    /// with blocks of zeros, infinities and NaN.
    #[test]
    fn packed_columns_round_alike_on_every_path() {
        let k = 96;
        for (n, r) in
            [1usize, 5, 6, 8, 13, 16, 21, 40].into_iter().flat_map(|n| [(n, 1), (n, 4), (n, 6), (n, 8), (n, 16)])
        {
            // Panels of r columns, 8 floats of padding after each.
            let panel_floats = k * r + 8;
            let mut xs: Vec<f32> =
                (0..n.div_ceil(r) * panel_floats).map(|i| ((i as f32) * 0.73).sin() * (1 + i % 5) as f32).collect();
            // Block 1 of column 2 all zeros, block 2 of column 3 infinite, block 0 of column 4 NaN.
            for (column, blk, value) in [(2, 1, Some(0.0)), (3, 2, None), (4, 0, Some(f32::NAN))] {
                if column < n {
                    for i in 0..BLOCK {
                        let at = column / r * panel_floats + (blk * BLOCK + i) * r + column % r;
                        xs[at] = value.unwrap_or(if i == 7 { f32::INFINITY } else { xs[at] });
                    }
                }
            }
            let columns = Columns::new(Cow::Borrowed(&xs), n, k, r, panel_floats).expect("fits");
            for tile in [1, chunk_tile(&columns)] {
                let (fast, slow) = (Quantized::new(&columns, tile), Quantized::value_by_value(&columns, tile));
                assert_eq!(fast.values, slow.values, "{n} columns packed by {r} in tiles of {tile}");
                let same = |a: &f32, b: &f32| a == b || (a.is_nan() && b.is_nan());
                assert_eq!(fast.sums, slow.sums, "{n} columns packed by {r} in tiles of {tile}");
                assert!(
                    fast.scales.iter().zip(&slow.scales).all(|(a, b)| same(a, b)),
                    "{n} columns in tiles of {tile}"
                );
                assert_eq!(
                    fast.scales.iter().filter(|s| s.is_nan()).count(),
                    [3, 4].iter().filter(|&&c| c < n).count()
                );
            }
        }
    }

    #[test]
    fn columns_read_from_unaligned_bytes_equal_the_floats() {
        let floats: Vec<f32> = (0..64).map(|i| i as f32 * 0.5).collect();
        let mut bytes = vec![0u8];
        bytes.extend(floats.iter().flat_map(|f| f.to_ne_bytes()));
        let columns = Columns::from_bytes(&bytes[1..], 2, 32, 1, 32).expect("fits");
        assert_eq!(&*columns.rows(), &floats[..]);
        assert!(Columns::from_bytes(&bytes[1..65], 2, 32, 1, 32).is_none(), "too short for two columns");
    }
}
