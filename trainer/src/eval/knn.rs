//! DINO's weighted k-nearest-neighbour classifier (`eval_knn.py::knn_classifier`).
//!
//! Features are L2-normalised, so a matmul gives cosine similarities. Validation images go
//! in chunks small enough that a chunk's `[chunk, n_train]` similarity matrix stays within
//! [`MAX_SIMILARITIES`] values (DINO uses 100 test images a chunk); the top `k` training
//! images of each row are found on the device. Each neighbour then votes for its class with
//! weight `exp(sim / T)` and classes are ranked by their summed votes. The vote is on the
//! host: it is `chunk x k` numbers, and there the order of tied classes is defined (the
//! lower class index first) where PyTorch's `argsort` leaves it unspecified.

use burn::prelude::*;

use super::{EvalError, Features};

/// Most similarities held at once: a chunk of validation rows times the training set.
pub const MAX_SIMILARITIES: usize = 1 << 24;

/// Norms below this are treated as this (`F.normalize`'s eps is 1e-12).
const NORM_EPS: f32 = 1e-12;

/// The classifier's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnnSettings {
    /// Neighbours that vote. DINO: 20 (also reports 10, 100, 200). Capped at the
    /// training set's size.
    pub k: usize,
    /// Temperature of the votes `exp(sim / T)`. DINO: 0.07. Smaller lets the nearest
    /// neighbours dominate; large makes it a plain majority vote.
    pub temperature: f64,
}

impl Default for KnnSettings {
    fn default() -> Self {
        KnnSettings {
            k: 20,
            temperature: 0.07,
        }
    }
}

impl KnnSettings {
    pub(crate) fn check(&self) -> Result<(), EvalError> {
        if self.k == 0 {
            return Err(EvalError::setting("knn_k", "must be at least 1"));
        }
        if !(self.temperature.is_finite() && self.temperature > 0.0) {
            return Err(EvalError::setting(
                "knn_temperature",
                format!(
                    "{} must be a positive number (DINO: 0.07)",
                    self.temperature
                ),
            ));
        }
        Ok(())
    }
}

/// Accuracies of the classifier on the validation set.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KnnAccuracy {
    /// Share of validation images whose best-voted class is their label.
    pub top1: f64,
    /// Share whose label is among the 5 best-voted classes.
    pub top5: f64,
}

/// Rows scaled to unit length.
///
/// # Shapes
/// `x` `[n, d]` -> `[n, d]`.
fn l2_normalised<B: Backend>(x: Tensor<B, 2>) -> Tensor<B, 2> {
    let norm = x
        .clone()
        .powi_scalar(2)
        .sum_dim(1)
        .sqrt()
        .clamp_min(NORM_EPS); // [n, 1]
    x / norm
}

/// Classes ranked by the summed votes of the neighbours, best first, ties to the lower
/// class index. `scores` is scratch of `num_classes` entries (reused between calls).
pub fn weighted_vote(
    similarities: &[f32],
    neighbour_labels: &[usize],
    temperature: f64,
    scores: &mut [f64],
    ranking: &mut Vec<usize>,
) {
    scores.fill(0.0);
    for (&sim, &label) in similarities.iter().zip(neighbour_labels) {
        scores[label] += (f64::from(sim) / temperature).exp();
    }
    ranking.clear();
    ranking.extend(0..scores.len());
    ranking.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
}

