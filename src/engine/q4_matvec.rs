//! Fused 4-bit matrix products over tract's packed Q4_0 weights.
//!
//! tract multiplies a Q4_0 weight by one token's activations in two passes per panel of 32
//! rows: its extractor unpacks the panel to f32 in a scratch buffer, then the 32x1 f32 kernel
//! reads it back. On a decode step these products are three quarters of the time.
//! [`accelerate_q4_matvecs`] wraps each in [`Q4MatVec`], which reads tract's own packed panels
//! and multiplies as it unpacks: one column (a decode step) with AVX2 or AVX-512, several (a
//! prompt chunk) with AVX-512, the panels shared out over a [`SpinTeam`] when there is one. Anything else goes to
//! the wrapped tract op unchanged, and so does everything on other CPUs (aarch64 included: it
//! has no kernel here yet). The weights are not copied.
//!
//! The packed panel (`Q4_0` for 32 rows, nibbles zipped by 16) holds, for each block of 32
//! values along k: the 32 rows' f16 scales, then for each of the 32 positions 16 bytes whose
//! low nibbles are rows 0..16 and high nibbles rows 16..32, each value `(nibble - 8) * scale`.

use super::spin_team::SpinTeam;
use std::borrow::Cow;
use tract_linalg::block_quant::{PackedBlockQuantFormat, Q4_0};
use tract_linalg::mmm::{EagerPackedInput, PackedMatrixStorage};
use tract_linalg::pack::PackedFormat;
use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::{EvalContext, EvalOp, Op, SessionId, StaticName, TypedOp};
use tract_onnx::tract_core::ops::matmul::optimized::{MatMulOperand, OptMatMul, ProtoFusedSpec};

/// Rows in a packed panel, values in a block along k.
const PANEL_ROWS: usize = 32;
const BLOCK: usize = 32;
/// Bytes of one block of one panel: 32 f16 scales, then 32 positions of 16 bytes.
const PANEL_BLOCK_BYTES: usize = PANEL_ROWS * 2 + BLOCK * PANEL_ROWS / 2;

/// Wraps every 4-bit weight product the fused kernels can take; returns how many.
pub(super) fn accelerate_q4_matvecs(model: &mut TypedModel) -> usize {
    if !kernel_available() {
        return 0;
    }
    super::tuning::replace_ops(model, Q4MatVec::wrap)
}

/// One product `c = W x` with a constant Q4_0 weight `W` (`m x k`, packed by tract) and the
/// activations as input `b`; what the fused kernels do not take goes to `inner`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Q4MatVec {
    inner: OptMatMul,
    weight: EagerPackedInput,
    b_input: usize,
    m: usize,
    k: usize,
}

impl Q4MatVec {
    fn wrap(op: &OptMatMul) -> Option<Q4MatVec> {
        let [
            ProtoFusedSpec::AddMatMul { a: MatMulOperand::Const(a), b: MatMulOperand::Input(b_input), .. },
            ProtoFusedSpec::Store(_),
        ] = op.micro_ops.as_slice()
        else {
            return None;
        };
        if op.c_fact.datum_type != f32::datum_type() {
            return None;
        }
        let weight = a.downcast_ref::<EagerPackedInput>()?;
        let format = weight.fact.format.downcast_ref::<PackedBlockQuantFormat>()?;
        let expected = PackedBlockQuantFormat::new(&Q4_0, PANEL_ROWS, 16, false);
        let (m, k) = (weight.mn, weight.fact.k);
        let panels = m.div_ceil(PANEL_ROWS);
        if *format != expected
            || m == 0
            || k % BLOCK != 0
            || weight.panel_bytes != k / BLOCK * PANEL_BLOCK_BYTES
            || weight.packed.len() < panels * weight.panel_bytes
        {
            return None;
        }
        Some(Q4MatVec { inner: op.clone(), weight: weight.clone(), b_input: *b_input, m, k })
    }

