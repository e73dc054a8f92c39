//! Command-line interface: one subcommand per user job. The `///` comments are the help text.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "pretext",
    version,
    about = "Self-supervised pretraining on unlabelled images and text, transfer with few labels"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Pretrain an encoder with a pretext task on unlabelled images or text.
    Pretrain(PretrainArgs),
    /// Evaluate an encoder on a labelled task with a few labels per class.
    Transfer(TransferArgs),
    /// List every pretext task with a one-line description.
    Tasks,
    /// List the compute devices (`--device`) and what each is here: the CPU's threads, the GPU
    /// adapter with its graphics API and driver, or why it is not available.
    Devices,
    /// Pretrain on a small built-in Fashion-MNIST subset and compare with random weights (CPU, minutes).
    Demo(DemoArgs),
    /// Measure training throughput per backbone, next to PyTorch when it is installed (or, with
    /// --generate, generation speed with and without the key/value cache).
    Bench(BenchArgs),
    /// Pretrain several tasks with one budget, transfer each at several label budgets next to the
    /// random and scratch baselines, and write a report (resumable: rerun to continue).
    Compare(CompareArgs),
    /// (Re)build OUT/report.html and OUT/report.md of a compare from what is on disk.
    Report(ReportArgs),
    /// Continue a prompt with a causal language model (a `--task causal-lm` run), reading the
    /// prompt once into a key/value cache and then one token's work per new token; a full
    /// context window (the model's max_len) restarts on its last max_len / 2 tokens.
    Generate(GenerateArgs),
    /// Train a byte-level BPE tokenizer on a text corpus, or show how one splits a text.
    #[command(subcommand)]
    Tokenizer(TokenizerCommand),
    /// Write one vector per image (or document) from a run's encoder: FILE.npy, with FILE.csv
    /// (row, file or id, label) and FILE.json (what made them) beside it.
    Embed(EmbedArgs),
    /// The images of an embedding file closest to a query image (exact cosine top-k).
    Similar(SimilarArgs),
    /// Export a run's encoder as ONNX (one file) or for PyTorch (a directory with the weights,
    /// config.json and a small Python module), with the run's metadata.
    Export(ExportArgs),
}

