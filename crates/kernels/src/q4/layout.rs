//! The packed panel layout the kernels read, written from GGML's Q4_0 blocks: what tract's
//! `Q4_0.pack(.., 32 rows, zip 16, scales_at_end)` produces (checked by the engine's tests;
//! tract's f32 kernels want the scales first on x86_64, last on aarch64), and what the
//! kernels' tests use without tract.

use super::{BLOCK, PANEL_BLOCK_BYTES, PANEL_ROWS, Scales};

/// Bytes of one GGML Q4_0 block: an f16 scale, then 16 bytes whose low nibbles are values
/// 0..16 and high nibbles values 16..32.
pub const GGML_BLOCK_BYTES: usize = 2 + BLOCK / 2;

/// Packs an `m x k` matrix of GGML Q4_0 blocks (row after row) into panels of 32 rows, each
/// block's scales placed as `placement` says; rows past `m` in the last panel are zero.
pub fn pack(ggml: &[u8], m: usize, k: usize, placement: Scales) -> Vec<u8> {
    assert!(k.is_multiple_of(BLOCK) && ggml.len() == m * k / BLOCK * GGML_BLOCK_BYTES);
    let blocks = k / BLOCK;
    let panels = m.div_ceil(PANEL_ROWS);
    let mut packed = vec![0u8; panels * blocks * PANEL_BLOCK_BYTES];
    for (p, panel) in packed.chunks_exact_mut(blocks * PANEL_BLOCK_BYTES).enumerate() {
        for (blk, out) in panel.chunks_exact_mut(PANEL_BLOCK_BYTES).enumerate() {
            let (scales, nibbles) = match placement {
                Scales::First => out.split_at_mut(PANEL_ROWS * 2),
                Scales::Last => {
                    let (nibbles, scales) = out.split_at_mut(BLOCK * PANEL_ROWS / 2);
                    (scales, nibbles)
                }
            };
            for r in 0..PANEL_ROWS.min(m - p * PANEL_ROWS) {
                let row = p * PANEL_ROWS + r;
                let block = &ggml[(row * blocks + blk) * GGML_BLOCK_BYTES..][..GGML_BLOCK_BYTES];
                scales[2 * r..2 * r + 2].copy_from_slice(&block[..2]);
                for pos in 0..BLOCK {
                    let byte = block[2 + pos % 16];
                    let nibble = if pos < 16 { byte & 0x0f } else { byte >> 4 };
                    let (slot, shift) = (pos * 16 + r % 16, if r < 16 { 0 } else { 4 });
                    nibbles[slot] |= nibble << shift;
                }
            }
        }
    }
    packed
}

/// A deterministic pseudo-random `m x k` matrix as GGML Q4_0 blocks, and the values they
/// stand for: test and benchmark material.
pub fn example(m: usize, k: usize, seed: u64) -> (Vec<u8>, Vec<f32>) {
    let mut state = seed;
    let mut next = || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    let (mut bytes, mut values) = (Vec::with_capacity(m * k / 2 + m * k / 16), vec![0f32; m * k]);
    for row in 0..m {
        for blk in 0..k / BLOCK {
            let scale = half::f16::from_f32((next() % 1000) as f32 / 20000.0 + 0.001);
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
