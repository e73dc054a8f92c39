//! A task's batch as the flat arrays `bench/reference.py` reads, so the PyTorch reference trains
//! on the very numbers pretext steps. This is the bench's knowledge of each task's batch (the
//! reference's `TASKS` dict is its Python half); the task files do not carry it.

use crate::engine::replicas::Parts;
use crate::engine::AnyBatch;
use crate::tasks::colorize::ColorizeBatch;
use crate::tasks::inpaint::InpaintBatch;
use crate::tasks::mae::MaeBatch;
use crate::tasks::superres::SuperresBatch;
use crate::tasks::ClassBatch;

/// `images` [b, c, h, w], `labels`, and the rest of the batch in `extra`.
#[derive(Clone, Debug, Default)]
pub struct FlatBatch {
    pub b: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub images: Vec<f32>,
    pub labels: Vec<u32>,
    pub extra: Vec<f32>,
}

impl FlatBatch {
    pub fn new(shape: [usize; 4], images: &[f32], labels: &[u32], extra: Vec<f32>) -> Self {
        let [b, c, h, w] = shape;
        Self {
            b,
            c,
            h,
            w,
            images: images.to_vec(),
            labels: labels.to_vec(),
            extra,
        }
    }
}

/// The batch a task's `make_batch` made (whole, or the first of its parts), flat; None for a
/// batch type the bench does not know.
pub fn flat(batch: &dyn AnyBatch) -> Option<FlatBatch> {
    let any = batch.as_any();
    /// The batch itself, or the first part of a batch made in parts.
    fn find<T: 'static>(any: &dyn std::any::Any) -> Option<&T> {
        any.downcast_ref::<T>()
            .or_else(|| any.downcast_ref::<Parts<T>>().map(|p| &p.0[0]))
    }
    if let Some(b) = find::<ClassBatch>(any) {
        // rotation, context, jigsaw, simclr, byol: the inputs and their classes
        return Some(FlatBatch::new(b.shape, &b.images, &b.labels, Vec::new()));
    }
    if let Some(b) = find::<ColorizeBatch>(any) {
        // `images`: the lightness; `labels`: `keep`; `extra`: [ab (b·2·h·w) | for
        // classification: bin indices (b·k·h·w, nearest first) | their soft weights (b·k·h·w)]
        let bins: Vec<f32> = b.bins.iter().map(|&q| q as f32).collect();
        let extra = [&b.ab[..], &bins, &b.weights].concat();
        return Some(FlatBatch::new(b.shape, &b.lightness, &b.keep, extra));
    }
    if let Some(b) = find::<SuperresBatch>(any) {
        // `images`: the enlarged low-res images; `extra`: the true images
        return Some(FlatBatch::new(b.shape, &b.up, &[], b.truth.clone()));
    }
    if let Some(b) = find::<InpaintBatch>(any) {
        // `images`: the masked images; `extra`: [truth (b·c·h·w) | hole (b·h·w) | loss
        // weights (b·h·w)]
        let extra = [&b.truth[..], &b.hole, &b.weights].concat();
        return Some(FlatBatch::new(b.shape, &b.masked, &[], extra));
    }
    if let Some(b) = find::<MaeBatch>(any) {
        // `images`: the normalised images; `extra`: [keep | restore | mask] as f32
        let extra = b
            .keep
            .iter()
            .chain(&b.restore)
            .map(|&v| v as f32)
            .chain(b.mask.iter().copied())
            .collect();
        return Some(FlatBatch::new(b.shape, &b.images, &[], extra));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_flatten_in_the_layout_the_reference_reads() {
        let shape = [2, 1, 2, 2];
        let px: Vec<f32> = (0..8).map(|v| v as f32).collect();
        let class = ClassBatch {
            images: px.clone(),
            shape,
            labels: vec![3, 1],
            drawn: 2,
        };
        let f = flat(&class).unwrap();
        assert_eq!((f.b, f.c, f.h, f.w), (2, 1, 2, 2));
        assert_eq!((f.images, f.labels), (px.clone(), vec![3, 1]));
        assert!(f.extra.is_empty());
        // a batch made in parts gives its first part
        let parts = Parts(vec![class.clone(), class]);
        assert_eq!(flat(&parts).unwrap().labels, vec![3, 1]);

        let c = ColorizeBatch {
            lightness: px.clone(),
            shape,
            keep: vec![1, 0],
            ab: vec![0.5; 16],
            bins: vec![7; 8],
            weights: vec![0.25; 8],
        };
        let f = flat(&c).unwrap();
        assert_eq!(f.labels, vec![1, 0]);
        assert_eq!(f.extra.len(), 16 + 8 + 8);
        assert_eq!((f.extra[0], f.extra[16], f.extra[24]), (0.5, 7.0, 0.25));

        let s = SuperresBatch {
            up: px.clone(),
            truth: vec![9.0; 8],
            shape,
        };
        let f = flat(&s).unwrap();
        assert_eq!((f.images, f.extra), (px.clone(), vec![9.0; 8]));

        let i = InpaintBatch {
            masked: px.clone(),
            truth: vec![1.0; 8],
            hole: vec![2.0; 8],
            weights: vec![3.0; 8],
            shape,
        };
        let f = flat(&i).unwrap();
        assert_eq!(f.extra, [vec![1.0; 8], vec![2.0; 8], vec![3.0; 8]].concat());
        assert!(flat(&7u32).is_none());
    }
}
