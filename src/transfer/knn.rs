//! Weighted k-nearest-neighbour classifier on frozen features (Wu et al. 2018, as used across the
//! self-supervised literature): cosine similarity, the k most similar training examples vote with
//! weight exp(similarity / temperature).

use burn::prelude::*;

fn l2_normalize(x: &mut [f32], dim: usize) {
    for row in x.chunks_mut(dim) {
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
        row.iter_mut().for_each(|v| *v /= norm);
    }
}

#[allow(clippy::too_many_arguments)]
pub fn knn_accuracy(
    train_x: Vec<f32>,
    train_y: &[u32],
    test_x: Vec<f32>,
    test_y: &[u32],
    dim: usize,
    classes: usize,
    k: usize,
    temperature: f32,
    device: &Device,
) -> f32 {
    let pred = knn_predict(
        train_x,
        train_y,
        test_x,
        dim,
        classes,
        k,
        temperature,
        device,
    );
    super::scores::accuracy(&pred, test_y)
}

/// The class each test row gets from its k nearest training rows (cosine similarity, votes
/// weighted by exp(similarity / temperature)).
#[allow(clippy::too_many_arguments)]
pub fn knn_predict(
    mut train_x: Vec<f32>,
    train_y: &[u32],
    mut test_x: Vec<f32>,
    dim: usize,
    classes: usize,
    k: usize,
    temperature: f32,
    device: &Device,
) -> Vec<u32> {
    let n_test = test_x.len() / dim.max(1);
    l2_normalize(&mut train_x, dim);
    l2_normalize(&mut test_x, dim);
    let n_train = train_y.len();
    let k = k.min(n_train).max(1);
    // [dim, n_train], the right-hand side of every similarity product.
    let train_t =
        Tensor::<2>::from_data(TensorData::new(train_x, [n_train, dim]), device).transpose();
    let mut predictions = Vec::with_capacity(n_test);
    let chunk = (16_000_000 / n_train.max(1)).clamp(1, 1024);
    for rows in test_x.chunks(chunk * dim) {
        let n = rows.len() / dim;
        let q = Tensor::<2>::from_data(TensorData::new(rows.to_vec(), [n, dim]), device);
        // [n, dim] × [dim, n_train] → cosine similarities [n, n_train]
        let sims = q
            .matmul(train_t.clone())
            .into_data()
            .try_into_vec::<f32>()
            .expect("f32 sims");
        let mut order: Vec<usize> = (0..n_train).collect();
        for r in 0..n {
            let s = &sims[r * n_train..(r + 1) * n_train];
            order.iter_mut().enumerate().for_each(|(i, o)| *o = i);
            if k < n_train {
                order.select_nth_unstable_by(k - 1, |&a, &b| s[b].total_cmp(&s[a]));
            }
            let mut votes = vec![0f32; classes];
            for &j in &order[..k] {
                votes[train_y[j] as usize] += (s[j] / temperature).exp();
            }
            let pred = votes
                .iter()
                .enumerate()
                .max_by(|a, b| a.1.total_cmp(b.1))
                .map_or(0, |(c, _)| c);
            predictions.push(pred as u32);
        }
    }
    predictions
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_neighbours_vote() {
        // Class 0 points along +x, class 1 along +y; queries near each axis.
        let train = vec![1.0, 0.1, 0.9, 0.0, 0.1, 1.0, 0.0, 0.8];
        let ty = [0, 0, 1, 1];
        let test = vec![1.0, 0.2, 0.2, 1.0, 0.7, 0.0];
        let ey = [0, 1, 0];
        let acc = knn_accuracy(train, &ty, test, &ey, 2, 2, 2, 0.1, &Device::flex());
        assert_eq!(acc, 1.0);
        // With labels flipped the same neighbours give every answer wrong.
        let train = vec![1.0, 0.1, 0.9, 0.0, 0.1, 1.0, 0.0, 0.8];
        let acc = knn_accuracy(
            train,
            &[1, 1, 0, 0],
            vec![1.0, 0.2],
            &[0],
            2,
            2,
            2,
            0.1,
            &Device::flex(),
        );
        assert_eq!(acc, 0.0);
    }
}
