//! `pretext report OUT`: (re)build `OUT/report.html` (self-contained: the PNGs embedded as base64
//! data URIs) and `OUT/report.md` (linking the PNGs in `OUT/plots/`) from what is on disk:
//! `compare.json`, `skipped.json`, `log.jsonl`, `pretrain/<task>/` runs and `cells/`.

use std::path::{Path, PathBuf};

use base64::Engine;

use super::plan::{Encoder, Kind, Settings};
use super::plots::{self, Line, Style};
use super::tables::{self, esc, Results};
use super::{finished_pretraining, Invocation};
use crate::engine::PretrainSummary;
use crate::error::{Error, Result};
use crate::platform::fsio::write_atomic;
use crate::transfer::Protocol;

/// What the report knows about one task's pretraining run.
struct Pretraining {
    task: String,
    summary: Option<PretrainSummary>,
    /// (step, loss) from `metrics.jsonl`.
    loss: Vec<(f64, f64)>,
    /// Sample pictures the task wrote (`*.png` in the run directory), relative to OUT.
    samples: Vec<PathBuf>,
}

/// A rendered plot: file name under `OUT/plots/`, caption, PNG bytes.
struct Plot {
    file: &'static str,
    title: &'static str,
    caption: String,
    png: Vec<u8>,
}

/// Build both reports; returns (html, md) paths.
pub fn build(out: &Path) -> Result<(PathBuf, PathBuf)> {
    let settings: Settings = read_json(&out.join("compare.json")).ok_or_else(|| {
        Error::Usage(format!(
            "{}: no readable compare.json; is it a directory written by `pretext compare`?",
            out.display()
        ))
    })?;
    let skipped: Vec<(String, String)> = read_json(&out.join("skipped.json")).unwrap_or_default();
    let skipped_names: Vec<String> = skipped.iter().map(|s| s.0.clone()).collect();
    let log = read_log(&out.join("log.jsonl"));
    let results = tables::collect(out, &settings, &skipped_names);
    let runs: Vec<Pretraining> = settings
        .tasks
        .iter()
        .filter(|t| !skipped_names.contains(t))
        .map(|t| pretraining(out, t))
        .collect();

    let plots = render_plots(&settings, &results, &runs)?;
    let dir = out.join("plots");
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    for p in &plots {
        write_atomic(&dir.join(p.file), &p.png)?;
    }
    let html = out.join("report.html");
    let md = out.join("report.md");
    let report = Contents {
        settings,
        skipped,
        log,
        results,
        runs,
        plots,
    };
    write_atomic(&html, html_report(out, &report).as_bytes())?;
    write_atomic(&md, markdown_report(&report).as_bytes())?;
    Ok((html, md))
}

/// What both reports show.
struct Contents {
    settings: Settings,
    skipped: Vec<(String, String)>,
    log: Vec<Invocation>,
    results: Results,
    runs: Vec<Pretraining>,
    plots: Vec<Plot>,
}

impl Contents {
    #[allow(clippy::type_complexity)]
    fn parts(
        &self,
    ) -> (
        &Settings,
        &[(String, String)],
        &[Invocation],
        &Results,
        &[Pretraining],
        &[Plot],
    ) {
        let c = self;
        (
            &c.settings,
            &c.skipped,
            &c.log,
            &c.results,
            &c.runs,
            &c.plots,
        )
    }
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Option<T> {
    serde_json::from_slice(&std::fs::read(path).ok()?).ok()
}

fn read_log(path: &Path) -> Vec<Invocation> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

fn pretraining(out: &Path, task: &str) -> Pretraining {
    let dir = out.join("pretrain").join(task);
    let summary = finished_pretraining(&dir).or_else(|| read_json(&dir.join("summary.json")));
    let loss = std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| Some((v.get("step")?.as_f64()?, v.get("loss")?.as_f64()?)))
        .collect();
    let mut samples: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|p| p.extension().is_some_and(|x| x == "png"))
                .filter_map(|p| p.strip_prefix(out).ok().map(Path::to_path_buf))
                .collect()
        })
        .unwrap_or_default();
    samples.sort();
    Pretraining {
        task: task.to_string(),
        summary,
        loss,
        samples,
    }
}

fn style(e: &Encoder, s: &Settings) -> Style {
    match e {
        Encoder::Task(t) => Style::Task(s.tasks.iter().position(|x| x == t).unwrap_or(0)),
        Encoder::Random => Style::Random,
        Encoder::Scratch => Style::Scratch,
    }
}

