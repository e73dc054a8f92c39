//! The jigsaw task's permutation set (Noroozi & Favaro 2016, §3.2): permutations of the 9 tiles
//! chosen greedily so that they are as far apart as possible in Hamming distance, which makes the
//! puzzle classes distinguishable and the task hard enough to need real features.
//!
//! Greedy max–min selection over all 9! = 362,880 permutations: start from a random one, then add,
//! again and again, the permutation whose smallest distance to the chosen ones is largest (ties
//! broken by a seeded shuffle). Deterministic given (size, seed).

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

/// One permutation: position j of the shuffled puzzle holds original tile `p[j]`.
pub type Perm = [u8; 9];

/// The chosen set with its statistics (saved as `permutations.json` in the run and checkpoints).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PermutationSet {
    pub seed: u64,
    pub perms: Vec<Perm>,
    /// Smallest Hamming distance between two permutations of the set.
    pub min_hamming: u32,
    /// Mean Hamming distance over all pairs.
    pub mean_hamming: f64,
}

/// Largest set size accepted (the greedy pass costs size × 9! distance evaluations).
pub const MAX_SIZE: usize = 5000;

fn pack(p: &Perm) -> u64 {
    p.iter()
        .enumerate()
        .fold(0u64, |acc, (i, &v)| acc | (v as u64) << (4 * i))
}

fn unpack(x: u64) -> Perm {
    let mut p = [0u8; 9];
    for (i, v) in p.iter_mut().enumerate() {
        *v = ((x >> (4 * i)) & 0xf) as u8;
    }
    p
}

/// Number of positions where two packed permutations differ.
#[inline]
fn hamming_packed(a: u64, b: u64) -> u32 {
    let x = a ^ b;
    ((x | x >> 1 | x >> 2 | x >> 3) & 0x1_1111_1111).count_ones()
}

pub fn hamming(a: &Perm, b: &Perm) -> u32 {
    a.iter().zip(b).filter(|(x, y)| x != y).count() as u32
}

/// All 9! permutations of 0..9 in lexicographic order, packed 4 bits per position.
fn all_permutations() -> Vec<u64> {
    let mut p: Perm = [0, 1, 2, 3, 4, 5, 6, 7, 8];
    let mut out = Vec::with_capacity(362_880);
    loop {
        out.push(pack(&p));
        // next lexicographic permutation
        let Some(i) = (0..8).rev().find(|&i| p[i] < p[i + 1]) else {
            return out;
        };
        let j = (i + 1..9).rev().find(|&j| p[j] > p[i]).expect("exists");
        p.swap(i, j);
        p[i + 1..].reverse();
    }
}

impl PermutationSet {
    /// Greedy max–min Hamming selection of `size` permutations (2 ≤ size ≤ [`MAX_SIZE`]).
    pub fn greedy(size: usize, seed: u64) -> Self {
        assert!((2..=MAX_SIZE).contains(&size), "size checked by the caller");
        let mut all = all_permutations();
        all.shuffle(&mut ChaCha8Rng::seed_from_u64(seed));
        let mut min_dist = vec![u8::MAX; all.len()];
        let mut chosen = Vec::with_capacity(size);
        let mut next = 0usize;
        for _ in 0..size {
            let pick = all[next];
            chosen.push(pick);
            let mut best = (0u8, 0usize);
            for (i, (&p, d)) in all.iter().zip(min_dist.iter_mut()).enumerate() {
                *d = (*d).min(hamming_packed(p, pick) as u8);
                if *d > best.0 {
                    best = (*d, i);
                }
            }
            next = best.1;
        }
        Self::from_perms(chosen.into_iter().map(unpack).collect(), seed)
    }

