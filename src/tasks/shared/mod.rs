//! What several tasks share, apart from the task files: the image-task framework (`image`), the
//! text-task framework (`text_tasks`), the jigsaw permutation sets (`permutations`), PSNR/SSIM for
//! the generative tasks (`image_quality`).

pub mod image;
pub mod image_quality;
pub mod permutations;
pub mod text_tasks;