fn render_plots(s: &Settings, res: &Results, runs: &[Pretraining]) -> Result<Vec<Plot>> {
    let fail = |file: &str, e: String| Error::io(file, std::io::Error::other(e));
    let mut plots = Vec::new();
    // Label efficiency: one panel per protocol asked for; scratch (finetune) is drawn in every
    // panel as the reference, since it is the only way to use the labels without pretraining.
    // The semi stage's panel also gets scratch + semi, its own from-scratch baseline.
    let scratch_of = |p: Protocol| -> Vec<Line> {
        res.rows
            .iter()
            .filter(|r| {
                r.encoder == Encoder::Scratch
                    && (r.protocol == Protocol::Finetune || r.protocol == p)
            })
            .map(|r| {
                let name = format!("scratch ({})", r.protocol.name());
                line(name, Style::Scratch, &r.cols)
            })
            .collect()
    };
    let panels: Vec<(String, Vec<Line>)> = s
        .protocols
        .iter()
        .map(|&p| {
            let mut lines: Vec<Line> = res
                .rows
                .iter()
                .filter(|r| r.protocol == p && r.encoder != Encoder::Scratch)
                .map(|r| {
                    let name = match &r.encoder {
                        Encoder::Random => "random (frozen)".to_string(),
                        e => e.name().to_string(),
                    };
                    line(name, style(&r.encoder, s), &r.cols)
                })
                .collect();
            lines.extend(scratch_of(p));
            (p.name().to_string(), lines)
        })
        .collect();
    plots.push(Plot {
        file: "label-efficiency.png",
        title: "Label efficiency",
        caption: format!(
            "Test {} against labelled examples per class (log scale), one panel per protocol; \
             points are the mean over the label draws ({}), error bars one standard deviation. \
             Baselines: random = the same {} with frozen random weights (linear/knn only); \
             scratch = the same {} trained on the labels only (finetune), drawn in every panel \
             as the reference.",
            s.kind.metric(),
            draws(s),
            encoder_word(s),
            encoder_word(s),
        ),
        png: plots::label_efficiency(&panels, s.kind.metric())
            .map_err(|e| fail("label-efficiency.png", e))?,
    });
    if let (Some((protocol, labels)), false) = (res.probe, res.layers.is_empty()) {
        let lines: Vec<Line> = res
            .layers
            .iter()
            .map(|l| Line {
                name: match &l.encoder {
                    Encoder::Random => "random (frozen)".into(),
                    e => e.name().to_string(),
                },
                style: style(&l.encoder, s),
                points: l.points.iter().map(|&(k, a)| (k as f64, a, 0.0)).collect(),
            })
            .collect();
        let title = format!(
            "{} probe per stage, {} labels/class",
            protocol.name(),
            labels.label()
        );
        plots.push(Plot {
            file: "per-layer.png",
            title: "Per-layer probe",
            caption: format!(
                "{} probe on the pooled output of each encoder stage ({} labels per class, label \
                 draw 0; {}). Pretext features often peak before the last stage.",
                protocol.name(),
                labels.label(),
                match s.kind {
                    Kind::Image => "stage = backbone stage",
                    Kind::Text => "stage k = after transformer block k, mean over the tokens",
                }
            ),
            png: plots::per_layer(&title, &lines, s.encoder_stages, s.kind.metric())
                .map_err(|e| fail("per-layer.png", e))?,
        });
    }
    let curves: Vec<(String, Vec<(f64, f64)>)> = runs
        .iter()
        .filter(|r| !r.loss.is_empty())
        .map(|r| (r.task.clone(), r.loss.clone()))
        .collect();
    if !curves.is_empty() {
        plots.push(Plot {
            file: "pretrain-loss.png",
            title: "Pretraining loss",
            caption: format!(
                "Training loss of each pretext task ({} steps each, same backbone and seed), \
                 from the runs' metrics.jsonl. The scales differ by task (chance level is \
                 ln(number of classes) for the classification tasks).",
                s.budget
            ),
            png: plots::loss_curves(&curves).map_err(|e| fail("pretrain-loss.png", e))?,
        });
    }
    Ok(plots)
}

fn line(name: String, style: Style, cols: &[Option<tables::Stat>]) -> Line {
    Line {
        name,
        style,
        points: cols
            .iter()
            .flatten()
            .filter(|st| st.per_class > 0.0)
            .map(|st| (st.per_class, st.mean, st.std))
            .collect(),
    }
}

