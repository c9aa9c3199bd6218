//! Row-by-row walks over two strided layouts of the same shape.
//!
//! Element-wise kernels on strided operands (broadcast views with stride-0 dims, transposes,
//! slices) used to visit every element through [`StridedIter`](crate::strided_index::StridedIter),
//! which advances an odometer over all dims per element. Here the two layouts are first
//! coalesced (size-1 dims dropped, neighbouring dims merged where both layouts are contiguous
//! across them), then walked as rows: the innermost coalesced dim is a plain loop with a fixed
//! step per operand (1, 0 or any), which the compiler vectorises for steps 1 and 0, and only
//! the outer dims go through the odometer, once per row.

use alloc::vec;
use alloc::vec::Vec;

use crate::layout::Layout;

/// A joint row-major walk of two same-shape layouts, dims coalesced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RowWalk2 {
    /// Sizes of the outer (non-row) dims, outermost first.
    outer_shape: Vec<usize>,
    /// Strides of `a` and `b` along the outer dims.
    a_outer: Vec<isize>,
    b_outer: Vec<isize>,
    /// Storage index of the first element of `a` and `b`.
    a_offset: isize,
    b_offset: isize,
    /// Elements per row (the coalesced innermost dim).
    pub(crate) row_len: usize,
    /// Step between neighbouring row elements in `a` and in `b`.
    pub(crate) a_step: isize,
    pub(crate) b_step: isize,
    /// Number of rows (product of `outer_shape`).
    num_rows: usize,
}

impl RowWalk2 {
    /// Coalesce `a` and `b` (which must have the same shape) into a row walk.
    pub(crate) fn new(a: &Layout, b: &Layout) -> Self {
        let shape = a.shape().as_slice();
        debug_assert_eq!(shape, b.shape().as_slice(), "RowWalk2: shape mismatch");
        let (mut dims, mut a_strides, mut b_strides) = coalesce2(shape, a.strides(), b.strides());
        let row_len = dims.pop().unwrap_or(1);
        let a_step = a_strides.pop().unwrap_or(0);
        let b_step = b_strides.pop().unwrap_or(0);
        let num_rows = dims.iter().product();
        Self {
            outer_shape: dims,
            a_outer: a_strides,
            b_outer: b_strides,
            a_offset: a.start_offset() as isize,
            b_offset: b.start_offset() as isize,
            row_len,
            a_step,
            b_step,
            num_rows,
        }
    }

    /// Call `f(a_start, b_start)` once per row, in row-major order, with the storage index
    /// of the row's first element in `a` and in `b`. Element `j` of the row is at
    /// `a_start + j * a_step` and `b_start + j * b_step`. Nothing is called for empty tensors.
    #[inline]
    pub(crate) fn for_each_row(&self, mut f: impl FnMut(isize, isize)) {
        if self.row_len == 0 || self.num_rows == 0 {
            return;
        }
        let ndims = self.outer_shape.len();
        let mut index = vec![0usize; ndims];
        let (mut a, mut b) = (self.a_offset, self.b_offset);
        for _ in 0..self.num_rows {
            f(a, b);
            for d in (0..ndims).rev() {
                index[d] += 1;
                if index[d] < self.outer_shape[d] {
                    a += self.a_outer[d];
                    b += self.b_outer[d];
                    break;
                }
                index[d] = 0;
                let back = self.outer_shape[d] as isize - 1;
                a -= back * self.a_outer[d];
                b -= back * self.b_outer[d];
            }
        }
    }
}

