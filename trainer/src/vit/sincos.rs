//! MAE's fixed 2-D sin-cos position table (`util/pos_embed.py::get_2d_sincos_pos_embed`).

use burn::tensor::{Tensor, TensorData, backend::Backend};

/// MAE `get_2d_sincos_pos_embed(dim, grid, cls_token=True)` as a `[1, 1 + grid^2, dim]` tensor.
///
/// For the patch in row `i`, column `j` (index `i * grid + j`), with `q = dim / 4` and
/// `w_k = 1 / 10000^(k / q)`: columns `[0, q)` are `sin(j w_k)`, `[q, 2q)` `cos(j w_k)`,
/// `[2q, 3q)` `sin(i w_k)`, `[3q, 4q)` `cos(i w_k)` (MAE's meshgrid puts the column
/// coordinate first). Row 0 (class token) is zeros. Computed in f64 like numpy.
pub fn sincos_pos_embed_2d<B: Backend>(
    dim: usize,
    grid: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    let table = sincos_pos_embed_2d_values(dim, grid);
    Tensor::from_data(TensorData::new(table, [1, 1 + grid * grid, dim]), device)
}

/// The values of [`sincos_pos_embed_2d`], row-major `[1 + grid^2, dim]`.
pub fn sincos_pos_embed_2d_values(dim: usize, grid: usize) -> Vec<f32> {
    let q = dim / 4;
    let mut table = vec![0f32; (1 + grid * grid) * dim];
    for i in 0..grid {
        for j in 0..grid {
            let row = &mut table[(1 + i * grid + j) * dim..][..dim];
            for k in 0..q {
                let omega = 1.0 / 10000f64.powf(k as f64 / q as f64);
                let (a, b) = (j as f64 * omega, i as f64 * omega);
                row[k] = a.sin() as f32;
                row[q + k] = a.cos() as f32;
                row[2 * q + k] = b.sin() as f32;
                row[3 * q + k] = b.cos() as f32;
            }
        }
    }
    table
}