    /// A set from explicit permutations, with its statistics computed.
    pub fn from_perms(perms: Vec<Perm>, seed: u64) -> Self {
        let (mut min, mut sum, mut pairs) = (u32::MAX, 0u64, 0u64);
        for i in 0..perms.len() {
            for j in i + 1..perms.len() {
                let d = hamming(&perms[i], &perms[j]);
                min = min.min(d);
                sum += d as u64;
                pairs += 1;
            }
        }
        Self {
            seed,
            perms,
            min_hamming: if pairs == 0 { 0 } else { min },
            mean_hamming: sum as f64 / pairs.max(1) as f64,
        }
    }

    pub fn len(&self) -> usize {
        self.perms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.perms.is_empty()
    }
}

/// `inverse(p)[i]` is the position that holds original tile i.
pub fn inverse(p: &Perm) -> Perm {
    let mut inv = [0u8; 9];
    for (pos, &tile) in p.iter().enumerate() {
        inv[tile as usize] = pos as u8;
    }
    inv
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;
    use std::collections::HashSet;

    fn valid(p: &Perm) -> bool {
        let mut seen = [false; 9];
        p.iter()
            .all(|&v| v < 9 && !std::mem::replace(&mut seen[v as usize], true))
    }

    #[test]
    fn enumerates_every_permutation_once() {
        let all = all_permutations();
        assert_eq!(all.len(), 362_880);
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len());
        assert!(all.iter().all(|&x| valid(&unpack(x))));
        let (a, b) = (unpack(all[0]), unpack(all[12345]));
        assert_eq!(hamming_packed(all[0], all[12345]), hamming(&a, &b));
    }

    #[test]
    fn greedy_sets_are_valid_distinct_and_far_apart() {
        for size in [100, 1000] {
            let set = PermutationSet::greedy(size, 7);
            assert_eq!(set.len(), size);
            assert!(set.perms.iter().all(valid));
            assert_eq!(set.perms.iter().collect::<HashSet<_>>().len(), size);
            // A random set of the same size, for comparison.
            let mut rng = ChaCha8Rng::seed_from_u64(1);
            let all = all_permutations();
            let random: Vec<Perm> = (0..size)
                .map(|_| unpack(all[rng.gen_range(0..all.len())]))
                .collect();
            let random = PermutationSet::from_perms(random, 1);
            println!(
                "size {size}: greedy min Hamming {} mean {:.3}; random min {} mean {:.3}",
                set.min_hamming, set.mean_hamming, random.min_hamming, random.mean_hamming
            );
            assert!(set.min_hamming > random.min_hamming);
            // Max–min greedy: each pick is at least as far from the earlier ones as any later
            // pick, so the set's minimum distance is that of its last pick.
            let pick_dist: Vec<u32> = (1..size)
                .map(|k| {
                    (0..k)
                        .map(|j| hamming(&set.perms[k], &set.perms[j]))
                        .min()
                        .unwrap()
                })
                .collect();
            assert!(pick_dist.windows(2).all(|w| w[0] >= w[1]));
            assert_eq!(*pick_dist.last().unwrap(), set.min_hamming);
            // The best any permutation outside the set could do is no better than the last pick.
            let outside_best = all
                .iter()
                .map(|&p| unpack(p))
                .filter(|p| !set.perms.contains(p))
                .step_by(97)
                .map(|p| set.perms.iter().map(|q| hamming(&p, q)).min().unwrap())
                .max()
                .unwrap();
            assert!(outside_best <= set.min_hamming);
        }
    }

    #[test]
    fn same_seed_same_set_other_seed_other_set() {
        let a = PermutationSet::greedy(50, 3);
        assert_eq!(a, PermutationSet::greedy(50, 3));
        assert_ne!(a.perms, PermutationSet::greedy(50, 4).perms);
    }

    #[test]
    fn inverse_undoes_the_permutation() {
        let p: Perm = [3, 0, 8, 1, 4, 7, 2, 6, 5];
        let inv = inverse(&p);
        for i in 0..9 {
            assert_eq!(p[inv[i] as usize] as usize, i);
        }
    }
}
