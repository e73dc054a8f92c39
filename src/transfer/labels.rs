//! Drawing the few labels: class-balanced subsets chosen by seed, and a held-out split for data
//! without a test set.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::error::{Error, Result};

/// How many labelled examples per class the downstream task gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PerClass {
    N(usize),
    All,
}

impl PerClass {
    pub fn parse(s: &str) -> Result<Self> {
        if s == "all" {
            return Ok(Self::All);
        }
        match s.parse::<usize>() {
            Ok(0) | Err(_) => Err(Error::Usage(format!(
                "--labels-per-class {s}: expected a positive whole number or 'all'"
            ))),
            Ok(n) => Ok(Self::N(n)),
        }
    }

    pub fn label(&self) -> String {
        match self {
            Self::N(n) => n.to_string(),
            Self::All => "all".into(),
        }
    }
}

/// Indices of a class-balanced subset: `per_class` examples of every class present, drawn by `seed`.
pub fn balanced_subset(labels: &[u32], per_class: PerClass, seed: u64) -> Result<Vec<usize>> {
    let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for (c, idx) in by_class.iter_mut().enumerate() {
        if idx.is_empty() {
            continue;
        }
        idx.shuffle(&mut rng);
        let take = match per_class {
            PerClass::All => idx.len(),
            PerClass::N(n) if n <= idx.len() => n,
            PerClass::N(n) => {
                return Err(Error::Usage(format!(
                    "--labels-per-class {n}: class {c} has only {} labelled examples",
                    idx.len()
                )))
            }
        };
        out.extend_from_slice(&idx[..take]);
    }
    out.sort_unstable();
    Ok(out)
}

/// Split indices into (train, held-out) with `frac` of every class held out.
pub fn holdout_split(labels: &[u32], frac: f64, seed: u64) -> (Vec<usize>, Vec<usize>) {
    let classes = labels.iter().copied().max().map_or(0, |m| m as usize + 1);
    let mut by_class: Vec<Vec<usize>> = vec![Vec::new(); classes];
    for (i, &l) in labels.iter().enumerate() {
        by_class[l as usize].push(i);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_0ff5);
    let (mut train, mut test) = (Vec::new(), Vec::new());
    for idx in by_class.iter_mut() {
        idx.shuffle(&mut rng);
        let k = ((idx.len() as f64 * frac).round() as usize).min(idx.len().saturating_sub(1));
        test.extend_from_slice(&idx[..k]);
        train.extend_from_slice(&idx[k..]);
    }
    train.sort_unstable();
    test.sort_unstable();
    (train, test)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_and_seeded() {
        let labels: Vec<u32> = (0..100).map(|i| (i % 4) as u32).collect();
        let a = balanced_subset(&labels, PerClass::N(3), 1).unwrap();
        assert_eq!(a.len(), 12);
        for c in 0..4 {
            assert_eq!(a.iter().filter(|&&i| labels[i] == c).count(), 3);
        }
        assert_eq!(a, balanced_subset(&labels, PerClass::N(3), 1).unwrap());
        assert_ne!(a, balanced_subset(&labels, PerClass::N(3), 2).unwrap());
        assert_eq!(
            balanced_subset(&labels, PerClass::All, 0).unwrap().len(),
            100
        );
        let err = balanced_subset(&labels, PerClass::N(26), 0).unwrap_err();
        assert!(err.to_string().contains("only 25"), "{err}");
        assert!(PerClass::parse("0").is_err());
        assert_eq!(PerClass::parse("all").unwrap(), PerClass::All);
    }

    #[test]
    fn holdout_is_disjoint_and_covers() {
        let labels: Vec<u32> = (0..50).map(|i| (i % 5) as u32).collect();
        let (tr, te) = holdout_split(&labels, 0.2, 0);
        assert_eq!(tr.len() + te.len(), 50);
        assert_eq!(te.len(), 10);
        assert!(tr.iter().all(|i| !te.contains(i)));
    }
}