#[derive(clap::Args, Debug)]
pub struct EmbedArgs {
    /// A pretraining run directory.
    #[arg(long)]
    pub from: PathBuf,
    /// Data spec FORMAT:PATH (images: idx, cifar10, cifar100, stl10, folder; text runs: text,
    /// jsonl); defaults to the run's pretraining data. Folders are streamed in file order.
    #[arg(long)]
    pub data: Option<String>,
    /// Output FILE.npy (float32 [rows, dim]); FILE.csv and FILE.json are written beside it. Or
    /// FILE.parquet (row, id, label, embedding) + FILE.json (feature `parquet`, default).
    #[arg(long)]
    pub out: PathBuf,
    /// Image runs: the encoder stage whose pooled output is written (1..=4; default the last).
    #[arg(long)]
    pub stage: Option<usize>,
    /// Leave out images that fail to decode (with a warning and a count) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Inputs per forward pass (default 256 images, 32 documents).
    #[arg(long)]
    pub batch_size: Option<usize>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct SimilarArgs {
    /// The image run whose encoder wrote the index.
    #[arg(long)]
    pub from: PathBuf,
    /// FILE.npy written by `pretext embed` (FILE.csv beside it names the rows).
    #[arg(long)]
    pub index: PathBuf,
    /// The query image (PNG or JPEG).
    #[arg(long)]
    pub query: PathBuf,
    /// How many neighbours to print.
    #[arg(short, long, default_value_t = 5)]
    pub k: usize,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(clap::Args, Debug)]
pub struct ExportArgs {
    /// A pretraining run directory (image runs: convnet, resnet18; text runs: the transformer,
    /// with its tokenizer written beside the export).
    #[arg(long)]
    pub from: PathBuf,
    /// onnx (one .onnx file, opset 17) or torch (a directory: model.safetensors, config.json,
    /// pretext_encoder.py).
    #[arg(long)]
    pub format: String,
    /// The .onnx file, or the directory for torch.
    #[arg(long)]
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct GenerateArgs {
    /// A causal-lm run directory.
    #[arg(long)]
    pub from: std::path::PathBuf,
    /// The text to continue.
    #[arg(long)]
    pub prompt: String,
    /// How many tokens to generate.
    #[arg(long, default_value_t = 200)]
    pub tokens: usize,
    /// Softmax temperature; 0 always picks the most likely token.
    #[arg(long, default_value_t = 0.8)]
    pub temperature: f64,
    /// Sample among the k most likely tokens only; 0 = all.
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Random seed: the same seed gives the same text.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Recompute the whole context for every token instead of reading the prompt once into a
    /// key/value cache (the same text, slower; for comparison).
    #[arg(long)]
    pub no_cache: bool,
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

#[derive(Subcommand, Debug)]
pub enum TokenizerCommand {
    /// Train byte-level BPE on a corpus and save it as a tokenizer.json.
    Train(TokenizerTrainArgs),
    /// Print the token ids and pieces of a text.
    Encode(TokenizerEncodeArgs),
}

#[derive(clap::Args, Debug)]
pub struct TokenizerTrainArgs {
    /// Text corpus: text:PATH (.txt/.txt.gz file or folder; a document per paragraph) or
    /// jsonl:PATH (.jsonl/.jsonl.gz file or folder; a document per line).
    #[arg(long)]
    pub data: String,
    /// Vocabulary size, including the 256 byte tokens and 4 specials (260 = bytes only).
    #[arg(long, default_value_t = 4096)]
    pub vocab: usize,
    /// Where to write the tokenizer (Hugging Face tokenizer.json format).
    #[arg(long)]
    pub out: PathBuf,
    /// A pair must occur this often to be merged.
    #[arg(long, default_value_t = 2)]
    pub min_frequency: u64,
    /// JSON lines: the field holding the text.
    #[arg(long, default_value = "text")]
    pub text_field: String,
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct TokenizerEncodeArgs {
    /// A tokenizer.json written by `pretext tokenizer train`.
    #[arg(long)]
    pub tokenizer: PathBuf,
    /// The text to encode.
    pub text: String,
}

#[derive(clap::Args, Debug)]
pub struct CompareArgs {
    /// Data spec FORMAT:PATH (labelled: the labels are used only for transfer). Images, or
    /// labelled text (`jsonl:FILE`, scored by macro-F1).
    #[arg(long)]
    pub data: String,
    /// Pretext tasks, comma-separated (see `pretext tasks`); tasks that do not apply to the data
    /// are listed as skipped with the reason. Default: rotation,context,jigsaw,simclr for
    /// images, masked-lm,causal-lm for text.
    #[arg(long)]
    pub tasks: Option<String>,
    /// Label budgets per class, comma-separated numbers and/or `all`. Default: 1,10,100 for
    /// images, 16,128 for text.
    #[arg(long)]
    pub labels_per_class: Option<String>,
    /// Transfer protocols, comma-separated: linear, knn, finetune, semi. The random baseline gets
    /// the frozen ones (linear, knn); the scratch baseline is always evaluated with finetune, so
    /// every table answers "does pretraining beat training on the labels alone?", and with semi
    /// when it is asked for (the semi stage from scratch).
    #[arg(long, default_value = "linear,knn,finetune")]
    pub protocols: String,
    /// Pretraining steps per task.
    #[arg(long, default_value_t = 1000)]
    pub budget: u64,
    /// A time budget per task: each task's pretraining stops at the first step after this many
    /// minutes (its `max_minutes`; fractions allowed), or at `--budget` steps if sooner; 0 = none.
    #[arg(long, default_value_t = 0.0)]
    pub minutes: f64,
    /// Label draws (seeds) for image budgets of at most 10 labels per class and for every
    /// numeric text budget (mean ± std); the others use one.
    #[arg(long, default_value_t = 3)]
    pub seeds: u64,
    /// Encoder stages to probe for the per-layer plot: `all`, `none` or e.g. `2,3`.
    #[arg(long, default_value = "all")]
    pub stages: String,
    /// Pretraining key for every task, e.g. --set width=16 --set batch_size=32 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Transfer setting for every cell, e.g. --transfer-set test_limit=2000 (repeatable).
    #[arg(long = "transfer-set", value_name = "KEY=VALUE")]
    pub transfer_set: Vec<String>,
    /// Output directory (rerun with the same settings to continue it).
    #[arg(long)]
    pub out: PathBuf,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct ReportArgs {
    /// A directory written by `pretext compare`.
    pub out: PathBuf,
}

#[derive(clap::Args, Debug)]
pub struct PretrainArgs {
    /// Pretext task (see `pretext tasks`).
    #[arg(long)]
    pub task: Option<String>,
    /// Data spec FORMAT:PATH, e.g. idx:../shared/data/fashion-mnist (images: idx, cifar10,
    /// cifar100, stl10, folder; text for causal-lm/masked-lm: text, jsonl).
    #[arg(long)]
    pub data: Option<String>,
    /// Text tasks: a tokenizer.json (from `pretext tokenizer train`); default: train one on the
    /// corpus (`--set vocab=4096`), or `bytes` for the byte-level tokenizer.
    #[arg(long)]
    pub tokenizer: Option<String>,
    /// Run directory to create.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Continue the run in this directory from its latest checkpoint.
    #[arg(long, conflicts_with_all = ["task", "data", "out", "config", "set", "tokenizer"])]
    pub resume: Option<PathBuf>,
    /// TOML preset file (see configs/); unknown keys are errors.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a config key, e.g. --set steps=300 --set rotation.flip=false (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// cpu, wgpu, vulkan or cuda (GPU devices need a build with that feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Skip images that fail to decode (with a count) instead of stopping.
    #[arg(long)]
    pub skip_bad: bool,
    /// Stop with a checkpoint after this many steps (resume later with --resume).
    #[arg(long)]
    pub stop_after: Option<u64>,
    /// No progress output.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct TransferArgs {
    /// A pretraining run directory, or `random` (frozen random weights) or `scratch` (trained on the labels only).
    #[arg(long)]
    pub from: String,
    /// Labelled data spec FORMAT:PATH; defaults to the run's pretraining data.
    #[arg(long)]
    pub data: Option<String>,
    /// Labelled examples per class: a number or `all`.
    #[arg(long, default_value = "10")]
    pub labels_per_class: String,
    /// linear (probe on frozen features), knn (k=20; cosine, T=0.1), finetune (whole encoder)
    /// or semi (fine-tuning, then the unlabelled training images keep teaching: FixMatch-style
    /// consistency and distillation; `--set semi_*`).
    #[arg(long, default_value = "linear")]
    pub protocol: String,
    /// TOML preset file of transfer settings.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// Override a transfer setting, e.g. --set seed=3 --set finetune_steps=500 (repeatable).
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Directory for the result JSON (default: RUN/transfer, or runs/baseline-random|scratch).
    #[arg(long)]
    pub out: Option<PathBuf>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Run directory for the demo's pretraining (replaced if it holds an earlier demo run).
    #[arg(long, default_value = "runs/demo")]
    pub out: PathBuf,
    /// Override a pretraining key, e.g. --set steps=100.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    /// Override a transfer key for every evaluation, e.g. --transfer-set finetune_steps=100.
    #[arg(long = "transfer-set", value_name = "KEY=VALUE")]
    pub transfer_set: Vec<String>,
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(clap::Args, Debug)]
pub struct BenchArgs {
    /// Pretext tasks to measure, comma-separated (default: every task; causal-lm and masked-lm
    /// use the tiny transformer with 128-token sequences and report tokens/s).
    #[arg(
        long,
        default_value = "rotation,context,jigsaw,colorize,superres,inpaint,causal-lm,masked-lm"
    )]
    pub tasks: String,
    /// Backbone of every image task: convnet, resnet18, vit, vit-small or vit-base (mae needs a
    /// vit).
    #[arg(long, default_value = "convnet")]
    pub backbone: String,
    /// Images drawn from the data per step (rotation makes 4 inputs of each, context and jigsaw
    /// 9 patches or tiles).
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
    /// Timed steps per task (after 2 warm-up steps); the median step is reported.
    #[arg(long, default_value_t = 10)]
    pub steps: usize,
    /// Python interpreter for the PyTorch reference (bench/reference.py).
    #[arg(long, default_value = "python3")]
    pub python: String,
    /// Device for pretext: cpu, wgpu, vulkan, cuda (GPU devices need the binary's feature).
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Device for the PyTorch reference (default: cpu for --device cpu, otherwise cuda).
    #[arg(long)]
    pub torch_device: Option<String>,
    /// Compute threads for both pretext (rayon pool) and PyTorch (set_num_threads); 0 = one per
    /// core.
    #[arg(long, default_value_t = 0)]
    pub threads: usize,
    /// pretext's model replicas, each on its part of the batch in its own share of the threads
    /// (see `engine::replicas`); 0 = one per thread, as `pretrain` does; 1 = none.
    #[arg(long, default_value_t = 0)]
    pub replicas: usize,
    /// Seconds the loader runs per task to measure its delivery rate.
    #[arg(long, default_value_t = 1.5)]
    pub loader_seconds: f64,
    /// Also write the measurements as JSON lines to this file.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
    /// Instead of training: generation tokens/s with and without the key/value cache at 128 and
    /// 1,024 tokens of context (tiny transformer, random weights; uses --device and --threads).
    #[arg(long)]
    pub generate: bool,
    /// Internal: measure one task in this process and print JSON.
    #[arg(long, hide = true)]
    pub child: Option<String>,
    /// Internal: where the child writes the batch for the reference.
    #[arg(long, hide = true)]
    pub dump: Option<std::path::PathBuf>,
}
