//! What a compare evaluates: the settings saved in `OUT/compare.json` and the cells they expand
//! to, each with the path of its result JSON (a cell is finished when that file parses).
//!
//! Baselines and protocols: `random` (the same backbone, random weights, frozen) is evaluated with
//! the frozen-feature protocols (linear, knn) only, since fine-tuning random weights *is* training
//! from scratch; `scratch` (random weights trained on the labels only) is always evaluated with
//! `finetune`, whatever `--protocols` says, as the reference line every pretext task must beat.
//! Pretext tasks get every protocol asked for.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::tasks;
use crate::transfer::labels::PerClass;
use crate::transfer::Protocol;

/// Image label budgets up to this many labels per class are evaluated over `--seeds` label draws;
/// larger ones (less noisy, slower) over one. Text budgets all get `--seeds` draws (a text
/// compare encodes each document once, so a draw of a frozen protocol costs little).
pub const SMALL_BUDGET: usize = 10;

/// What a compare runs on: images (the image tasks, `pretext transfer` on images, scored by
/// accuracy) or labelled text (`jsonl:`; the language-model tasks, scored by macro-F1, which
/// does not reward always answering the majority class).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    #[default]
    Image,
    Text,
}

impl Kind {
    /// `jsonl:` and `text:` data are text; everything else is images.
    pub fn of_data(data: &str) -> Self {
        if data.starts_with("jsonl:") || data.starts_with("text:") {
            Self::Text
        } else {
            Self::Image
        }
    }

    /// The score every table and plot shows.
    pub fn metric(self) -> &'static str {
        match self {
            Self::Image => "accuracy",
            Self::Text => "macro-F1",
        }
    }

    /// What the held-out items are called.
    pub fn items(self) -> &'static str {
        match self {
            Self::Image => "images",
            Self::Text => "documents",
        }
    }

    /// `--tasks` when not given.
    pub fn default_tasks(self) -> &'static str {
        match self {
            Self::Image => "rotation,context,jigsaw,simclr",
            Self::Text => "masked-lm,causal-lm",
        }
    }

    /// `--labels-per-class` when not given.
    pub fn default_labels(self) -> &'static str {
        match self {
            Self::Image => "1,10,100",
            Self::Text => "16,128",
        }
    }
}

/// What the report reads of a cell's result JSON (an image `TransferResult` or a
/// `TextTransferResult`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CellResult {
    pub n_train: usize,
    pub n_test: usize,
    pub accuracy: f32,
    /// Text results only.
    #[serde(default)]
    pub macro_f1: Option<f32>,
    pub wall_s: f64,
    pub evaluated_on: String,
}

impl CellResult {
    /// The compare's score: macro-F1 for text, accuracy for images.
    pub fn score(&self, kind: Kind) -> f64 {
        match (kind, self.macro_f1) {
            (Kind::Text, Some(f1)) => f1 as f64,
            _ => self.accuracy as f64,
        }
    }
}

/// The settings of a compare, saved as `OUT/compare.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Images or text (a settings file without it is an image compare).
    #[serde(default)]
    pub kind: Kind,
    pub data: String,
    pub tasks: Vec<String>,
    /// Label budgets as given (`1`, `10`, `all`).
    pub labels_per_class: Vec<String>,
    pub protocols: Vec<Protocol>,
    /// Pretraining steps per task.
    pub budget: u64,
    /// Pretraining minutes per task (`--minutes`); 0 = no time budget.
    #[serde(default)]
    pub minutes: f64,
    /// Label draws (seeds 0..seeds) for budgets of at most `SMALL_BUDGET` labels per class.
    pub seeds: u64,
    /// Encoder stages probed for the per-layer plot (1-based; empty = none).
    pub stages: Vec<usize>,
    /// How many stages the backbone has.
    pub encoder_stages: usize,
    /// Classes of the labelled data (to place `all` on the labels-per-class axis).
    pub classes: usize,
    /// Pretraining overrides (`--set`), the same for every task.
    pub pretrain_sets: Vec<String>,
    /// Transfer overrides (`--transfer-set`), the same for every cell.
    pub transfer_sets: Vec<String>,
}

