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
//! Paths: [`reference`] (value by value, every CPU), `x86` (AVX2 for one column, AVX-512 for
//! one or several), `aarch64` (NEON for one or several). [`product`] dispatches on the
//! [`Isa`] it is given.

use std::borrow::Cow;

use crate::Isa;
use crate::spin_team::SpinTeam;

#[cfg(target_arch = "aarch64")]
mod aarch64;
pub mod layout;
pub mod reference;
#[cfg(target_arch = "x86_64")]
mod x86;

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
    /// summed side by side, as they lie.
    fn block_sums(&self) -> Vec<f32> {
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

/// `W x` for the `n` columns into `outputs`, over whole panels, shared out over `team` when
/// there is one and the product is large enough, with the kernels of `isa` (which the CPU
/// must run: `Isa::current()` or lower).
pub fn product(panels: &[u8], scales: Scales, columns: &Columns, outputs: &Outputs, team: Option<&SpinTeam>, isa: Isa) {
    assert!(Isa::detected().runs(isa), "{isa:?} is not a path this CPU runs");
    let (n, k) = (columns.n, columns.k);
    let panel_bytes = k / BLOCK * PANEL_BLOCK_BYTES;
    let n_panels = panels.len() / panel_bytes;
    debug_assert_eq!(n, outputs.n);
    debug_assert_eq!(n_panels, outputs.m.div_ceil(PANEL_ROWS));
    // sum(nibble * x) - 8 * sum(x) per block: the offset leaves the inner loop.
    let block_sums = columns.block_sums();
    let several = n > 1 && isa.fused_q4_chunks();
    let rows = if several { Cow::Borrowed(&[][..]) } else { columns.rows() };
    let run = |first: usize, count: usize| {
        let mut out = vec![0f32; n * PANEL_ROWS];
        for p in first..(first + count).min(n_panels) {
            let panel = &panels[p * panel_bytes..][..panel_bytes];
            match several {
                // SAFETY: `several` means the CPU has AVX-512 (checked); the slices have the
                // kernel's sizes (asserted inside).
                #[cfg(target_arch = "x86_64")]
                true => unsafe { x86::panel_columns_avx512(panel, scales, columns, &block_sums, &mut out) },
                // SAFETY: every aarch64 CPU has NEON; the slices have the kernel's sizes
                // (asserted inside).
                #[cfg(target_arch = "aarch64")]
                true => unsafe { aarch64::panel_columns_neon(panel, scales, columns, &block_sums, &mut out) },
                _ => product_panel(panel, scales, k, &rows, &block_sums, &mut out, isa),
            }
            // SAFETY: each panel is stored by the one part that holds it.
            unsafe { outputs.store_panel(p, &out) };
        }
    };
    match team {
        Some(team) if team.threads() > 1 && n_panels * PANEL_ROWS * n * k >= PARALLEL_MIN_MACS => {
            let per_part = n_panels.div_ceil(team.threads());
            team.run(&|i| run(i * per_part, per_part));
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

#[cfg(test)]
mod tests {
    use super::*;

    const EVERY_PATH: [Isa; 5] = [Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Neon, Isa::NeonDotprod];

    /// Every path this CPU runs, the scalar reference included, agrees with the product
    /// computed in f64 from the values the GGML blocks stand for (padding rows included), for
    /// both placements of the scales, one column and several, given as rows or packed in
    /// panels of 16 as tract does (NaN in the padding, which must not be read), into rows of m
    /// or transposed, on one thread and split over two.
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
            // Column t is x scaled by (t + 1), so its products are expected's.
            for n in [1usize, 2, 3, 5, 8, 13, 17] {
                let xs: Vec<f32> = (0..n).flat_map(|t| x.iter().map(move |v| v * (t + 1) as f32)).collect();
                let r = 16;
                let mut packed_xs = vec![f32::NAN; n.div_ceil(r) * k * r];
                for (t, row) in xs.chunks_exact(k).enumerate() {
                    for (i, &v) in row.iter().enumerate() {
                        packed_xs[t / r * k * r + i * r + t % r] = v;
                    }
                }
                let layouts = [
                    ("rows", Columns::contiguous(&xs, n, k).expect("fits")),
                    ("packed", Columns::new(Cow::Borrowed(&packed_xs), n, k, r, k * r).expect("fits")),
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
                                        assert!(
                                            (got - want).abs() < 1e-4 * (1.0 + want.abs()),
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
