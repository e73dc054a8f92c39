//! The numbers of a compare, read back from its cell JSONs: mean ± std per encoder × protocol ×
//! label budget, the per-layer probes, and the tables (Markdown and HTML) with the best per column
//! marked.

use std::path::Path;

use super::plan::{self, Cell, Encoder, Settings};
use crate::transfer::labels::PerClass;
use crate::transfer::Protocol;

/// Mean and spread of one label budget's draws.
#[derive(Clone, Debug, PartialEq)]
pub struct Stat {
    pub mean: f64,
    /// Population standard deviation over the draws (0 for one draw).
    pub std: f64,
    /// How many draws (seeds) are on disk.
    pub n: usize,
    /// Labelled examples per class actually used (for `all`: training images / classes).
    pub per_class: f64,
}

impl Stat {
    pub fn of(accs: &[f64], per_class: f64) -> Option<Self> {
        if accs.is_empty() {
            return None;
        }
        let n = accs.len() as f64;
        let mean = accs.iter().sum::<f64>() / n;
        let var = accs.iter().map(|a| (a - mean).powi(2)).sum::<f64>() / n;
        Some(Self {
            mean,
            std: var.sqrt(),
            n: accs.len(),
            per_class,
        })
    }

    pub fn text(&self) -> String {
        if self.n > 1 {
            format!("{:.4} ± {:.4}", self.mean, self.std)
        } else {
            format!("{:.4}", self.mean)
        }
    }
}

/// One line of the main table: an encoder under one protocol, a column per label budget.
#[derive(Clone, Debug)]
pub struct Row {
    pub encoder: Encoder,
    pub protocol: Protocol,
    pub cols: Vec<Option<Stat>>,
}

impl Row {
    pub fn label(&self) -> String {
        match &self.encoder {
            Encoder::Task(t) => t.clone(),
            Encoder::Random => "random weights (frozen)".into(),
            Encoder::Scratch => "from scratch".into(),
        }
    }
}

/// Per-layer probe accuracies of one encoder (stage, accuracy).
#[derive(Clone, Debug)]
pub struct Layers {
    pub encoder: Encoder,
    pub points: Vec<(usize, f64)>,
}

#[derive(Clone, Debug)]
pub struct Results {
    pub labels: Vec<String>,
    pub rows: Vec<Row>,
    pub layers: Vec<Layers>,
    /// The per-layer probes' protocol and label budget.
    pub probe: Option<(Protocol, PerClass)>,
    pub cells_done: usize,
    pub cells_total: usize,
    /// e.g. "10000 test images (test split)".
    pub evaluated_on: Option<String>,
    /// Seconds spent in the cells on disk.
    pub cells_wall_s: f64,
}

/// Read every planned cell's result that is on disk.
pub fn collect(out: &Path, s: &Settings, skipped: &[String]) -> Results {
    let cells = plan::cells(s, skipped);
    let mut rows: Vec<Row> = Vec::new();
    let mut done = 0;
    let mut wall = 0.0;
    let mut evaluated_on = None;
    let per_class = s.per_class();
    for cell in cells.iter().filter(|c| c.stage == 0) {
        if !rows
            .iter()
            .any(|r| r.encoder == cell.encoder && r.protocol == cell.protocol)
        {
            rows.push(Row {
                encoder: cell.encoder.clone(),
                protocol: cell.protocol,
                cols: vec![None; per_class.len()],
            });
        }
    }
    for row in &mut rows {
        for (j, &labels) in per_class.iter().enumerate() {
            let results: Vec<_> = cells
                .iter()
                .filter(|c| {
                    c.stage == 0
                        && c.encoder == row.encoder
                        && c.protocol == row.protocol
                        && c.labels == labels
                })
                .filter_map(|c| c.result(out))
                .collect();
            if let Some(r) = results.first() {
                evaluated_on.get_or_insert(format!(
                    "{} {} ({})",
                    r.n_test,
                    s.kind.items(),
                    r.evaluated_on
                ));
            }
            done += results.len();
            wall += results.iter().map(|r| r.wall_s).sum::<f64>();
            let accs: Vec<f64> = results.iter().map(|r| r.score(s.kind)).collect();
            let x = match labels {
                PerClass::N(n) => n as f64,
                PerClass::All => results
                    .first()
                    .map_or(0.0, |r| r.n_train as f64 / s.classes.max(1) as f64),
            };
            row.cols[j] = Stat::of(&accs, x);
        }
    }
    let probe = s.probe();
    let mut layers = Vec::new();
    if let Some((protocol, labels)) = probe {
        let encoders = s
            .tasks
            .iter()
            .filter(|t| !skipped.contains(t))
            .map(|t| Encoder::Task(t.clone()))
            .chain([Encoder::Random]);
        for enc in encoders {
            let mut points = Vec::new();
            for (stage, cell_stage) in s.plot_stages() {
                let cell = Cell {
                    encoder: enc.clone(),
                    protocol,
                    labels,
                    seed: 0,
                    stage: cell_stage,
                };
                if let Some(r) = cell.result(out) {
                    if cell.stage > 0 {
                        done += 1;
                        wall += r.wall_s;
                    }
                    points.push((stage, r.score(s.kind)));
                }
            }
            if !points.is_empty() {
                layers.push(Layers {
                    encoder: enc,
                    points,
                });
            }
        }
    }
    Results {
        labels: s.labels_per_class.clone(),
        rows,
        layers,
        probe,
        cells_done: done,
        cells_total: cells.len(),
        evaluated_on,
        cells_wall_s: wall,
    }
}