impl Settings {
    /// The settings that change what finished runs and cells mean: they must not change between
    /// invocations on one OUT directory. (Tasks, budgets, protocols, seeds and stages may: new
    /// cells are added, finished ones kept.)
    pub fn differences(&self, earlier: &Settings) -> Vec<String> {
        let mut d = Vec::new();
        if self.data != earlier.data {
            d.push(format!("--data {} (was {})", self.data, earlier.data));
        }
        if self.budget != earlier.budget {
            d.push(format!("--budget {} (was {})", self.budget, earlier.budget));
        }
        if self.minutes != earlier.minutes {
            d.push(format!(
                "--minutes {} (was {})",
                self.minutes, earlier.minutes
            ));
        }
        if self.pretrain_sets != earlier.pretrain_sets {
            d.push(format!(
                "--set {:?} (was {:?})",
                self.pretrain_sets, earlier.pretrain_sets
            ));
        }
        if self.transfer_sets != earlier.transfer_sets {
            d.push(format!(
                "--transfer-set {:?} (was {:?})",
                self.transfer_sets, earlier.transfer_sets
            ));
        }
        d
    }

    pub fn per_class(&self) -> Vec<PerClass> {
        self.labels_per_class
            .iter()
            .map(|s| PerClass::parse(s).expect("validated when parsed"))
            .collect()
    }

    /// The stages the per-layer probe has its own cells for: for images those asked for, plus
    /// the last whenever any is (the main cell is no stand-in for it: the linear probe of some
    /// tasks reads a lower stage by default, see `transfer::TransferConfig::stage`); for text
    /// those below the last block, whose point is the main cell (the final states).
    pub fn probe_stages(&self) -> Vec<usize> {
        let mut v = self.stages.clone();
        match self.kind {
            Kind::Image => {
                if !v.is_empty() && !v.contains(&self.encoder_stages) {
                    v.push(self.encoder_stages);
                }
            }
            Kind::Text => v.retain(|&k| k < self.encoder_stages),
        }
        v
    }

    /// The stages of the per-layer plot, each with the cell stage its point comes from.
    pub fn plot_stages(&self) -> Vec<(usize, usize)> {
        let mut v: Vec<(usize, usize)> = self.probe_stages().into_iter().map(|k| (k, k)).collect();
        if self.kind == Kind::Text && !self.stages.is_empty() {
            v.push((self.encoder_stages, 0));
        }
        v
    }

    /// The protocol and label budget of the per-layer probes: linear (else knn) at the largest
    /// numeric budget (else `all`); `None` when only fine-tuning was asked for.
    pub fn probe(&self) -> Option<(Protocol, PerClass)> {
        let protocol = [Protocol::Linear, Protocol::Knn]
            .into_iter()
            .find(|p| self.protocols.contains(p))?;
        let per_class = self.per_class();
        let labels = per_class
            .iter()
            .filter_map(|p| match p {
                PerClass::N(n) => Some(*n),
                PerClass::All => None,
            })
            .max()
            .map_or(PerClass::All, PerClass::N);
        Some((protocol, labels))
    }
}

/// Parse a comma-separated list, trimming blanks and dropping repeats (first one wins).
fn list(s: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for item in s.split(',').map(str::trim).filter(|t| !t.is_empty()) {
        if !out.iter().any(|o| o == item) {
            out.push(item.to_string());
        }
    }
    out
}

/// `--tasks`: every name must be a registered task of the data's kind.
pub fn parse_tasks(s: &str, kind: Kind) -> Result<Vec<String>> {
    let names = list(s);
    if names.is_empty() {
        return Err(Error::Usage(
            "--tasks: name at least one task (see `pretext tasks`)".into(),
        ));
    }
    for n in &names {
        let (fits, other) = match kind {
            Kind::Image => (
                tasks::find_image(n).is_some(),
                tasks::find_text(n).is_some(),
            ),
            Kind::Text => (
                tasks::find_text(n).is_some(),
                tasks::find_image(n).is_some(),
            ),
        };
        if !fits {
            let why = match (other, kind) {
                (true, Kind::Image) => "a text task (the data are images)",
                (true, Kind::Text) => "an image task (the data are text)",
                (false, _) => "unknown task",
            };
            let known = match kind {
                Kind::Image => format!("image tasks: {}", tasks::image_names().join(", ")),
                Kind::Text => format!("text tasks: {}", tasks::text_names().join(", ")),
            };
            return Err(Error::Usage(format!("--tasks: {why} '{n}'; {known}")));
        }
    }
    Ok(names)
}

