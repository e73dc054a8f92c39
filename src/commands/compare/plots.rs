//! The report's plots, drawn with plotters into an RGB buffer and encoded as PNG. Text uses the
//! DejaVu Sans shipped in `assets/fonts` (through ab_glyph), so no system fonts are needed.

use std::sync::OnceLock;

use image::ImageEncoder;
use plotters::prelude::*;

const FONT: &[u8] = include_bytes!("../../../assets/fonts/DejaVuSans.ttf");

/// Tableau-10 colours for tasks; baselines are black (random) and grey (scratch).
const COLORS: &[RGBColor] = &[
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// How a line is drawn.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Style {
    /// The i-th pretext task.
    Task(usize),
    /// Frozen random weights.
    Random,
    /// Trained from scratch.
    Scratch,
}

impl Style {
    fn color(self) -> RGBColor {
        match self {
            Self::Task(i) => COLORS[i % COLORS.len()],
            Self::Random => RGBColor(0, 0, 0),
            Self::Scratch => RGBColor(128, 128, 128),
        }
    }
}

/// A named line of (x, mean, std) points.
#[derive(Clone, Debug)]
pub struct Line {
    pub name: String,
    pub style: Style,
    pub points: Vec<(f64, f64, f64)>,
}

type PlotResult<T> = std::result::Result<T, String>;

fn font() -> PlotResult<()> {
    static DONE: OnceLock<bool> = OnceLock::new();
    let ok = *DONE.get_or_init(|| {
        plotters::style::register_font("sans-serif", FontStyle::Normal, FONT).is_ok()
    });
    ok.then_some(())
        .ok_or_else(|| "the bundled font did not load".to_string())
}

/// Draw on a `w`×`h` canvas and return the PNG bytes.
fn png(
    w: u32,
    h: u32,
    draw: impl FnOnce(DrawingArea<BitMapBackend, plotters::coord::Shift>) -> PlotResult<()>,
) -> PlotResult<Vec<u8>> {
    font()?;
    let mut rgb = vec![255u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut rgb, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|e| e.to_string())?;
        draw(root.clone())?;
        root.present().map_err(|e| e.to_string())?;
    }
    let mut out = Vec::new();
    image::codecs::png::PngEncoder::new(&mut out)
        .write_image(&rgb, w, h, image::ExtendedColorType::Rgb8)
        .map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decimals that tell axis labels apart over a range of `span`.
fn decimals_for(span: f64) -> usize {
    if span <= 0.0 {
        return 3;
    }
    ((-span.log10()).ceil() as i64 + 1).clamp(1, 5) as usize
}

/// (lo, hi) of the accuracy axis: the data's range with a margin, inside [0, 1].
fn acc_range<'a>(lines: impl Iterator<Item = &'a Line>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::MAX, f64::MIN);
    for l in lines {
        for &(_, m, s) in &l.points {
            lo = lo.min(m - s);
            hi = hi.max(m + s);
        }
    }
    if lo > hi {
        return (0.0, 1.0);
    }
    let pad = ((hi - lo) * 0.1).max(0.02);
    ((lo - pad).max(0.0), (hi + pad).min(1.0))
}

fn draw_lines<'a, DB: DrawingBackend + 'a, X, Y>(
    chart: &mut ChartContext<'a, DB, Cartesian2d<X, Y>>,
    lines: &[Line],
) -> PlotResult<()>
where
    X: plotters::coord::ranged1d::Ranged<ValueType = f64>,
    Y: plotters::coord::ranged1d::Ranged<ValueType = f64>,
{
    for l in lines {
        let color = l.style.color();
        let width = if l.style == Style::Scratch || l.style == Style::Random {
            3
        } else {
            2
        };
        let stroke = color.stroke_width(width);
        chart
            .draw_series(LineSeries::new(l.points.iter().map(|p| (p.0, p.1)), stroke))
            .map_err(|e| e.to_string())?
            .label(l.name.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], stroke));
        chart
            .draw_series(
                l.points
                    .iter()
                    .map(|p| Circle::new((p.0, p.1), 3, color.filled())),
            )
            .map_err(|e| e.to_string())?;
        chart
            .draw_series(
                l.points
                    .iter()
                    .filter(|p| p.2 > 0.0)
                    .map(|p| ErrorBar::new_vertical(p.0, p.1 - p.2, p.1, p.1 + p.2, stroke, 8)),
            )
            .map_err(|e| e.to_string())?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 13))
        .draw()
        .map_err(|e| e.to_string())
}

/// Accuracy against labels per class (log x), one panel per protocol, error bars = std over the
/// label draws.
pub fn label_efficiency(panels: &[(String, Vec<Line>)], metric: &str) -> PlotResult<Vec<u8>> {
    let n = panels.len().max(1);
    let (lo, hi) = acc_range(panels.iter().flat_map(|p| p.1.iter()));
    let xs: Vec<f64> = panels
        .iter()
        .flat_map(|p| p.1.iter().flat_map(|l| l.points.iter().map(|q| q.0)))
        .filter(|x| *x > 0.0)
        .collect();
    let xmin = xs.iter().copied().fold(f64::MAX, f64::min).min(1.0);
    let xmax = xs.iter().copied().fold(1.0, f64::max);
    png(520 * n as u32, 440, |root| {
        for (area, (title, lines)) in root.split_evenly((1, n)).iter().zip(panels) {
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{title}: {metric} vs labels"), ("sans-serif", 18))
                .margin(12)
                .x_label_area_size(40)
                .y_label_area_size(55)
                .build_cartesian_2d((xmin / 1.5..xmax * 1.5).log_scale(), lo..hi)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("labels per class (log scale)")
                .y_desc(format!("test {metric}"))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&|y| format!("{y:.2}"))
                .label_style(("sans-serif", 13))
                .draw()
                .map_err(|e| e.to_string())?;
            draw_lines(&mut chart, lines)?;
        }
        Ok(())
    })
}