    /// The activations in place, if `b` holds one f32 matrix packed by tract (panels of `r`
    /// columns, each `k` steps of `r` floats) and `wanted(n)`.
    fn columns<'a>(&self, b: &'a TValue, wanted: impl Fn(usize) -> bool) -> Option<Columns<'a>> {
        let packed = b.try_storage_as::<PackedMatrixStorage>().ok()?;
        if packed.values().len() != 1 {
            return None;
        }
        let value = packed.value().downcast_ref::<EagerPackedInput>()?;
        let format = value.fact.format.downcast_ref::<PackedFormat>()?;
        let (n, r, k) = (value.mn, format.r, value.fact.k);
        if format.dt != f32::datum_type() || k != self.k || r == 0 || n == 0 || !wanted(n) {
            return None;
        }
        if value.panel_bytes % 4 != 0 || value.packed.len() < n.div_ceil(r) * value.panel_bytes {
            return None;
        }
        let bytes = &value.packed[..n.div_ceil(r) * value.panel_bytes];
        // SAFETY: any four bytes are an f32; the slice is only used when aligned.
        let data = match unsafe { bytes.align_to::<f32>() } {
            (&[], floats, &[]) => Cow::Borrowed(floats),
            _ => Cow::Owned(bytes.chunks_exact(4).map(|b| f32::from_ne_bytes([b[0], b[1], b[2], b[3]])).collect()),
        };
        Columns::new(data, n, k, r, value.panel_bytes / 4)
    }
}

/// `n` columns of `k` activations (one per token) laid out as tract packs them: panels of `r`
/// columns, each `k` steps of `r` floats, `panel_floats` apart. Read where they are, since a
/// copy of a prompt chunk's activations cost more than a tenth of its products.
struct Columns<'a> {
    data: Cow<'a, [f32]>,
    n: usize,
    k: usize,
    r: usize,
    panel_floats: usize,
}