/// `--labels-per-class`: positive numbers or `all`, kept in ascending order (`all` last).
pub fn parse_labels(s: &str) -> Result<Vec<String>> {
    let mut v = Vec::new();
    for item in list(s) {
        v.push(PerClass::parse(&item)?);
    }
    if v.is_empty() {
        return Err(Error::Usage(
            "--labels-per-class: give at least one budget, e.g. 1,10,100,all".into(),
        ));
    }
    v.sort_by_key(|p| match p {
        PerClass::N(n) => *n,
        PerClass::All => usize::MAX,
    });
    Ok(v.iter().map(PerClass::label).collect())
}

/// `--protocols`: linear, knn, finetune, semi.
pub fn parse_protocols(s: &str) -> Result<Vec<Protocol>> {
    let mut v = Vec::new();
    for item in list(s) {
        v.push(Protocol::parse(&item).map_err(|_| {
            Error::Usage(format!(
                "--protocols: unknown protocol '{item}'; expected linear, knn, finetune or semi"
            ))
        })?);
    }
    if v.is_empty() {
        return Err(Error::Usage(
            "--protocols: give at least one of linear, knn, finetune, semi".into(),
        ));
    }
    Ok(v)
}

/// `--stages`: `all`, `none`, or stage numbers between 1 and `n`.
pub fn parse_stages(s: &str, n: usize) -> Result<Vec<usize>> {
    match s.trim() {
        "all" => return Ok((1..=n).collect()),
        "none" => return Ok(Vec::new()),
        _ => {}
    }
    let mut v = Vec::new();
    for item in list(s) {
        match item.parse::<usize>() {
            Ok(k) if (1..=n).contains(&k) => v.push(k),
            _ => {
                return Err(Error::Usage(format!(
                    "--stages: '{item}' is not a stage of this encoder (1 to {n}), 'all' or 'none'"
                )))
            }
        }
    }
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Where an encoder comes from, as the report names it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Encoder {
    Task(String),
    Random,
    Scratch,
}

impl Encoder {
    pub fn name(&self) -> &str {
        match self {
            Self::Task(t) => t,
            Self::Random => "random",
            Self::Scratch => "scratch",
        }
    }

    pub fn is_baseline(&self) -> bool {
        !matches!(self, Self::Task(_))
    }
}

/// One transfer evaluation.
#[derive(Clone, Debug, PartialEq)]
pub struct Cell {
    pub encoder: Encoder,
    pub protocol: Protocol,
    pub labels: PerClass,
    pub seed: u64,
    /// Encoder stage probed; 0 = the transfer's default (the main cells: the last, or for the
    /// linear probe of some tasks the one below it).
    pub stage: usize,
}

impl Cell {
    /// `OUT/cells/<encoder>/` for the main cells, `OUT/cells/<encoder>/stage<k>/` for the probes.
    pub fn dir(&self, out: &Path) -> PathBuf {
        let d = out.join("cells").join(self.encoder.name());
        if self.stage == 0 {
            d
        } else {
            d.join(format!("stage{}", self.stage))
        }
    }

    /// The result JSON, named as `pretext transfer` names it.
    pub fn path(&self, out: &Path) -> PathBuf {
        self.dir(out).join(format!(
            "{}-{}-seed{}.json",
            self.protocol.name(),
            self.labels.label(),
            self.seed
        ))
    }

    /// The finished result, if any (a file that does not parse counts as not finished).
    pub fn result(&self, out: &Path) -> Option<CellResult> {
        let bytes = std::fs::read(self.path(out)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    pub fn describe(&self) -> String {
        let mut s = format!(
            "{} {} {} labels/class seed {}",
            self.encoder.name(),
            self.protocol.name(),
            self.labels.label(),
            self.seed
        );
        if self.stage > 0 {
            s.push_str(&format!(" stage {}", self.stage));
        }
        s
    }
}

pub fn seeds_for(labels: PerClass, seeds: u64, kind: Kind) -> u64 {
    match (labels, kind) {
        (PerClass::N(_), Kind::Text) => seeds.max(1),
        (PerClass::N(n), Kind::Image) if n <= SMALL_BUDGET => seeds.max(1),
        _ => 1,
    }
}

/// Every cell of a compare, in the order they run: per encoder (tasks in the given order, then
/// random, then scratch) the main cells, then the per-layer probes. `skipped` tasks get none.
pub fn cells(s: &Settings, skipped: &[String]) -> Vec<Cell> {
    let mut encoders: Vec<Encoder> = s
        .tasks
        .iter()
        .filter(|t| !skipped.contains(t))
        .map(|t| Encoder::Task(t.clone()))
        .collect();
    encoders.extend([Encoder::Random, Encoder::Scratch]);
    let probe = s.probe();
    let mut out = Vec::new();
    for enc in &encoders {
        let protocols: Vec<Protocol> = match enc {
            // Trained on the labels alone: fine-tuning, plus the semi stage when asked for
            // (its from-scratch baseline).
            Encoder::Scratch => std::iter::once(Protocol::Finetune)
                .chain(s.protocols.iter().copied().filter(|p| *p == Protocol::Semi))
                .collect(),
            Encoder::Random => s
                .protocols
                .iter()
                .copied()
                .filter(|p| !p.trains_encoder())
                .collect(),
            Encoder::Task(_) => s.protocols.clone(),
        };
        for &protocol in &protocols {
            for labels in s.per_class() {
                for seed in 0..seeds_for(labels, s.seeds, s.kind) {
                    out.push(Cell {
                        encoder: enc.clone(),
                        protocol,
                        labels,
                        seed,
                        stage: 0,
                    });
                }
            }
        }
        if let (Some((protocol, labels)), false) = (probe, *enc == Encoder::Scratch) {
            for stage in s.probe_stages() {
                out.push(Cell {
                    encoder: enc.clone(),
                    protocol,
                    labels,
                    seed: 0,
                    stage,
                });
            }
        }
    }
    out
}

#[cfg(test)]
pub(crate) fn example_settings() -> Settings {
    Settings {
        kind: Kind::Image,
        data: "builtin:fashion-mnist-demo".into(),
        tasks: vec!["rotation".into(), "jigsaw".into()],
        labels_per_class: vec!["1".into(), "10".into(), "100".into()],
        protocols: vec![Protocol::Linear, Protocol::Knn],
        budget: 4,
        minutes: 0.0,
        seeds: 3,
        stages: vec![1, 2, 3, 4],
        encoder_stages: 4,
        classes: 10,
        pretrain_sets: vec!["width=8".into()],
        transfer_sets: vec![],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn count(cells: &[Cell], f: impl Fn(&Cell) -> bool) -> usize {
        cells.iter().filter(|c| f(c)).count()
    }

    #[test]
    fn cells_cover_tasks_baselines_budgets_and_stages() {
        let s = example_settings();
        let cells = cells(&s, &[]);
        // Per (encoder, protocol): 3 + 3 + 1 label draws (100 labels is not a small budget).
        // rotation, jigsaw, random × linear, knn = 6 × 7; scratch × finetune = 7;
        // probes: stages 1..4 × linear at 100 labels × 3 encoders = 12.
        assert_eq!(cells.len(), 6 * 7 + 7 + 12);
        assert_eq!(count(&cells, |c| c.encoder == Encoder::Scratch), 7);
        assert!(cells
            .iter()
            .filter(|c| c.encoder == Encoder::Scratch)
            .all(|c| c.protocol == Protocol::Finetune));
        assert_eq!(count(&cells, |c| c.protocol == Protocol::Finetune), 7);
        let probes: Vec<&Cell> = cells.iter().filter(|c| c.stage > 0).collect();
        assert_eq!(probes.len(), 12);
        assert!(probes
            .iter()
            .all(|c| c.protocol == Protocol::Linear && c.labels == PerClass::N(100)));
        // Every path is distinct.
        let out = Path::new("/o");
        let mut paths: Vec<PathBuf> = cells.iter().map(|c| c.path(out)).collect();
        paths.sort();
        paths.dedup();
        assert_eq!(paths.len(), cells.len());
        assert_eq!(
            cells[0].path(out),
            Path::new("/o/cells/rotation/linear-1-seed0.json")
        );
    }

    #[test]
    fn the_last_stage_is_its_own_probe_for_images_and_the_main_cell_for_text() {
        let mut s = example_settings();
        s.stages = vec![2];
        assert_eq!(s.probe_stages(), vec![2, 4]);
        assert_eq!(s.plot_stages(), vec![(2, 2), (4, 4)]);
        s.kind = Kind::Text;
        assert_eq!(s.probe_stages(), vec![2]);
        assert_eq!(s.plot_stages(), vec![(2, 2), (4, 0)]);
        s.stages.clear();
        assert!(s.probe_stages().is_empty() && s.plot_stages().is_empty());
    }

    #[test]
    fn skipped_tasks_and_finetune_mapping() {
        let mut s = example_settings();
        s.protocols = vec![Protocol::Finetune];
        s.labels_per_class = vec!["5".into(), "all".into()];
        let cells = cells(&s, &["jigsaw".to_string()]);
        // rotation and scratch, finetune only, 3 + 1 draws each; no random (frozen-only), no probes.
        assert_eq!(cells.len(), 8);
        assert_eq!(count(&cells, |c| c.encoder == Encoder::Random), 0);
        assert_eq!(count(&cells, |c| c.encoder.name() == "jigsaw"), 0);
        assert_eq!(count(&cells, |c| c.stage > 0), 0);
    }

    #[test]
    fn finished_cells_are_found_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let s = example_settings();
        let cells = cells(&s, &[]);
        let c = &cells[3];
        assert!(c.result(dir.path()).is_none());
        std::fs::create_dir_all(c.dir(dir.path())).unwrap();
        // A torn file does not count as finished.
        std::fs::write(c.path(dir.path()), "{\"from\": ").unwrap();
        assert!(c.result(dir.path()).is_none());
        let r = crate::transfer::TransferResult {
            from: "x".into(),
            protocol: c.protocol,
            labels_per_class: c.labels.label(),
            n_train: 10,
            n_test: 20,
            stage: 4,
            accuracy: 0.5,
            seed: c.seed,
            wall_s: 1.0,
            evaluated_on: "test split".into(),
            semi: None,
        };
        std::fs::write(c.path(dir.path()), serde_json::to_vec(&r).unwrap()).unwrap();
        assert_eq!(c.result(dir.path()).unwrap().accuracy, 0.5);
        let done = cells
            .iter()
            .filter(|c| c.result(dir.path()).is_some())
            .count();
        assert_eq!(done, 1);
    }

    #[test]
    fn parsing_rejects_bad_input() {
        assert!(parse_tasks("rotation,nosuch", Kind::Image)
            .unwrap_err()
            .to_string()
            .contains("unknown task 'nosuch'"));
        assert_eq!(
            parse_tasks("jigsaw, rotation,jigsaw", Kind::Image)
                .unwrap()
                .len(),
            2
        );
        assert!(parse_tasks("masked-lm", Kind::Image)
            .unwrap_err()
            .to_string()
            .contains("a text task"));
        assert_eq!(
            parse_tasks("masked-lm,causal-lm", Kind::Text).unwrap(),
            vec!["masked-lm", "causal-lm"]
        );
        assert!(parse_tasks("rotation", Kind::Text)
            .unwrap_err()
            .to_string()
            .contains("an image task"));
        assert_eq!(parse_labels("all,10,1").unwrap(), vec!["1", "10", "all"]);
        let e = parse_labels("1,0").unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert!(parse_protocols("linear,svm")
            .unwrap_err()
            .to_string()
            .contains("'svm'"));
        assert_eq!(parse_stages("all", 4).unwrap(), vec![1, 2, 3, 4]);
        assert_eq!(parse_stages("3,1", 4).unwrap(), vec![1, 3]);
        assert!(parse_stages("5", 4).is_err());
        assert!(parse_stages("none", 4).unwrap().is_empty());
    }

    #[test]
    fn fixed_settings_must_match() {
        let a = example_settings();
        let mut b = a.clone();
        b.tasks.push("context".into());
        b.seeds = 5;
        assert!(b.differences(&a).is_empty());
        b.budget = 8;
        b.pretrain_sets.push("lr=0.01".into());
        let d = b.differences(&a);
        assert_eq!(d.len(), 2, "{d:?}");
        assert!(d[0].contains("--budget 8 (was 4)"));
        // A changed time budget is refused too (a settings file without one had none).
        let mut c = a.clone();
        c.minutes = 2.5;
        let d = c.differences(&a);
        assert_eq!(d, vec!["--minutes 2.5 (was 0)".to_string()]);
        let old: Settings = serde_json::from_str(
            &serde_json::to_string(&a)
                .unwrap()
                .replace(",\"minutes\":0.0", ""),
        )
        .unwrap();
        assert_eq!(old, a);
    }
}