fn settings_lines(s: &Settings, res: &Results) -> Vec<(String, String)> {
    let mut v = vec![
        ("data".to_string(), s.data.clone()),
        ("pretext tasks".into(), s.tasks.join(", ")),
        (
            "pretraining budget".into(),
            if s.minutes > 0.0 {
                format!(
                    "{} steps or {} minutes per task, whichever ran out first",
                    s.budget, s.minutes
                )
            } else {
                format!("{} steps per task", s.budget)
            },
        ),
        (
            "label budgets".into(),
            format!("{} labels per class", s.labels_per_class.join(", ")),
        ),
        (
            "protocols".into(),
            s.protocols
                .iter()
                .map(|p| p.name())
                .collect::<Vec<_>>()
                .join(", "),
        ),
        ("label draws".into(), draws(s)),
        (
            "cells".into(),
            format!("{} of {} on disk", res.cells_done, res.cells_total),
        ),
    ];
    if !s.pretrain_sets.is_empty() {
        v.push(("pretraining --set".into(), s.pretrain_sets.join(" ")));
    }
    if !s.transfer_sets.is_empty() {
        v.push(("--transfer-set".into(), s.transfer_sets.join(" ")));
    }
    if let Some(e) = &res.evaluated_on {
        v.push(("evaluated on".into(), e.clone()));
    }
    v
}

/// How many label draws each budget got.
fn draws(s: &Settings) -> String {
    match s.kind {
        Kind::Image => format!(
            "{} seeds for budgets up to {} labels/class, 1 above",
            s.seeds,
            super::plan::SMALL_BUDGET
        ),
        Kind::Text => format!("{} seeds for every numeric budget, 1 for all", s.seeds),
    }
}

fn encoder_word(s: &Settings) -> &'static str {
    match s.kind {
        Kind::Image => "backbone",
        Kind::Text => "transformer and tokenizer",
    }
}

fn total_wall(log: &[Invocation]) -> f64 {
    log.iter().map(|i| i.wall_s).sum()
}

fn html_report(out: &Path, report: &Contents) -> String {
    let (s, skipped, log, res, runs, plots) = report.parts();
    let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut h = String::new();
    h.push_str(&format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n<title>pretext compare: {}</title>\n<style>\n{}\n</style></head>\n<body>\n",
        esc(&out.display().to_string()),
        CSS
    ));
    h.push_str(&format!(
        "<h1>Which pretext task helps most: {}</h1>\n<table class=\"kv\">\n",
        esc(&s.data)
    ));
    for (k, v) in settings_lines(s, res) {
        h.push_str(&format!(
            "<tr><th>{}</th><td>{}</td></tr>\n",
            esc(&k),
            esc(&v)
        ));
    }
    h.push_str("</table>\n");
    for p in plots {
        h.push_str(&format!(
            "<h2 id=\"{}\">{}</h2>\n<figure><img alt=\"{}\" src=\"data:image/png;base64,{}\">\n<figcaption>{}</figcaption></figure>\n",
            p.file.trim_end_matches(".png"),
            p.title,
            p.title,
            b64(&p.png),
            esc(&p.caption)
        ));
    }
    h.push_str(&format!("<h2 id=\"numbers\">All numbers</h2>\n<p>Test {}, mean ± standard deviation over the label draws; the best of each column in bold.</p>\n", s.kind.metric()));
    h.push_str(&tables::html(res));
    if !res.layers.is_empty() {
        h.push_str("<h3>Per-layer probe</h3>\n<table id=\"layers\">\n");
        for (i, row) in tables::layer_table(res, s.encoder_stages, |t| format!("<b>{t}</b>"))
            .iter()
            .enumerate()
        {
            let tag = if i == 0 { "th" } else { "td" };
            h.push_str("<tr>");
            for c in row {
                h.push_str(&format!("<{tag}>{c}</{tag}>"));
            }
            h.push_str("</tr>\n");
        }
        h.push_str("</table>\n");
    }
    h.push_str("<h2 id=\"samples\">What each task shows the network</h2>\n");
    for r in runs {
        if r.samples.is_empty() {
            h.push_str(&format!(
                "<p><b>{}</b>: no sample picture (the task writes none).</p>\n",
                esc(&r.task)
            ));
        }
        for rel in &r.samples {
            if let Ok(bytes) = std::fs::read(out.join(rel)) {
                h.push_str(&format!(
                    "<figure><img class=\"sample\" alt=\"{t} samples\" src=\"data:image/png;base64,{}\">\n<figcaption>{t}: {}</figcaption></figure>\n",
                    b64(&bytes),
                    esc(&rel.display().to_string()),
                    t = esc(&r.task)
                ));
            }
        }
    }
    if !skipped.is_empty() {
        h.push_str("<h2 id=\"skipped\">Skipped tasks</h2>\n<ul>\n");
        for (t, why) in skipped {
            h.push_str(&format!("<li><b>{}</b>: {}</li>\n", esc(t), esc(why)));
        }
        h.push_str("</ul>\n");
    }
    h.push_str("<h2 id=\"reproduce\">Reproduce</h2>\n<table class=\"kv\">\n");
    for (k, v) in reproduce_lines(log, runs, res) {
        h.push_str(&format!(
            "<tr><th>{}</th><td><code>{}</code></td></tr>\n",
            esc(&k),
            esc(&v)
        ));
    }
    h.push_str("</table>\n</body></html>\n");
    h
}

