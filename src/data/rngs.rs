//! The random generators of one batch: one per item, from (seed, batch index, the item's position
//! in the global batch), so a batch's augmentations do not depend on how it is cut into parts
//! (replicas, MPI ranks).

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The generators a batch maker draws from: [`Self::item`] for the item at a position of the
/// global batch, [`Self::shared`] for draws the whole batch shares. A part of the batch gets
/// [`Self::part`]: the same generators, its positions counted from where it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BatchRngs {
    /// Seeds every generator of the batch.
    key: u64,
    /// Global position of this part's first item.
    first: usize,
}

impl BatchRngs {
    /// The generators of batch `index` of a run seeded with `seed`.
    pub fn new(seed: u64, index: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(index);
        Self::from_rng(&mut rng)
    }

    /// Generators keyed by one draw of `rng` (a batch whose other draws come from `rng`).
    pub fn from_rng(rng: &mut impl Rng) -> Self {
        Self {
            key: rng.gen(),
            first: 0,
        }
    }

    /// The generator of item `i` of this part (global position `first + i`).
    pub fn item(&self, i: usize) -> ChaCha8Rng {
        let mut rng = ChaCha8Rng::seed_from_u64(self.key);
        // Stream 0 is the shared generator's.
        rng.set_stream(1 + (self.first + i) as u64);
        rng
    }

    /// A generator for draws every part of the batch must make alike (the same in each part).
    pub fn shared(&self) -> ChaCha8Rng {
        ChaCha8Rng::seed_from_u64(self.key)
    }

    /// The generators of the part of this batch that starts at item `start` of this one.
    pub fn part(&self, start: usize) -> Self {
        Self {
            key: self.key,
            first: self.first + start,
        }
    }

    /// Global position of this part's first item.
    pub fn first(&self) -> usize {
        self.first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_item_draws_the_same_from_any_part() {
        let whole = BatchRngs::new(7, 3);
        let part = whole.part(5);
        assert_eq!(part.first(), 5);
        assert_eq!(part.item(2).gen::<u64>(), whole.item(7).gen::<u64>());
        assert_eq!(
            part.part(1).item(0).gen::<u64>(),
            whole.item(6).gen::<u64>()
        );
        assert_eq!(part.shared().gen::<u64>(), whole.shared().gen::<u64>());
        // Items, batches and seeds differ.
        assert_ne!(whole.item(0).gen::<u64>(), whole.item(1).gen::<u64>());
        assert_ne!(whole.item(0).gen::<u64>(), whole.shared().gen::<u64>());
        assert_ne!(
            whole.item(0).gen::<u64>(),
            BatchRngs::new(7, 4).item(0).gen::<u64>()
        );
        assert_ne!(
            whole.item(0).gen::<u64>(),
            BatchRngs::new(8, 3).item(0).gen::<u64>()
        );
    }
}