/// For each column, the row with the highest mean (None for an empty column).
pub fn best_per_column(rows: &[Row]) -> Vec<Option<usize>> {
    let cols = rows.first().map_or(0, |r| r.cols.len());
    (0..cols)
        .map(|j| {
            rows.iter()
                .enumerate()
                .filter_map(|(i, r)| r.cols[j].as_ref().map(|s| (i, s.mean)))
                .max_by(|a, b| a.1.total_cmp(&b.1))
                .map(|(i, _)| i)
        })
        .collect()
}

fn header(labels: &[String]) -> Vec<String> {
    let mut h = vec!["encoder".to_string(), "protocol".to_string()];
    h.extend(labels.iter().map(|l| format!("{l} labels/class")));
    h
}

/// The main table in Markdown, the best of each column in bold.
pub fn markdown(res: &Results) -> String {
    let best = best_per_column(&res.rows);
    let h = header(&res.labels);
    let mut s = format!("| {} |\n|{}\n", h.join(" | "), "---|".repeat(h.len()));
    for (i, r) in res.rows.iter().enumerate() {
        let mut cells = vec![r.label(), r.protocol.name().to_string()];
        for (j, c) in r.cols.iter().enumerate() {
            cells.push(match c {
                Some(st) if best[j] == Some(i) => format!("**{}**", st.text()),
                Some(st) => st.text(),
                None => "—".into(),
            });
        }
        s.push_str(&format!("| {} |\n", cells.join(" | ")));
    }
    s
}

/// The main table in HTML (`<table id="results">`), the best of each column in bold.
pub fn html(res: &Results) -> String {
    let best = best_per_column(&res.rows);
    let mut s = String::from("<table id=\"results\">\n<tr>");
    for h in header(&res.labels) {
        s.push_str(&format!("<th>{}</th>", esc(&h)));
    }
    s.push_str("</tr>\n");
    for (i, r) in res.rows.iter().enumerate() {
        let class = if r.encoder.is_baseline() {
            " class=\"baseline\""
        } else {
            ""
        };
        s.push_str(&format!(
            "<tr{class}><td>{}</td><td>{}</td>",
            esc(&r.label()),
            r.protocol.name()
        ));
        for (j, c) in r.cols.iter().enumerate() {
            match c {
                Some(st) if best[j] == Some(i) => s.push_str(&format!(
                    "<td class=\"best\"><b>{}</b></td>",
                    esc(&st.text())
                )),
                Some(st) => s.push_str(&format!("<td>{}</td>", esc(&st.text()))),
                None => s.push_str("<td>—</td>"),
            }
        }
        s.push_str("</tr>\n");
    }
    s.push_str("</table>\n");
    s
}

/// The per-layer probes as (header, rows) of plain strings, best per stage marked with `mark`.
pub fn layer_table(res: &Results, stages: usize, mark: fn(&str) -> String) -> Vec<Vec<String>> {
    let mut out = vec![std::iter::once("encoder".to_string())
        .chain((1..=stages).map(|k| format!("stage {k}")))
        .collect::<Vec<_>>()];
    let best: Vec<Option<f64>> = (1..=stages)
        .map(|k| {
            res.layers
                .iter()
                .filter_map(|l| l.points.iter().find(|p| p.0 == k).map(|p| p.1))
                .max_by(f64::total_cmp)
        })
        .collect();
    for l in &res.layers {
        let mut row = vec![l.encoder.name().to_string()];
        for k in 1..=stages {
            row.push(match l.points.iter().find(|p| p.0 == k) {
                Some(&(_, a)) if best[k - 1] == Some(a) => mark(&format!("{a:.4}")),
                Some(&(_, a)) => format!("{a:.4}"),
                None => "—".into(),
            });
        }
        out.push(row);
    }
    out
}

/// Escape text for HTML.
pub fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(enc: Encoder, means: &[Option<f64>]) -> Row {
        Row {
            encoder: enc,
            protocol: Protocol::Linear,
            cols: means
                .iter()
                .map(|m| m.and_then(|m| Stat::of(&[m], 1.0)))
                .collect(),
        }
    }

    #[test]
    fn stats_and_best_columns() {
        let s = Stat::of(&[0.5, 0.7], 10.0).unwrap();
        assert!((s.mean - 0.6).abs() < 1e-12 && (s.std - 0.1).abs() < 1e-12);
        assert_eq!(s.text(), "0.6000 ± 0.1000");
        assert!(Stat::of(&[], 1.0).is_none());
        let rows = vec![
            row(Encoder::Task("a".into()), &[Some(0.3), Some(0.9), None]),
            row(Encoder::Random, &[Some(0.4), Some(0.5), None]),
        ];
        assert_eq!(best_per_column(&rows), vec![Some(1), Some(0), None]);
        let res = Results {
            labels: vec!["1".into(), "10".into(), "all".into()],
            rows,
            layers: vec![],
            probe: None,
            cells_done: 4,
            cells_total: 6,
            evaluated_on: None,
            cells_wall_s: 0.0,
        };
        let md = markdown(&res);
        assert!(
            md.contains("| a | linear | 0.3000 | **0.9000** | — |"),
            "{md}"
        );
        assert!(md.contains("| random weights (frozen) | linear | **0.4000** |"));
        let h = html(&res);
        assert!(h.contains("<td class=\"best\"><b>0.9000</b></td>"), "{h}");
    }
}
