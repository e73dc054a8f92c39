//! Which images are the labelled few and which are evaluated: the same for `transfer`, `compare`
//! and the k-NN monitor of a pretraining run, so their numbers are comparable.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::labels::{self, PerClass};
use crate::data::{Dataset, ImageSet};
use crate::error::{Error, Result};

/// The labelled training examples and the evaluation images of a dataset.
pub struct LabelledSplit<'a> {
    /// Indices into `dataset.train` of the labelled examples (`per_class` of every class).
    pub chosen: Vec<usize>,
    pub train_y: Vec<u32>,
    /// Indices into `dataset.train` of the images transfer may see unlabelled (the labelled
    /// few among them): the whole training split, or its 80% when 20% is held out to evaluate.
    pub pool: Vec<usize>,
    /// The evaluation set (the test split, or the training set's held-out 20%) and its indices.
    pub test_set: &'a ImageSet,
    pub test_idx: Vec<usize>,
    pub test_y: Vec<u32>,
    pub classes: usize,
    /// "test split" or "held-out 20% of train".
    pub evaluated_on: String,
}

/// At most `limit` of `idx` (0 = all), drawn uniformly by `seed` and kept in order: a limited
/// evaluation set covers every class even when the files are sorted by class.
pub fn sample_limit(idx: Vec<usize>, limit: usize, seed: u64) -> Vec<usize> {
    if limit == 0 || idx.len() <= limit {
        return idx;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x07e5_75e7);
    let mut picked: Vec<usize> = idx.choose_multiple(&mut rng, limit).copied().collect();
    picked.sort_unstable();
    picked
}

/// Which images transfer evaluates on: the test split (or, for data without one, the fixed
/// held-out 20% of the training images), or a validation split carved from the training
/// images that remain — what defaults are chosen on, so the test split is never tuned against.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EvalOn {
    Test,
    Validation,
}

/// The share of every class held out to evaluate on when the data has no test split (also
/// held out of pretraining: [`pretraining_images`]).
pub const HOLDOUT_FRACTION: f64 = 0.2;
/// The share of every class of the remaining training images that `eval_on = "validation"`
/// evaluates on (never labelled, never in the unlabelled pool).
pub const VALIDATION_FRACTION: f64 = 0.1;
/// Both carvings are fixed (not drawn with the labels), so every label draw, every method and
/// a pretraining run see the same sets.
const HOLDOUT_SEED: u64 = 0;
const VALIDATION_SEED: u64 = 1;

/// The training images a pretraining run may see, when the data's evaluation images are carved
/// from its training split (labelled data without a test split): all but the held-out 20%.
/// `None`: every training image.
pub fn pretraining_images(dataset: &Dataset) -> Option<Vec<usize>> {
    match (&dataset.test, &dataset.train.labels) {
        (Some(t), _) if t.labels.is_some() => None,
        (_, Some(labels)) => Some(labels::holdout_split(labels, HOLDOUT_FRACTION, HOLDOUT_SEED).0),
        _ => None,
    }
}

/// `per_class` labelled examples (drawn by `seed`) and the evaluation images (at most
/// `test_limit`; 0 = all) of a labelled dataset.
pub fn labelled_split(
    dataset: &Dataset,
    per_class: PerClass,
    test_limit: usize,
    seed: u64,
    eval_on: EvalOn,
) -> Result<LabelledSplit<'_>> {
    let labels = dataset.train.labels.as_ref().ok_or_else(|| {
        Error::Usage(format!(
            "{}: the training images have no labels, so there is nothing to transfer to",
            dataset.name
        ))
    })?;
    let (mut pool, mut test_set, mut test_idx, mut evaluated_on): (
        Vec<usize>,
        &ImageSet,
        Vec<usize>,
        String,
    ) = match &dataset.test {
        Some(t) if t.labels.is_some() => (
            (0..dataset.train.n).collect(),
            t,
            (0..t.n).collect(),
            "test split".into(),
        ),
        _ => {
            let (tr, te) = labels::holdout_split(labels, HOLDOUT_FRACTION, HOLDOUT_SEED);
            (tr, &dataset.train, te, "held-out 20% of train".into())
        }
    };
    if eval_on == EvalOn::Validation {
        let pool_labels: Vec<u32> = pool.iter().map(|&i| labels[i]).collect();
        let (rest, val) = labels::holdout_split(&pool_labels, VALIDATION_FRACTION, VALIDATION_SEED);
        test_set = &dataset.train;
        test_idx = val.iter().map(|&j| pool[j]).collect();
        pool = rest.iter().map(|&j| pool[j]).collect();
        evaluated_on = format!(
            "validation: {:.0}% of the training images",
            100.0 * VALIDATION_FRACTION
        );
    }
    let test_idx = sample_limit(test_idx, test_limit, seed);
    let pool_labels: Vec<u32> = pool.iter().map(|&i| labels[i]).collect();
    let chosen: Vec<usize> = labels::balanced_subset(&pool_labels, per_class, seed)?
        .into_iter()
        .map(|j| pool[j])
        .collect();
    let classes = dataset
        .classes
        .len()
        .max(labels.iter().copied().max().map_or(0, |m| m as usize + 1));
    let test_labels = test_set
        .labels
        .as_ref()
        .expect("evaluation set is labelled");
    Ok(LabelledSplit {
        train_y: chosen.iter().map(|&i| labels[i]).collect(),
        pool,
        chosen,
        test_y: test_idx.iter().map(|&i| test_labels[i]).collect(),
        test_set,
        test_idx,
        classes,
        evaluated_on,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limited_evaluation_set_is_a_seeded_sample_of_every_class() {
        // 1,000 items sorted by class (10 classes of 100), as a folder dataset is.
        let idx: Vec<usize> = (0..1000).collect();
        let a = sample_limit(idx.clone(), 100, 3);
        assert_eq!(a.len(), 100);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        let classes: std::collections::BTreeSet<usize> = a.iter().map(|i| i / 100).collect();
        assert_eq!(classes.len(), 10, "{classes:?}");
        assert_eq!(a, sample_limit(idx.clone(), 100, 3));
        assert_ne!(a, sample_limit(idx.clone(), 100, 4));
        assert_eq!(sample_limit(idx.clone(), 0, 3), idx);
    }
}
