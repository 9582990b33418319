//! The scalar references of the 4-bit panel product, which every SIMD path is tested against,
//! for either placement of the scales: on f32 activations, and on activations rounded to 16
//! bits.

use half::f16;

use super::{BLOCK, PANEL_BLOCK_BYTES, PANEL_ROWS, QuantizedColumn, Scales};

/// The reference: one panel, value by value.
pub fn panel(panel: &[u8], placement: Scales, x: &[f32], block_sums: &[f32], rows: &mut [f32]) {
    rows.fill(0.0);
    for (blk, (bytes, xs)) in panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.chunks_exact(BLOCK)).enumerate() {
        let (scales, nibbles) = placement.split(bytes);
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

/// The reference of the products on activations rounded to 16 bits (one column of
/// [`super::Quantized`]): exact integer sums per block, then the two scales.
pub fn panel_i16(panel: &[u8], placement: Scales, x: QuantizedColumn, rows: &mut [f32]) {
    rows.fill(0.0);
    for (blk, (bytes, xs)) in panel.chunks_exact(PANEL_BLOCK_BYTES).zip(x.values.chunks_exact(BLOCK)).enumerate() {
        let (scales, nibbles) = placement.split(bytes);
        let mut acc = [0i32; PANEL_ROWS];
        for (pos, &xv) in xs.iter().enumerate() {
            for (j, &byte) in nibbles[pos * 16..][..16].iter().enumerate() {
                acc[j] += (byte & 0x0f) as i32 * xv as i32;
                acc[j + 16] += (byte >> 4) as i32 * xv as i32;
            }
        }
        for (r, out) in rows.iter_mut().enumerate() {
            let scale = f16::from_le_bytes([scales[2 * r], scales[2 * r + 1]]).to_f32();
            *out += (acc[r] - 8 * x.sums[blk]) as f32 * (scale * x.scales[blk]);
        }
    }
}