fn reproduce_lines(
    log: &[Invocation],
    runs: &[Pretraining],
    res: &Results,
) -> Vec<(String, String)> {
    let mut v = Vec::new();
    for (i, inv) in log.iter().enumerate() {
        v.push((
            format!("run {} ({})", i + 1, inv.started),
            format!(
                "{}  # {:.0} s, {} pretrained, {} cells{}",
                inv.command,
                inv.wall_s,
                if inv.pretrained.is_empty() {
                    "nothing".to_string()
                } else {
                    inv.pretrained.join("+")
                },
                inv.cells_run,
                if inv.interrupted { ", interrupted" } else { "" }
            ),
        ));
    }
    if let Some(last) = log.last() {
        v.push((
            "versions".into(),
            format!(
                "pretext {}, burn {}",
                last.pretext_version, last.burn_version
            ),
        ));
        v.push(("device".into(), format!("{} ({})", last.device, last.cpu)));
    }
    v.push((
        "wall time".into(),
        format!(
            "{:.0} s in all; pretraining {:.0} s, cells {:.0} s",
            total_wall(log),
            runs.iter()
                .filter_map(|r| r.summary.as_ref())
                .map(|s| s.wall_s)
                .sum::<f64>(),
            res.cells_wall_s
        ),
    ));
    for r in runs {
        if let Some(sm) = &r.summary {
            v.push((
                format!("pretrain {}", r.task),
                format!(
                    "{}/{} steps, {:.0} s (last invocation), {:.0} items/s, final loss {:.4}",
                    sm.steps_done, sm.steps, sm.wall_s, sm.items_per_s, sm.final_loss
                ),
            ));
        }
    }
    v
}

fn markdown_report(report: &Contents) -> String {
    let (s, skipped, log, res, runs, plots) = report.parts();
    let mut m = format!("# Which pretext task helps most: {}\n\n", s.data);
    for (k, v) in settings_lines(s, res) {
        m.push_str(&format!("- {k}: {v}\n"));
    }
    for p in plots {
        m.push_str(&format!(
            "\n## {}\n\n![{}](plots/{})\n\n{}\n",
            p.title, p.title, p.file, p.caption
        ));
    }
    m.push_str(&format!("\n## All numbers\n\nTest {}, mean ± standard deviation over the label draws; the best of each column in bold.\n\n", s.kind.metric()));
    m.push_str(&tables::markdown(res));
    if !res.layers.is_empty() {
        m.push_str("\n### Per-layer probe\n\n");
        let rows = tables::layer_table(res, s.encoder_stages, |t| format!("**{t}**"));
        for (i, row) in rows.iter().enumerate() {
            m.push_str(&format!("| {} |\n", row.join(" | ")));
            if i == 0 {
                m.push_str(&format!("|{}\n", "---|".repeat(row.len())));
            }
        }
    }
    m.push_str("\n## What each task shows the network\n\n");
    for r in runs {
        if r.samples.is_empty() {
            m.push_str(&format!(
                "- {}: no sample picture (the task writes none)\n\n",
                r.task
            ));
        }
        for rel in &r.samples {
            m.push_str(&format!("![{} samples]({})\n\n", r.task, rel.display()));
        }
    }
    if !skipped.is_empty() {
        m.push_str("\n## Skipped tasks\n\n");
        for (t, why) in skipped {
            m.push_str(&format!("- {t}: {why}\n"));
        }
    }
    m.push_str("\n## Reproduce\n\n");
    for (k, v) in reproduce_lines(log, runs, res) {
        m.push_str(&format!("- {k}: `{v}`\n"));
    }
    m
}

const CSS: &str = "body { font-family: sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em; color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 1.6em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
td { font-variant-numeric: tabular-nums; }
tr.baseline td { background: #f4f4f4; }
#results td.best { background: #e3f2e3; }
table.kv th { background: #fafafa; font-weight: normal; color: #555; }
figure { margin: 0.5em 0; } figure img { max-width: 100%; border: 1px solid #eee; }
img.sample { image-rendering: pixelated; min-width: 300px; }
figcaption { color: #555; font-size: 0.9em; max-width: 900px; }
code { font-size: 0.9em; }";