/// Drop size-1 dims and merge each dim into its outer neighbour when both layouts step
/// across the boundary as if contiguous (`outer_stride == inner_stride * inner_size`).
/// Returns at least one dim (`[1]` with strides 0 for a single element).
fn coalesce2(shape: &[usize], a: &[isize], b: &[isize]) -> (Vec<usize>, Vec<isize>, Vec<isize>) {
    let mut dims: Vec<usize> = Vec::with_capacity(shape.len());
    let mut a_strides: Vec<isize> = Vec::with_capacity(shape.len());
    let mut b_strides: Vec<isize> = Vec::with_capacity(shape.len());
    for d in 0..shape.len() {
        let size = shape[d];
        if size == 1 {
            continue;
        }
        if let (Some(last), Some(la), Some(lb)) =
            (dims.last_mut(), a_strides.last_mut(), b_strides.last_mut())
            && *la == a[d] * size as isize
            && *lb == b[d] * size as isize
        {
            *last *= size;
            *la = a[d];
            *lb = b[d];
            continue;
        }
        dims.push(size);
        a_strides.push(a[d]);
        b_strides.push(b[d]);
    }
    if dims.is_empty() {
        dims.push(1);
        a_strides.push(0);
        b_strides.push(0);
    }
    (dims, a_strides, b_strides)
}

/// `op(lhs, rhs)` element-wise over two same-shape strided operands, into a new row-major
/// buffer. Rows where both operands step by 1 or 0 are plain loops the compiler vectorises.
pub(crate) fn binary_rows<E, R, Op>(
    lhs: &[E],
    lhs_layout: &Layout,
    rhs: &[E],
    rhs_layout: &Layout,
    op: Op,
) -> Vec<R>
where
    E: Copy,
    Op: Fn(E, E) -> R,
{
    let walk = RowWalk2::new(lhs_layout, rhs_layout);
    let len = walk.row_len;
    let mut out: Vec<R> = Vec::with_capacity(lhs_layout.num_elements());
    match (walk.a_step, walk.b_step) {
        (1, 1) => walk.for_each_row(|a, b| {
            let (a, b) = (a as usize, b as usize);
            let rows = lhs[a..a + len].iter().zip(&rhs[b..b + len]);
            out.extend(rows.map(|(&x, &y)| op(x, y)));
        }),
        (1, 0) => walk.for_each_row(|a, b| {
            let (a, y) = (a as usize, rhs[b as usize]);
            out.extend(lhs[a..a + len].iter().map(|&x| op(x, y)));
        }),
        (0, 1) => walk.for_each_row(|a, b| {
            let (x, b) = (lhs[a as usize], b as usize);
            out.extend(rhs[b..b + len].iter().map(|&y| op(x, y)));
        }),
        (sa, sb) => walk.for_each_row(|a, b| {
            out.extend(
                (0..len as isize)
                    .map(|j| op(lhs[(a + j * sa) as usize], rhs[(b + j * sb) as usize])),
            );
        }),
    }
    out
}