/// Top-1 and top-5 accuracy of the weighted kNN vote over `train` for each image of `val`.
pub fn knn_accuracy<B: Backend>(
    train: &Features,
    val: &Features,
    num_classes: usize,
    settings: &KnnSettings,
    device: &B::Device,
) -> Result<KnnAccuracy, EvalError> {
    settings.check()?;
    if train.dim != val.dim {
        return Err(EvalError::setting(
            "features",
            format!(
                "train features are {} wide, val features {}",
                train.dim, val.dim
            ),
        ));
    }
    let (n_train, n_val) = (train.len(), val.len());
    if n_train == 0 || n_val == 0 {
        return Ok(KnnAccuracy {
            top1: 0.0,
            top5: 0.0,
        });
    }
    let k = settings.k.min(n_train);
    let bank = l2_normalised(train.tensor::<B>(device)).transpose(); // [d, n_train]
    let queries = l2_normalised(val.tensor::<B>(device)); // [n_val, d]
    let chunk = (MAX_SIMILARITIES / n_train).clamp(1, 1024);

    let mut scores = vec![0.0; num_classes];
    let mut ranking = Vec::with_capacity(num_classes);
    let mut neighbour_labels = Vec::with_capacity(k);
    let (mut top1, mut top5) = (0usize, 0usize);
    for start in (0..n_val).step_by(chunk) {
        let rows = chunk.min(n_val - start);
        let similarity = queries.clone().narrow(0, start, rows).matmul(bank.clone()); // [rows, n_train]
        let (sims, indices) = similarity.topk_with_indices(k, 1); // [rows, k]
        let sims = sims
            .into_data()
            .convert::<f32>()
            .into_vec::<f32>()
            .map_err(EvalError::tensor_data("neighbour similarities"))?;
        let indices = indices
            .into_data()
            .convert::<i64>()
            .into_vec::<i64>()
            .map_err(EvalError::tensor_data("neighbour indices"))?;
        for row in 0..rows {
            neighbour_labels.clear();
            neighbour_labels.extend(
                indices[row * k..(row + 1) * k]
                    .iter()
                    .map(|&i| train.labels[i as usize]),
            );
            weighted_vote(
                &sims[row * k..(row + 1) * k],
                &neighbour_labels,
                settings.temperature,
                &mut scores,
                &mut ranking,
            );
            let label = val.labels[start + row];
            top1 += usize::from(ranking.first() == Some(&label));
            top5 += usize::from(ranking.iter().take(5).any(|&c| c == label));
        }
    }
    Ok(KnnAccuracy {
        top1: top1 as f64 / n_val as f64,
        top5: top5 as f64 / n_val as f64,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::backend::Flex;
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    type B = Flex;

    fn knn(train: &Features, val: &Features, classes: usize, k: usize) -> KnnAccuracy {
        let settings = KnnSettings {
            k,
            ..KnnSettings::default()
        };
        knn_accuracy::<B>(train, val, classes, &settings, &Default::default()).unwrap()
    }

    #[test]
    fn nearest_direction_wins_whatever_the_length() {
        // Three classes along the axes; val points are scaled copies (cosine ignores length).
        let train = Features::new(
            vec![1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0],
            vec![0, 1, 2],
            3,
        );
        let val = Features::new(
            vec![5.0, 0.1, 0.0, 0.0, 0.0, 0.2, 0.1, 9.0, 0.0],
            vec![0, 2, 1],
            3,
        );
        let acc = knn(&train, &val, 3, 1);
        assert_eq!(acc.top1, 1.0);
        // With k = 3 every class gets a vote, but the nearest one's is exp(1/0.07) ≫ the rest.
        assert_eq!(knn(&train, &val, 3, 3).top1, 1.0);
        // One wrong label: 2 of 3 right; top-5 of 3 classes always holds the label.
        let wrong = Features::new(val.values.clone(), vec![1, 2, 1], 3);
        let acc = knn(&train, &wrong, 3, 1);
        assert!((acc.top1 - 2.0 / 3.0).abs() < 1e-12, "{acc:?}");
        assert_eq!(acc.top5, 1.0);
    }

    #[test]
    fn votes_are_weighted_by_similarity_and_ties_go_to_the_lower_class() {
        let (mut scores, mut ranking) = (vec![0.0; 3], Vec::new());
        // Two weak votes for class 2 lose to one strong vote for class 1 at T = 0.07:
        // exp(0.9/0.07) = 3.8e5 > 2 exp(0.5/0.07) = 2.5e3.
        weighted_vote(
            &[0.9, 0.5, 0.5],
            &[1, 2, 2],
            0.07,
            &mut scores,
            &mut ranking,
        );
        assert_eq!(ranking, [1, 2, 0]);
        // At a high temperature the same neighbours make a majority vote.
        weighted_vote(
            &[0.9, 0.5, 0.5],
            &[1, 2, 2],
            100.0,
            &mut scores,
            &mut ranking,
        );
        assert_eq!(ranking, [2, 1, 0]);
        // Equal votes for classes 2 and 0: the lower index ranks first, every time.
        weighted_vote(&[0.5, 0.5], &[2, 0], 0.07, &mut scores, &mut ranking);
        assert_eq!(ranking, [0, 2, 1]);
        assert_eq!(scores[0], scores[2]);
    }

    #[test]
    fn chunks_and_k_beyond_the_training_set_are_handled() {
        // 2500 val rows are three chunks of at most 1024; k = 20 is capped at n_train = 2.
        let train = Features::new(vec![1.0, 0.0, 0.0, 1.0], vec![0, 1], 2);
        let n = 2500;
        let values = (0..n)
            .flat_map(|i| if i % 2 == 0 { [1.0, 0.1] } else { [0.1, 1.0] })
            .collect();
        let labels = (0..n).map(|i| i % 2).collect();
        let val = Features::new(values, labels, 2);
        assert_eq!(knn(&train, &val, 2, 20).top1, 1.0);
    }

    /// Sanity check on raw data: noisy points around ten random centres, kNN on the raw
    /// coordinates, far above the 10% of chance.
    #[test]
    fn raw_separable_data_beats_chance() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let (classes, dim) = (10, 16);
        let centres: Vec<Vec<f32>> = (0..classes)
            .map(|_| (0..dim).map(|_| rng.random_range(-1.0..1.0)).collect())
            .collect();
        let mut draw = |n: usize| {
            let mut values = Vec::new();
            let mut labels = Vec::new();
            for i in 0..n {
                let c = i % classes;
                values.extend(
                    centres[c]
                        .iter()
                        .map(|&v| v + rng.random_range(-0.3f32..0.3)),
                );
                labels.push(c);
            }
            Features::new(values, labels, dim)
        };
        let train = draw(500);
        let val = draw(200);
        let acc = knn(&train, &val, classes, 20);
        assert!(acc.top1 > 0.9, "{acc:?}");
        assert!(acc.top5 >= acc.top1);
    }
}
