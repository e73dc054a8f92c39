//! Dropout whose masks come from a generator of the calling thread, set per step
//! ([`with_generator`]). burn's `Dropout` draws from the backend's one process-wide generator,
//! so replicas stepping at once on several threads would interleave their draws and a run would
//! no longer repeat; here each replica draws its own stream, in its own order.

use std::cell::RefCell;

use burn::nn::Dropout;
use burn::prelude::*;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

thread_local! {
    static GENERATOR: RefCell<Option<ChaCha8Rng>> = const { RefCell::new(None) };
}

/// Run `f` with this thread's dropout masks drawn from stream `stream` of `seed` (the same
/// seed and stream give the same masks in the same order).
pub fn with_generator<R>(seed: u64, stream: u64, f: impl FnOnce() -> R) -> R {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(stream);
    let before = GENERATOR.with(|g| g.borrow_mut().replace(rng));
    struct Restore(Option<ChaCha8Rng>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let before = self.0.take();
            GENERATOR.with(|g| *g.borrow_mut() = before);
        }
    }
    let _restore = Restore(before);
    f()
}

/// `d` applied to `x`: zero each element with probability `d.prob` and scale the rest by
/// 1/(1-prob), in training on an autodiff device; `x` unchanged otherwise. Masks come from the
/// thread's generator ([`with_generator`]), or from burn's when none is set.
pub fn dropout<const D: usize>(d: &Dropout, x: Tensor<D>) -> Tensor<D> {
    if !d.training.is_enabled() || !x.device().is_autodiff() || d.prob == 0.0 {
        return x;
    }
    let keep = 1.0 - d.prob;
    let threshold = (keep * 4_294_967_296.0) as u64;
    let scale = (1.0 / keep) as f32;
    let dims = x.dims();
    let n: usize = dims.iter().product();
    let mask = GENERATOR.with(|g| {
        g.borrow_mut()
            .as_mut()
            .map(|rng| mask(rng, n, threshold, scale))
    });
    match mask {
        Some(mask) => {
            let device = x.device();
            x * Tensor::<D>::from_data(TensorData::new(mask, dims), &device)
        }
        None => d.forward(x),
    }
}

/// `n` mask values: `scale` where the next `u32` of `rng` is below `threshold`, else 0. The
/// words are drawn in one `fill` (the same words, in the same order, as `n` calls of
/// `next_u32`: ChaCha's block buffer hands out whole little-endian words either way) into the
/// mask's own buffer, then mapped in place in a loop that vectorizes; one call per element was
/// ~3.5 % of a one-thread masked-LM step, a second buffer for the words ~0.7 %.
fn mask(rng: &mut ChaCha8Rng, n: usize, threshold: u64, scale: f32) -> Vec<f32> {
    let mut mask = vec![0f32; n];
    let words: &mut [u32] = bytemuck::cast_slice_mut(&mut mask[..]);
    rand::Rng::fill(rng, &mut words[..]);
    for m in mask.iter_mut() {
        *m = if (m.to_bits() as u64) < threshold {
            scale
        } else {
            0.0
        };
    }
    mask
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::nn::DropoutConfig;
    use rand::RngCore;

    #[test]
    fn masks_are_the_streams_words_one_by_one() {
        // the masks of earlier runs (one `next_u32` per element) must not change: resumes and
        // replicas repeat them bit for bit
        let (threshold, scale) = ((0.75 * 4_294_967_296.0) as u64, 1.0 / 0.75);
        // one generator through masks of several sizes, so masks also start mid-block
        let mut a = ChaCha8Rng::seed_from_u64(11);
        a.set_stream(3);
        let mut b = a.clone();
        for n in [0, 1, 3, 7, 16, 1000, 4099, 5] {
            let one_by_one: Vec<f32> = (0..n)
                .map(|_| {
                    if (b.next_u32() as u64) < threshold {
                        scale
                    } else {
                        0.0
                    }
                })
                .collect();
            assert_eq!(mask(&mut a, n, threshold, scale), one_by_one, "n {n}");
            assert_eq!(
                a.next_u32(),
                b.next_u32(),
                "the stream goes on alike, n {n}"
            );
        }
    }

    #[test]
    fn masks_repeat_per_stream_and_keep_the_mean() {
        let device = Device::flex().autodiff();
        let d = DropoutConfig::new(0.25).init();
        let x = || Tensor::<2>::ones([64, 64], &device);
        let a = with_generator(7, 0, || dropout(&d, x()).into_data());
        let b = with_generator(7, 0, || dropout(&d, x()).into_data());
        let c = with_generator(7, 1, || dropout(&d, x()).into_data());
        assert_eq!(a, b, "same seed and stream, same mask");
        assert_ne!(a, c, "another stream, another mask");
        let v = a.try_to_vec::<f32>().unwrap();
        let zeros = v.iter().filter(|&&e| e == 0.0).count() as f32 / v.len() as f32;
        assert!((zeros - 0.25).abs() < 0.03, "dropped {zeros}");
        let mean = v.iter().sum::<f32>() / v.len() as f32;
        assert!((mean - 1.0).abs() < 0.05, "mean {mean}");
        let plain = Device::flex();
        let y = Tensor::<2>::ones([4, 4], &plain);
        assert_eq!(
            dropout(&d, y.clone()).into_data(),
            y.into_data(),
            "no autodiff: unchanged"
        );
    }
}