/// `dst = op(dst, rhs)` in place, where `dst` holds a row-major operand of `dst_layout`'s
/// shape from index 0 and `rhs` is any same-shape strided operand.
pub(crate) fn binary_rows_inplace<E, Op>(
    dst: &mut [E],
    dst_layout: &Layout,
    rhs: &[E],
    rhs_layout: &Layout,
    op: Op,
) where
    E: Copy,
    Op: Fn(E, E) -> E,
{
    debug_assert!(dst_layout.is_contiguous() && dst_layout.start_offset() == 0);
    let walk = RowWalk2::new(dst_layout, rhs_layout);
    let len = walk.row_len;
    match (walk.a_step, walk.b_step) {
        (1, 1) => walk.for_each_row(|a, b| {
            let (a, b) = (a as usize, b as usize);
            for (x, &y) in dst[a..a + len].iter_mut().zip(&rhs[b..b + len]) {
                *x = op(*x, y);
            }
        }),
        (1, 0) => walk.for_each_row(|a, b| {
            let (a, y) = (a as usize, rhs[b as usize]);
            for x in dst[a..a + len].iter_mut() {
                *x = op(*x, y);
            }
        }),
        (sa, sb) => walk.for_each_row(|a, b| {
            for j in 0..len as isize {
                let i = (a + j * sa) as usize;
                dst[i] = op(dst[i], rhs[(b + j * sb) as usize]);
            }
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::strided_index::StridedIter;
    use burn_std::Shape;

    /// Reference: the per-element iterator the row walk replaces.
    fn reference(l: &[f32], ll: &Layout, r: &[f32], rl: &Layout) -> Vec<f32> {
        StridedIter::new(ll)
            .zip(StridedIter::new(rl))
            .map(|(i, j)| l[i] * 3.0 - r[j])
            .collect()
    }

    fn data(n: usize) -> Vec<f32> {
        (0..n).map(|i| (i as f32 * 0.37).sin() * 10.0).collect()
    }

    /// Layouts of shape `shape` over buffers: contiguous, broadcast, transposed, sliced,
    /// flipped; every pair is checked against the reference.
    fn layouts(shape: &[usize]) -> Vec<(Vec<f32>, Layout)> {
        let n: usize = shape.iter().product();
        let nd = shape.len();
        let mut out = vec![(data(n), Layout::contiguous(Shape::from(shape.to_vec())))];
        // Broadcast along each dim, and along all leading dims (a bias row).
        for d in 0..nd {
            let mut small = shape.to_vec();
            small[d] = 1;
            let base = Layout::contiguous(Shape::from(small.clone()));
            let mut strides = base.strides().to_vec();
            strides[d] = 0;
            out.push((
                data(small.iter().product()),
                Layout::new(Shape::from(shape.to_vec()), strides, 0),
            ));
        }
        let row = shape[nd - 1];
        let mut strides = vec![0isize; nd];
        strides[nd - 1] = 1;
        out.push((
            data(row + 2),
            Layout::new(Shape::from(shape.to_vec()), strides, 2),
        ));
        // Transposed storage of the reversed shape.
        if nd >= 2 {
            let mut rev = shape.to_vec();
            rev.swap(nd - 2, nd - 1);
            out.push((
                data(n),
                Layout::contiguous(Shape::from(rev)).transpose(nd - 2, nd - 1),
            ));
        }
        // A slice of a wider buffer along the last dim, starting at an offset.
        let mut wide = shape.to_vec();
        wide[nd - 1] += 3;
        let wn: usize = wide.iter().product();
        out.push((
            data(wn),
            Layout::contiguous(Shape::from(wide)).narrow(nd - 1, 2, row),
        ));
        // Flipped along the first dim.
        out.push((
            data(n),
            Layout::contiguous(Shape::from(shape.to_vec())).flip(&[0]),
        ));
        out
    }

    #[test]
    fn matches_strided_iter_on_all_layout_pairs() {
        for shape in [
            vec![7],
            vec![1],
            vec![3, 5],
            vec![1, 6],
            vec![4, 1],
            vec![2, 3, 5],
            vec![2, 1, 3, 4],
            vec![3, 4, 17],
        ] {
            let all = layouts(&shape);
            for (l, ll) in &all {
                for (r, rl) in &all {
                    let want = reference(l, ll, r, rl);
                    let got = binary_rows(l, ll, r, rl, |x, y| x * 3.0 - y);
                    assert_eq!(got, want, "shape {shape:?}, lhs {ll:?}, rhs {rl:?}");
                    if ll.is_contiguous() && ll.start_offset() == 0 {
                        let mut dst = l[..ll.num_elements()].to_vec();
                        binary_rows_inplace(&mut dst, ll, r, rl, |x, y| x * 3.0 - y);
                        assert_eq!(dst, want, "in place: shape {shape:?}, rhs {rl:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn coalesces_contiguous_and_broadcast_runs() {
        // [2, 3, 4] contiguous + a [4] bias row broadcast over [2, 3]: the two outer dims
        // merge (contiguous in one, broadcast in the other), the row stays 4 long.
        let a = Layout::contiguous(Shape::from(vec![2, 3, 4]));
        let b = Layout::new(Shape::from(vec![2, 3, 4]), vec![0, 0, 1], 0);
        let walk = RowWalk2::new(&a, &b);
        assert_eq!((walk.row_len, walk.a_step, walk.b_step), (4, 1, 1));
        assert_eq!(walk.outer_shape, vec![6]);
        // Two contiguous operands are one row.
        let walk = RowWalk2::new(&a, &a);
        assert_eq!((walk.row_len, walk.outer_shape.len()), (24, 0));
        // Empty tensors call nothing.
        let e = Layout::contiguous(Shape::from(vec![3, 0, 2]));
        let mut calls = 0;
        RowWalk2::new(&e, &e).for_each_row(|_, _| calls += 1);
        assert_eq!(calls, 0);
    }
}