impl<'a> Columns<'a> {
    fn new(data: Cow<'a, [f32]>, n: usize, k: usize, r: usize, panel_floats: usize) -> Option<Columns<'a>> {
        let fits = n > 0 && r > 0 && panel_floats >= k * r && data.len() >= n.div_ceil(r) * panel_floats;
        fits.then_some(Columns { data, n, k, r, panel_floats })
    }

    /// `n` rows of `k` floats, one after the other.
    #[cfg(test)]
    fn contiguous(rows: &'a [f32], n: usize, k: usize) -> Option<Columns<'a>> {
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
struct Outputs<'a> {
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
    fn new(out: &'a mut [f32], m: usize, n: usize, stride_m: usize, stride_n: usize) -> Outputs<'a> {
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

impl Op for Q4MatVec {
    fn name(&self) -> StaticName {
        "Q4MatVec".into()
    }

    tract_onnx::tract_core::op_as_typed_op!();
}

impl EvalOp for Q4MatVec {
    tract_onnx::tract_core::not_out_of_plan!();

    /// tract keeps the wrapped op's scratch space per session and frees it here.
    fn drop_session(&self, session: SessionId, node_id: usize) {
        self.inner.drop_session(session, node_id)
    }

    fn eval(&self, ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let c_shape = self.inner.c_fact.shape.eval_to_usize(ctx.symbols)?;
        let team = super::spin_team::current();
        let wanted = |n| self.handles(&c_shape, n);
        if let Some(columns) = inputs.get(self.b_input).and_then(|b| self.columns(b, wanted)) {
            let n = columns.n;
            let panels = &self.weight.packed[..self.m.div_ceil(PANEL_ROWS) * self.weight.panel_bytes];
            let strides = Tensor::natural_strides(&c_shape);
            let stride_of = |axis: Option<usize>| axis.map(|ax| strides[ax] as usize).unwrap_or(0);
            // SAFETY: `product` writes every element: all n rows of the m outputs.
            let mut c = unsafe { Tensor::uninitialized::<f32>(&c_shape)? };
            let mut view = c.try_as_plain_ram_mut()?;
            let outputs = Outputs::new(
                view.as_slice_mut::<f32>()?,
                self.m,
                n,
                stride_of(self.inner.c_m_axis),
                stride_of(self.inner.c_n_axis),
            );
            product(panels, &columns, &outputs, team.as_deref());
            return Ok(tvec!(c.into_tvalue()));
        }
        self.inner.eval(ctx, inputs)
    }
}

impl Q4MatVec {
    /// Whether the fused kernels take a product of `n` columns into an output of `c_shape`
    /// (nothing but m and n in it): one column always; several with AVX-512. On one thread
    /// tract's own tiles took a 77-token prompt as fast and a 20-token question 8% slower
    /// (3 alternating rounds); they gained nothing from a second thread, and ours do.
    fn handles(&self, c_shape: &[usize], n: usize) -> bool {
        let several_ok = wide_kernel_available();
        let m_ok = self.inner.c_m_axis.is_some_and(|ax| c_shape.get(ax) == Some(&self.m));
        let n_ok = match self.inner.c_n_axis {
            Some(ax) => c_shape.get(ax) == Some(&n),
            None => n == 1,
        };
        m_ok && n_ok && c_shape.iter().product::<usize>() == self.m * n && (n == 1 || several_ok)
    }
}

impl TypedOp for Q4MatVec {
    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        self.inner.output_facts(inputs)
    }

    tract_onnx::tract_core::as_op!();
}

fn kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2")
            && std::is_x86_feature_detected!("fma")
            && std::is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Products with fewer multiply-adds than this stay on the calling thread.
const PARALLEL_MIN_MACS: usize = 1 << 16;

/// Whether this CPU has the kernel for several columns (a prompt chunk).
pub(super) fn wide_kernel_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `W x` for the `n` columns into `outputs`, over whole panels, shared out over `team` when
/// there is one and the product is large enough.
fn product(panels: &[u8], columns: &Columns, outputs: &Outputs, team: Option<&SpinTeam>) {
    let (n, k) = (columns.n, columns.k);
    let panel_bytes = k / BLOCK * PANEL_BLOCK_BYTES;
    let n_panels = panels.len() / panel_bytes;
    debug_assert_eq!(n, outputs.n);
    debug_assert_eq!(n_panels, outputs.m.div_ceil(PANEL_ROWS));
    // sum(nibble * x) - 8 * sum(x) per block: the offset leaves the inner loop.
    let block_sums = columns.block_sums();
    let several = n > 1 && wide_kernel_available();
    let rows = if several { Cow::Borrowed(&[][..]) } else { columns.rows() };
    let run = |first: usize, count: usize| {
        let mut out = vec![0f32; n * PANEL_ROWS];
        for p in first..(first + count).min(n_panels) {
            let panel = &panels[p * panel_bytes..][..panel_bytes];
            match several {
                // SAFETY: `several` means the CPU has AVX-512 (checked); the slices have the
                // kernel's sizes.
                #[cfg(target_arch = "x86_64")]
                true => unsafe { x86::panel_columns_avx512(panel, columns, &block_sums, &mut out) },
                _ => product_panel(panel, k, &rows, &block_sums, &mut out),
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
fn product_panel(panel: &[u8], k: usize, xs: &[f32], block_sums: &[f32], out: &mut [f32]) {
    let blocks = k / BLOCK;
    for ((x, sums), out) in
        xs.chunks_exact(k).zip(block_sums.chunks_exact(blocks)).zip(out.chunks_exact_mut(PANEL_ROWS))
    {
        #[cfg(target_arch = "x86_64")]
        if wide_kernel_available() {
            // SAFETY: the feature is present (checked) and the slices have the kernel's sizes.
            unsafe { x86::panel_avx512(panel, x, sums, out) };
            continue;
        }
        #[cfg(target_arch = "x86_64")]
        if kernel_available() {
            // SAFETY: the features are present (checked) and the slices have the kernel's sizes.
            unsafe { x86::panel_avx2(panel, x, sums, out) };
            continue;
        }
        panel_scalar(panel, x, sums, out);
    }
}

/// The reference: one panel, value by value.
fn panel_scalar(panel: &[u8], x: &[f32], block_sums: &[f32], rows: &mut [f32]) {
    rows.fill(0.0);
    for (blk, (bytes, xs)) in panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.chunks_exact(BLOCK)).enumerate() {
        let (scales, nibbles) = bytes.split_at(PANEL_ROWS * 2);
        let mut acc = [0f32; PANEL_ROWS];
        for (pos, &xv) in xs.iter().enumerate() {
            for (j, &byte) in nibbles[pos * 16..][..16].iter().enumerate() {
                acc[j] += (byte & 0x0f) as f32 * xv;
                acc[j + 16] += (byte >> 4) as f32 * xv;
            }
        }
        for (r, out) in rows.iter_mut().enumerate() {
            let scale = f16::from_le_bytes([scales[2 * r], scales[2 * r + 1]]).to_f32();
            *out += (acc[r] - 8.0 * block_sums[blk]) * scale;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::{BLOCK, Columns, PANEL_BLOCK_BYTES, PANEL_ROWS};
    use std::arch::x86_64::*;

    /// [`super::panel_avx2`] with sixteen rows per register: per position, 16 bytes widen to
    /// sixteen lanes whose low and high nibbles are rows 0..16 and 16..32. Two positions at a
    /// time, in separate accumulators, to keep both FMA units fed.
    ///
    /// # Safety
    /// The CPU has AVX-512F; `panel` holds `x.len() / 32` blocks, `rows` 32 floats.
    #[target_feature(enable = "avx512f")]
    pub(super) unsafe fn panel_avx512(panel: &[u8], x: &[f32], block_sums: &[f32], rows: &mut [f32]) {
        assert!(panel.len() == x.len() / BLOCK * PANEL_BLOCK_BYTES && rows.len() == PANEL_ROWS);
        let low = _mm512_set1_epi32(0x0f);
        let (mut out_lo, mut out_hi) = (_mm512_setzero_ps(), _mm512_setzero_ps());
        for ((bytes, xs), &block_sum) in
            panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.chunks_exact(BLOCK)).zip(block_sums)
        {
            let (scales, nibbles) = bytes.split_at(PANEL_ROWS * 2);
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
    pub(super) unsafe fn panel_columns_avx512(panel: &[u8], columns: &Columns, block_sums: &[f32], rows: &mut [f32]) {
        let (n, k) = (columns.n, columns.k);
        let blocks = k / BLOCK;
        assert!(panel.len() == blocks * PANEL_BLOCK_BYTES && block_sums.len() == n * blocks);
        assert!(rows.len() == n * PANEL_ROWS);
        let low = _mm512_set1_epi32(0x0f);
        // The outputs change once per block: they live in `rows`, a tile's sums in registers.
        rows.fill(0.0);
        let mut weights = [_mm512_setzero_ps(); 2 * BLOCK];
        for (blk, bytes) in panel.chunks_exact(PANEL_BLOCK_BYTES).enumerate() {
            let (scales, nibbles) = bytes.split_at(PANEL_ROWS * 2);
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

    /// [`super::panel_scalar`] with eight rows per register: per position, 16 bytes become
    /// 32 floats that meet the broadcast activation in four FMAs.
    ///
    /// # Safety
    /// The CPU has AVX2, FMA and F16C; `panel` holds `x.len() / 32` blocks, `rows` 32 floats.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn panel_avx2(panel: &[u8], x: &[f32], block_sums: &[f32], rows: &mut [f32]) {
        assert!(panel.len() == x.len() / BLOCK * PANEL_BLOCK_BYTES && rows.len() == PANEL_ROWS);
        let low = _mm256_set1_epi32(0x0f);
        let mut out = [_mm256_setzero_ps(); 4];
        for ((bytes, xs), &block_sum) in
            panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.chunks_exact(BLOCK)).zip(block_sums)
        {
            let (scales, nibbles) = bytes.split_at(PANEL_ROWS * 2);
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
}

#[cfg(test)]
mod tests {
    use super::*;
    use tract_linalg::block_quant::BlockQuant;

    /// Q4_0 blocks of an `m x k` matrix in GGML's layout, and the values they stand for.
    fn random_q4(m: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
        let mut state = seed;
        let mut next = || {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 33) as u32
        };
        let (mut bytes, mut values) = (vec![], vec![0f32; m * k]);
        for row in 0..m {
            for blk in 0..k / BLOCK {
                let scale = f16::from_f32((next() % 1000) as f32 / 20000.0 + 0.001);
                bytes.extend_from_slice(&scale.to_le_bytes());
                let nibbles: Vec<u8> = (0..BLOCK).map(|_| (next() % 16) as u8).collect();
                for j in 0..16 {
                    bytes.push(nibbles[j] | (nibbles[j + 16] << 4));
                }
                for (j, &q) in nibbles.iter().enumerate() {
                    values[row * k + blk * BLOCK + j] = (q as f32 - 8.0) * scale.to_f32();
                }
            }
        }
        (bytes, values)
    }

    /// Every kernel this CPU has, and the scalar reference, on tract's own packing of a weight,
    /// agree with the product computed in f64 from the values the GGML blocks stand for (padding
    /// rows included), for one column and several, on one thread and split over two.
    #[test]
    fn fused_product_equals_the_dequantized_product() -> TractResult<()> {
        for (m, k) in [(64, 64), (96, 576), (40, 128), (320, 576)] {
            let (ggml, values) = random_q4(m, k, (m * k) as u64);
            let packed = Q4_0.pack(&ggml, k, PANEL_ROWS, 16, false)?;
            let panels = m.div_ceil(PANEL_ROWS);
            let panel_bytes = packed.panel_bytes;
            assert_eq!(panel_bytes, k / BLOCK * PANEL_BLOCK_BYTES);
            let weights = &packed.packed[..panels * panel_bytes];
            let x: Vec<f32> = (0..k).map(|i| ((i as f32) * 0.37).sin()).collect();
            let expected: Vec<f64> =
                (0..m).map(|r| (0..k).map(|c| values[r * k + c] as f64 * x[c] as f64).sum()).collect();
            let block_sums: Vec<f32> = x.chunks_exact(BLOCK).map(|b| b.iter().sum()).collect();
            let per_panel = |kernel: &dyn Fn(&[u8], &mut [f32])| {
                let mut rows = vec![0f32; panels * PANEL_ROWS];
                for (p, out) in rows.chunks_exact_mut(PANEL_ROWS).enumerate() {
                    kernel(&weights[p * panel_bytes..][..panel_bytes], out);
                }
                rows
            };
            let mut kernels = vec![("scalar", per_panel(&|panel, out| panel_scalar(panel, &x, &block_sums, out)))];
            #[cfg(target_arch = "x86_64")]
            {
                if kernel_available() {
                    // SAFETY: the features are present (checked) and the sizes are the kernel's.
                    kernels.push((
                        "avx2",
                        per_panel(&|panel, out| unsafe { x86::panel_avx2(panel, &x, &block_sums, out) }),
                    ));
                }
                if wide_kernel_available() {
                    // SAFETY: as above.
                    kernels.push((
                        "avx512",
                        per_panel(&|panel, out| unsafe { x86::panel_avx512(panel, &x, &block_sums, out) }),
                    ));
                }
            }
            for (name, rows) in &kernels {
                for r in 0..m {
                    let tolerance = 1e-4 * (1.0 + expected[r].abs());
                    let got = rows[r] as f64;
                    assert!((got - expected[r]).abs() < tolerance, "{name}, {m}x{k} row {r}: {got} vs {}", expected[r]);
                }
            }
            // Several columns: column t is x scaled by (t + 1), so its products are expected's.
            // They come as rows, or packed in panels of 16 as tract does, with NaN in the
            // padding, which must not be read; the outputs go to rows of m, or transposed.
            let team = SpinTeam::new(2)?;
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
                for ((layout, columns), (label, team)) in
                    layouts.iter().flat_map(|l| [(l, ("one thread", None)), (l, ("two threads", Some(&team)))])
                {
                    for (stride_m, stride_n) in [(1, m), (n, 1)] {
                        let mut out = vec![f32::NAN; m * n];
                        product(weights, columns, &Outputs::new(&mut out, m, n, stride_m, stride_n), team);
                        for t in 0..n {
                            for (row, expected) in expected.iter().enumerate() {
                                let got = out[t * stride_n + row * stride_m] as f64;
                                let want = expected * (t + 1) as f64;
                                let tolerance = 1e-4 * (1.0 + want.abs());
                                assert!(
                                    (got - want).abs() < tolerance,
                                    "{n} columns as {layout}, {label}, stride_m {stride_m}: {got} vs {want}"
                                );
                            }
                        }
                    }
                }
            }
        }
        Ok(())
    }
}
