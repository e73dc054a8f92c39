//! The per-protocol tables both transfer configs (images: [`super::TransferConfig`], text:
//! [`super::text_transfer::TextTransferConfig`]) are built from: the linear probe, k-NN,
//! fine-tuning and the semi-supervised stage each have one table of settings, its checks and
//! its runtime settings here, so the two halves cannot drift apart. On the command line they
//! keep their flat names (`--set probe_steps=300`, `--set semi_ratio=3`): a table's fields are
//! the key after its prefix. Each half chooses its own defaults.

use serde::{Deserialize, Serialize};

use super::frozen::FrozenSettings;
use super::linear_probe::ProbeSettings;
use crate::config::{in_range, in_range_open, positive};
use crate::error::Result;

serde_with::with_prefix!(pub(crate) probe_keys "probe_");
serde_with::with_prefix!(pub(crate) knn_keys "knn_");
serde_with::with_prefix!(pub(crate) finetune_keys "finetune_");
serde_with::with_prefix!(pub(crate) semi_keys "semi_");

/// `probe_*`: the linear probe on frozen features.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ProbeTable {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
}

/// `knn_*`: the k-nearest-neighbour vote on frozen features.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct KnnTable {
    /// Neighbours that vote (at most the labelled set).
    pub k: usize,
    /// Temperature of the similarity-weighted vote.
    pub temperature: f32,
}

/// `finetune_*`: the optimisation of fine-tuning (the images' augmentation, head and
/// regularisers are settings of the image config).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct FinetuneTable {
    pub steps: u64,
    pub batch_size: usize,
    pub lr: f64,
    pub weight_decay: f64,
}

/// `semi_*`: the semi-supervised stage ([`super::semi`]) as images and text share it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SemiTable {
    /// The student's steps.
    pub steps: u64,
    /// Labelled examples per step (B).
    pub batch_size: usize,
    /// Unlabelled examples per labelled one in each step (μ).
    pub ratio: usize,
    pub lr: f64,
    pub weight_decay: f64,
    /// FixMatch's confidence threshold τ (the top of FlexMatch's per-class thresholds).
    pub threshold: f32,
    /// Per-class adaptive thresholds (FlexMatch); false: τ for every class (FixMatch).
    pub adaptive: bool,
    /// Weight of the consistency loss (pseudo-label of a weak view, cross-entropy on a strong
    /// one); 0 = off.
    pub consistency: f32,
    /// Weight of the distillation loss from the teacher's softened predictions; 0 = off.
    pub distill: f32,
    /// Distillation temperature.
    pub temperature: f32,
    /// Decay of the student's moving average, which is what the stage evaluates (0 = the
    /// student itself).
    pub ema: f64,
    /// Distribution alignment: predictions scaled by uniform / their running mean before
    /// pseudo-labelling, so confident classes do not swallow their neighbours.
    pub align: bool,
    /// The stage writes a checkpoint every this many steps (and on Ctrl-C); the same command
    /// run again continues from it.
    pub checkpoint_every: u64,
}

impl SemiTable {
    /// A stage of `steps` steps of `batch_size` labelled and `ratio` × as many unlabelled
    /// examples, with the losses' defaults images and text share (chosen on the images'
    /// validation split, docs/semi.md): FixMatch's τ = 0.95 with FlexMatch's per-class
    /// thresholds, consistency weight 1, no distillation, no moving average, alignment on.
    pub fn with_shared_losses(
        steps: u64,
        batch_size: usize,
        ratio: usize,
        lr: f64,
        weight_decay: f64,
        checkpoint_every: u64,
    ) -> Self {
        Self {
            steps,
            batch_size,
            ratio,
            lr,
            weight_decay,
            threshold: 0.95,
            adaptive: true,
            consistency: 1.0,
            distill: 0.0,
            temperature: 1.0,
            ema: 0.0,
            align: true,
            checkpoint_every,
        }
    }
}

impl ProbeTable {
    pub fn validate(&self) -> Result<()> {
        positive("probe_steps", self.steps as f64)?;
        positive("probe_batch_size", self.batch_size as f64)?;
        positive("probe_lr", self.lr)?;
        in_range("probe_weight_decay", self.weight_decay, 0.0, 1.0)
    }
}

impl KnnTable {
    pub fn validate(&self) -> Result<()> {
        positive("knn_k", self.k as f64)?;
        positive("knn_temperature", self.temperature)
    }
}