/// Probe accuracy at each encoder stage, one line per encoder.
pub fn per_layer(title: &str, lines: &[Line], stages: usize, metric: &str) -> PlotResult<Vec<u8>> {
    let (lo, hi) = acc_range(lines.iter());
    png(640, 440, |root| {
        let mut chart = ChartBuilder::on(&root)
            .caption(title, ("sans-serif", 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(55)
            .build_cartesian_2d(0.7..stages as f64 + 0.3, lo..hi)
            .map_err(|e| e.to_string())?;
        chart
            .configure_mesh()
            .x_desc("encoder stage (1 = first block)")
            .y_desc(format!("test {metric}"))
            .x_labels(stages)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y:.2}"))
            .label_style(("sans-serif", 13))
            .draw()
            .map_err(|e| e.to_string())?;
        draw_lines(&mut chart, lines)
    })
}

/// Pretraining loss against step, one panel per task (their losses have different scales).
pub fn loss_curves(curves: &[(String, Vec<(f64, f64)>)]) -> PlotResult<Vec<u8>> {
    let n = curves.len().max(1);
    let cols = n.min(3);
    let rows = n.div_ceil(cols);
    png(420 * cols as u32, 320 * rows as u32, |root| {
        for (i, (area, (task, pts))) in root
            .split_evenly((rows, cols))
            .iter()
            .zip(curves)
            .enumerate()
        {
            let xmax = pts.iter().map(|p| p.0).fold(1.0, f64::max);
            let ymax = pts.iter().map(|p| p.1).fold(f64::MIN, f64::max);
            let ymin = pts.iter().map(|p| p.1).fold(f64::MAX, f64::min);
            let (ymin, ymax) = if ymin > ymax {
                (0.0, 1.0)
            } else {
                let pad = ((ymax - ymin) * 0.1).max(1e-3);
                ((ymin - pad).max(0.0), ymax + pad)
            };
            let decimals = decimals_for(ymax - ymin);
            let y_fmt = move |y: &f64| format!("{y:.decimals$}");
            let mut chart = ChartBuilder::on(area)
                .caption(format!("{task}: pretraining loss"), ("sans-serif", 16))
                .margin(10)
                .x_label_area_size(35)
                .y_label_area_size(62)
                .build_cartesian_2d(0.0..xmax, ymin..ymax)
                .map_err(|e| e.to_string())?;
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc("loss")
                .x_labels((xmax as usize).clamp(2, 6))
                .x_label_formatter(&|x| format!("{x:.0}"))
                .y_label_formatter(&y_fmt)
                .label_style(("sans-serif", 12))
                .draw()
                .map_err(|e| e.to_string())?;
            chart
                .draw_series(LineSeries::new(
                    pts.iter().copied(),
                    Style::Task(i).color().stroke_width(2),
                ))
                .map_err(|e| e.to_string())?;
            if pts.len() < 20 {
                // Few logged steps: mark them, a lone point draws no line.
                chart
                    .draw_series(
                        pts.iter()
                            .map(|&p| Circle::new(p, 3, Style::Task(i).color().filled())),
                    )
                    .map_err(|e| e.to_string())?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(png: &[u8]) -> image::RgbImage {
        image::load_from_memory(png).unwrap().to_rgb8()
    }

    #[test]
    fn plots_render_with_the_bundled_font() {
        let lines = vec![
            Line {
                name: "rotation".into(),
                style: Style::Task(0),
                points: vec![(1.0, 0.4, 0.05), (10.0, 0.6, 0.02), (600.0, 0.8, 0.0)],
            },
            Line {
                name: "random".into(),
                style: Style::Random,
                points: vec![(1.0, 0.35, 0.04), (10.0, 0.55, 0.01), (600.0, 0.78, 0.0)],
            },
        ];
        let png = label_efficiency(
            &[
                ("linear".into(), lines.clone()),
                ("knn".into(), lines.clone()),
            ],
            "accuracy",
        )
        .unwrap();
        let img = decode(&png);
        assert_eq!(img.dimensions(), (1040, 440));
        // Something besides the white background was drawn, in colour.
        let coloured = img.pixels().filter(|p| p.0 == [31, 119, 180]).count();
        assert!(coloured > 100, "{coloured}");
        let img = decode(&per_layer("linear probe", &lines, 4, "accuracy").unwrap());
        assert!(img.pixels().any(|p| p.0 != [255, 255, 255]));
        let curves = vec![
            ("rotation".to_string(), vec![(10.0, 1.3), (20.0, 1.1)]),
            ("jigsaw".to_string(), vec![(10.0, 4.6), (20.0, 4.2)]),
        ];
        let img = decode(&loss_curves(&curves).unwrap());
        assert_eq!(img.dimensions(), (840, 320));
    }
}
