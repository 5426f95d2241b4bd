//! 2-D rotary position embedding of JiT (the reference's `VisionRotaryEmbeddingFast`,
//! `freqs_for = "lang"`, `theta = 10000`, fine grid = pretraining grid).
//!
//! Layout of one head of dimension `d` on a `g × g` token grid (token `n = row·g + col`):
//! - the first `d/2` channels rotate with the row index, the last `d/2` with the column index;
//! - inside each half, channels `(2k, 2k + 1)` form one rotated pair with angle
//!   `pos · ω_k`, `ω_k = 1 / 10000^(2k / (d/2))`, `k = 0 … d/4 − 1`;
//! - `rotate(x) = x·cos + rotate_half(x)·sin` with `rotate_half(…, a, b, …) = (…, −b, a, …)`
//!   on every pair.
//!
//! In-context class tokens (prepended before the patch tokens) get `cos = 1`, `sin = 0`:
//! they are not rotated. The tables are plain attributes in the reference (not in its
//! `state_dict`), so they are rebuilt here and never saved.

use candle_core::{DType, Device, Result, Tensor};

/// Angles `[g·g, head_dim]` (row-major tokens), computed in f32 like the reference.
pub fn rope_angles(head_dim: usize, grid: usize) -> Vec<f32> {
    let half = head_dim / 2; // the reference's `dim = hidden // heads // 2`
    let pairs = half / 2;
    let freqs: Vec<f32> = (0..pairs)
        .map(|k| 1.0f32 / 10000f32.powf((2 * k) as f32 / half as f32))
        .collect();
    // `arange(g) / g · g` (exactly the integer positions when g is a power of two).
    let pos: Vec<f32> = (0..grid)
        .map(|i| i as f32 / grid as f32 * grid as f32)
        .collect();
    let mut out = vec![0f32; grid * grid * head_dim];
    for row in 0..grid {
        for col in 0..grid {
            let base = (row * grid + col) * head_dim;
            for (axis, p) in [(0, pos[row]), (1, pos[col])] {
                for (k, f) in freqs.iter().enumerate() {
                    let a = p * f;
                    out[base + axis * half + 2 * k] = a;
                    out[base + axis * half + 2 * k + 1] = a;
                }
            }
        }
    }
    out
}

/// `(cos, sin)` tables `[num_cls + g·g, head_dim]`: `num_cls` unrotated rows (cos 1, sin 0)
/// followed by the patch tokens.
pub fn rope_tables(head_dim: usize, grid: usize, num_cls: usize) -> (Vec<f32>, Vec<f32>) {
    let angles = rope_angles(head_dim, grid);
    let mut cos = vec![1f32; num_cls * head_dim];
    let mut sin = vec![0f32; num_cls * head_dim];
    cos.extend(angles.iter().map(|&a| (a as f64).cos() as f32));
    sin.extend(angles.iter().map(|&a| (a as f64).sin() as f32));
    (cos, sin)
}

/// `(…, a, b, …) → (…, −b, a, …)` on consecutive pairs of the last dimension.
pub fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let dims = x.dims().to_vec();
    let d = *dims
        .last()
        .expect("rotate_half needs at least one dimension");
    let mut paired = dims.clone();
    paired.pop();
    paired.extend([d / 2, 2]);
    let x = x.reshape(paired)?; // [..., d/2, 2]
    let last = x.rank() - 1;
    let a = x.narrow(last, 0, 1)?;
    let b = x.narrow(last, 1, 1)?;
    Tensor::cat(&[&b.neg()?, &a], last)?.reshape(dims)
}

/// Rotary tables for one token layout (with or without the in-context class tokens).
pub struct Rope {
    table: Tensor, // [2, tokens, head_dim]: cos then sin
}

impl Rope {
    pub fn new(
        head_dim: usize,
        grid: usize,
        num_cls: usize,
        dtype: DType,
        device: &Device,
    ) -> Result<Self> {
        let (cos, sin) = rope_tables(head_dim, grid, num_cls);
        let n = num_cls + grid * grid;
        let t = |v: Vec<f32>| Tensor::from_vec(v, (n, head_dim), device)?.to_dtype(dtype);
        let table = Tensor::stack(&[t(cos)?, t(sin)?], 0)?; // [2, tokens, head_dim]
        Ok(Self { table })
    }

    /// `[2, tokens, head_dim]`: the cos table, then the sin table.
    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// Number of tokens the tables cover.
    pub fn len(&self) -> usize {
        self.table.dims()[1]
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Rotate `x` `[B, H, N, head_dim]` (N = [`Rope::len`]).
    pub fn apply(&self, x: &Tensor) -> Result<Tensor> {
        let (cos, sin) = (self.table.get(0)?, self.table.get(1)?); // [tokens, head_dim] each
        x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?
    }
}