impl FinetuneTable {
    pub fn validate(&self) -> Result<()> {
        positive("finetune_steps", self.steps as f64)?;
        positive("finetune_batch_size", self.batch_size as f64)?;
        positive("finetune_lr", self.lr)?;
        in_range("finetune_weight_decay", self.weight_decay, 0.0, 1.0)
    }
}

impl SemiTable {
    pub fn validate(&self) -> Result<()> {
        positive("semi_steps", self.steps as f64)?;
        positive("semi_batch_size", self.batch_size as f64)?;
        positive("semi_ratio", self.ratio as f64)?;
        positive("semi_lr", self.lr)?;
        in_range("semi_weight_decay", self.weight_decay, 0.0, 1.0)?;
        in_range("semi_threshold", self.threshold, 0.0, 1.0)?;
        in_range("semi_consistency", self.consistency, 0.0, 100.0)?;
        in_range("semi_distill", self.distill, 0.0, 100.0)?;
        positive("semi_temperature", self.temperature)?;
        in_range_open("semi_ema", self.ema, 0.0, 1.0)
    }
}

/// The linear probe's and k-NN's runtime settings.
pub fn frozen_settings(probe: &ProbeTable, knn: &KnnTable, seed: u64) -> FrozenSettings {
    FrozenSettings {
        probe: ProbeSettings {
            steps: probe.steps,
            batch_size: probe.batch_size,
            lr: probe.lr,
            weight_decay: probe.weight_decay,
            seed,
        },
        knn: knn.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::text_transfer::TextTransferConfig;
    use super::super::TransferConfig;
    use crate::config;

    fn sets(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_tables_keep_their_flat_keys_on_the_command_line() {
        let c: TransferConfig = config::resolve(
            None,
            &sets(&[
                "probe_steps=7",
                "knn_k=5",
                "finetune_lr=0.5",
                "semi_ratio=3",
                "semi_warmup=true",
                "semi_strong_ops=1",
            ]),
            &[],
        )
        .unwrap();
        assert_eq!(c.probe.steps, 7);
        assert_eq!(c.knn.k, 5);
        assert_eq!(c.finetune.lr, 0.5);
        assert_eq!(c.semi.ratio, 3);
        assert!(c.semi_warmup);
        assert_eq!(c.semi_strong_ops, 1);
        // Untouched keys keep the images' defaults, not the text ones.
        assert_eq!(c.probe.batch_size, 256);
        assert_eq!(c.semi.steps, 3000);

        let t: TextTransferConfig =
            config::resolve(None, &sets(&["semi_noise=0.3", "semi_steps=9"]), &[]).unwrap();
        assert_eq!(t.semi.steps, 9);
        assert_eq!(t.semi_noise, 0.3);
        assert_eq!(t.probe.batch_size, 64);
        assert_eq!(t.semi.checkpoint_every, 100);
    }

    #[test]
    fn a_mistyped_table_key_is_an_error_naming_it() {
        let e = config::resolve::<TransferConfig>(None, &sets(&["probe_stepz=7"]), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("probe_stepz"), "{e}");
        assert!(e.contains("probe_steps"), "the valid keys are listed: {e}");
        // An image-only key is unknown to text transfer.
        let e = config::resolve::<TextTransferConfig>(None, &sets(&["semi_cutout=0.1"]), &[])
            .unwrap_err()
            .to_string();
        assert!(e.contains("semi_cutout"), "{e}");
    }

    #[test]
    fn a_saved_config_reads_back_the_same() {
        let mut c = TransferConfig::default();
        c.semi.ema = 0.5;
        c.knn.temperature = 0.25;
        let text = config::to_toml(&c);
        assert!(text.contains("semi_ema = 0.5"), "{text}");
        assert!(text.contains("knn_temperature = 0.25"), "{text}");
        let back: TransferConfig = toml::from_str(&text).unwrap();
        assert_eq!(back.semi, c.semi);
        assert_eq!(back.knn, c.knn);
        assert_eq!(back.probe, c.probe);
    }

    #[test]
    fn each_table_checks_its_ranges_under_its_keys() {
        let mut c = TransferConfig::default();
        c.semi.threshold = 1.5;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("semi_threshold"));
        let mut t = TextTransferConfig::default();
        t.finetune.batch_size = 0;
        assert!(t
            .validate()
            .unwrap_err()
            .to_string()
            .contains("finetune_batch_size"));
    }
}
