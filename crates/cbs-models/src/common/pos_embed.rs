//! Fixed 2-D sin-cos positional embedding, laid out as the reference (MAE/DiT) code does.

/// `[grid·grid, dim]` row-major, token `n = row·grid + col`.
///
/// The first `dim/2` channels encode the column index and the second half the row index (the
/// reference builds its mesh grid `w`-first); each half is `[sin(pos·ω), cos(pos·ω)]` with
/// `ω_k = 10000^(−k/(dim/4))`.
pub fn sincos_2d(dim: usize, grid: usize) -> Vec<f32> {
    let half = dim / 2;
    let quarter = half / 2;
    let omega: Vec<f64> = (0..quarter)
        .map(|k| 1.0 / 10000f64.powf(k as f64 / quarter as f64))
        .collect();
    let mut out = vec![0f32; grid * grid * dim];
    for row in 0..grid {
        for col in 0..grid {
            let base = (row * grid + col) * dim;
            for (axis, pos) in [(0, col as f64), (1, row as f64)] {
                let off = base + axis * half;
                for (k, w) in omega.iter().enumerate() {
                    out[off + k] = (pos * w).sin() as f32;
                    out[off + quarter + k] = (pos * w).cos() as f32;
                }
            }
        }
    }
    out
}
