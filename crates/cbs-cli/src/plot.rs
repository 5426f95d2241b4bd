//! Charts: the monitor of `estimate-splits` (monitor.png), the loss against the Bayes floor
//! (`loss-floor`), and training-loss curves (`cbs plot`). Drawn with plotters into an RGB
//! buffer and written as PNG (crash-safe); text in DejaVu Sans, embedded in the binary.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
use plotters::coord::types::RangedCoordf64;
use plotters::coord::Shift;
use plotters::prelude::*;

pub const WIDTH: u32 = 800;
pub const HEIGHT: u32 = 500;

const FONT: &str = "sans-serif";
const BAND: RGBColor = RGBColor(214, 228, 245);
const TARGET: RGBColor = RGBColor(250, 190, 140);
const MESH: RGBColor = RGBColor(230, 230, 230);
const KNOT: RGBColor = RGBColor(40, 40, 40);
const MONITOR: RGBColor = RGBColor(31, 119, 180);
const CUMULATIVE: RGBColor = RGBColor(255, 127, 14);
/// Series colours of multi-run charts (matplotlib's tab10).
const PALETTE: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

fn plot_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("drawing the chart: {e}")
}

/// Draws with `draw` on a white `WIDTH × HEIGHT` area and writes the PNG to `path`.
fn png(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend, Shift>) -> Result<()>,
) -> Result<()> {
    static FONT_ONCE: Once = Once::new();
    FONT_ONCE.call_once(|| {
        // The embedded face is valid TrueType; a failure would only lose the text.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
    });
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(plot_err)?;
        draw(&root)?;
        root.present().map_err(plot_err)?;
    }
    let img = image::RgbImage::from_raw(WIDTH, HEIGHT, buf)
        .ok_or_else(|| anyhow!("chart buffer of the wrong size"))?;
    cbs_core::atomic::write_with_path(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
    })?;
    Ok(())
}

fn legend_line(c: RGBColor) -> impl Fn((i32, i32)) -> PathElement<(i32, i32)> {
    move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], c.stroke_width(2))
}

/// The legend box every chart uses, at `position`.
fn draw_legend<'a, X, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<X, Y>>,
    position: SeriesLabelPosition,
) -> Result<()>
where
    X: Ranged,
    Y: Ranged,
{
    chart
        .configure_series_labels()
        .position(position)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font((FONT, 13))
        .draw()
        .map_err(plot_err)
}

/// What [`monitor_png`] draws.
pub struct MonitorPlot<'a> {
    /// e.g. "acceleration monitor of runs/aux, N = 3".
    pub title: String,
    /// The `G + 1` grid points.
    pub grid: &'a [f64],
    /// The `G` cell masses.
    pub mass: &'a [f64],
    /// The cumulative mass at the `G + 1` grid points.
    pub cumulative: &'a [f64],
    pub knots: &'a [f64],
    /// Bootstrap interval `(lo, hi)` of each knot (may be empty).
    pub intervals: &'a [(f64, f64)],
    pub experts: usize,
}

/// The monitor per cell and its cumulative (both normalised to 1), the equidistribution
/// targets i/N, the knots and their bootstrap intervals, against t.
pub fn monitor_png(path: &Path, p: &MonitorPlot) -> Result<()> {
    png(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(&p.title, (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0f64..1f64, 0f64..1.05f64)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("t (0 = noise, 1 = data)")
            .y_desc("normalised value")
            .x_labels(11)
            .light_line_style(WHITE)
            .bold_line_style(MESH)
            .label_style((FONT, 14))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(
                p.intervals
                    .iter()
                    .map(|&(lo, hi)| Rectangle::new([(lo, 0.0), (hi, 1.05)], BAND.filled())),
            )
            .map_err(plot_err)?
            .label("knot bootstrap interval")
            .legend(|(x, y)| Rectangle::new([(x, y - 5), (x + 20, y + 5)], BAND.filled()));
        chart
            .draw_series((1..p.experts).map(|i| {
                let v = i as f64 / p.experts as f64;
                PathElement::new(vec![(0.0, v), (1.0, v)], TARGET.stroke_width(2))
            }))
            .map_err(plot_err)?
            .label("targets i/N of the cumulative")
            .legend(legend_line(TARGET));
        let max_m = p
            .mass
            .iter()
            .copied()
            .fold(0.0, f64::max)
            .max(f64::MIN_POSITIVE);
        let m = p
            .grid
            .windows(2)
            .zip(p.mass)
            .map(|(w, m)| (0.5 * (w[0] + w[1]), m / max_m));
        chart
            .draw_series(LineSeries::new(m, MONITOR.stroke_width(2)))
            .map_err(plot_err)?
            .label("monitor m(t) / max m")
            .legend(legend_line(MONITOR));
        let total = p
            .cumulative
            .last()
            .copied()
            .unwrap_or(0.0)
            .max(f64::MIN_POSITIVE);
        let c = p
            .grid
            .iter()
            .zip(p.cumulative)
            .map(|(&t, c)| (t, c / total));
        chart
            .draw_series(LineSeries::new(c, CUMULATIVE.stroke_width(2)))
            .map_err(plot_err)?
            .label("cumulative C(t) / C(1)")
            .legend(legend_line(CUMULATIVE));
        chart
            .draw_series(
                p.knots
                    .iter()
                    .map(|&k| PathElement::new(vec![(k, 0.0), (k, 1.05)], KNOT.stroke_width(2))),
            )
            .map_err(plot_err)?
            .label("knots")
            .legend(legend_line(KNOT));
        draw_legend(&mut chart, SeriesLabelPosition::UpperLeft)
    })
}

/// One row of [`loss_floor_png`]: a time bin and its loss and floor.
pub struct FloorBin {
    pub lo: f64,
    pub hi: f64,
    pub loss: Option<f64>,
    pub floor: Option<f64>,
}

/// Training loss and Bayes floor per time bin (the gap is the excess loss).
pub fn loss_floor_png(path: &Path, title: &str, bins: &[FloorBin]) -> Result<()> {
    let top = bins
        .iter()
        .flat_map(|b| [b.loss, b.floor])
        .flatten()
        .fold(0.0, f64::max)
        .max(1e-12)
        * 1.1;
    png(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(0f64..1f64, 0f64..top)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("t (0 = noise, 1 = data)")
            .y_desc("loss per element")
            .x_labels(11)
            .light_line_style(WHITE)
            .bold_line_style(MESH)
            .label_style((FONT, 14))
            .draw()
            .map_err(plot_err)?;
        let mid = |b: &FloorBin| 0.5 * (b.lo + b.hi);
        let pts = |f: fn(&FloorBin) -> Option<f64>| -> Vec<(f64, f64)> {
            bins.iter()
                .filter_map(|b| f(b).map(|v| (mid(b), v)))
                .collect()
        };
        for (name, values, color) in [
            ("training loss", pts(|b| b.loss), PALETTE[0]),
            ("Bayes floor", pts(|b| b.floor), PALETTE[3]),
        ] {
            chart
                .draw_series(LineSeries::new(values.clone(), color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name)
                .legend(legend_line(color));
            chart
                .draw_series(values.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .map_err(plot_err)?;
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

/// Training-loss curves (`(step, loss)` per run, log scale) on one chart.
pub fn loss_curves_png(path: &Path, title: &str, runs: &[(String, Vec<(f64, f64)>)]) -> Result<()> {
    let pts = runs.iter().flat_map(|(_, v)| v.iter());
    let (mut x_max, mut lo, mut hi) = (1.0f64, f64::INFINITY, 0.0f64);
    for &(s, l) in pts {
        x_max = x_max.max(s);
        if l > 0.0 && l.is_finite() {
            lo = lo.min(l);
            hi = hi.max(l);
        }
    }
    if !lo.is_finite() {
        (lo, hi) = (1e-3, 1.0);
    }
    png(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 20))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(0f64..x_max, (lo * 0.9..hi * 1.1).log_scale())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("step")
            .y_desc("training loss (log scale)")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .light_line_style(WHITE)
            .bold_line_style(MESH)
            .label_style((FONT, 14))
            .draw()
            .map_err(plot_err)?;
        for (i, (name, values)) in runs.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let v: Vec<(f64, f64)> = values.iter().copied().filter(|p| p.1 > 0.0).collect();
            chart
                .draw_series(LineSeries::new(v, color.stroke_width(2)))
                .map_err(plot_err)?
                .label(name.as_str())
                .legend(legend_line(color));
        }
        draw_legend(&mut chart, SeriesLabelPosition::UpperRight)
    })
}

/// One bar of [`bars_png`]: a mean with its interval, and the values it summarises.
pub struct Bar {
    pub label: String,
    pub mean: f64,
    /// NaN when there is one value only (no interval drawn).
    pub lo: f64,
    pub hi: f64,
    pub values: Vec<f64>,
}

/// A bar per arm with its interval as an error bar and every value as a dot.
pub fn bars_png(path: &Path, title: &str, y_desc: &str, bars: &[Bar]) -> Result<()> {
    let finite = |v: f64| v.is_finite().then_some(v);
    let all = bars.iter().flat_map(|b| {
        [finite(b.mean), finite(b.lo), finite(b.hi)]
            .into_iter()
            .flatten()
            .chain(b.values.iter().copied())
    });
    let hi = all.fold(0.0f64, f64::max).max(1e-9) * 1.15;
    let n = bars.len();
    png(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 18))
            .margin(12)
            .x_label_area_size(60)
            .y_label_area_size(65)
            .build_cartesian_2d(-0.5f64..n as f64 - 0.5, 0f64..hi)
            .map_err(plot_err)?;
        let labels: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
        chart
            .configure_mesh()
            .y_desc(y_desc)
            .x_labels(n.max(1))
            .x_label_formatter(&|x| {
                let i = x.round();
                if (x - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < labels.len() {
                    labels[i as usize].clone()
                } else {
                    String::new()
                }
            })
            .disable_x_mesh()
            .light_line_style(WHITE)
            .bold_line_style(MESH)
            .label_style((FONT, 13))
            .draw()
            .map_err(plot_err)?;
        for (i, b) in bars.iter().enumerate() {
            let x = i as f64;
            let color = PALETTE[i % PALETTE.len()];
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x - 0.3, 0.0), (x + 0.3, b.mean)],
                    color.mix(0.6).filled(),
                )))
                .map_err(plot_err)?;
            if b.lo.is_finite() && b.hi.is_finite() {
                chart
                    .draw_series(std::iter::once(ErrorBar::new_vertical(
                        x,
                        b.lo.max(0.0),
                        b.mean,
                        b.hi,
                        BLACK.stroke_width(2),
                        12,
                    )))
                    .map_err(plot_err)?;
            }
            chart
                .draw_series(
                    b.values
                        .iter()
                        .map(|&v| Circle::new((x + 0.15, v), 3, BLACK.filled())),
                )
                .map_err(plot_err)?;
        }
        Ok(())
    })
}

/// One curve of [`per_t_png`].
pub struct Curve {
    pub label: String,
    /// `(t, error)`.
    pub points: Vec<(f64, f64)>,
    pub knots: Vec<f64>,
}

/// Draws each curve with its knots (dashed, in its colour, from `y_lo` to `y_hi`) and a legend.
fn draw_curves<'a, Y>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, Y>>,
    curves: &[Curve],
    (y_lo, y_hi): (f64, f64),
    keep: impl Fn(f64) -> bool,
) -> Result<()>
where
    Y: Ranged<ValueType = f64>,
{
    for (i, c) in curves.iter().enumerate() {
        let color = PALETTE[i % PALETTE.len()];
        for &k in &c.knots {
            chart
                .draw_series(DashedLineSeries::new(
                    vec![(k, y_lo), (k, y_hi)],
                    6,
                    4,
                    color.stroke_width(1),
                ))
                .map_err(plot_err)?;
        }
        let v: Vec<(f64, f64)> = c.points.iter().copied().filter(|p| keep(p.1)).collect();
        chart
            .draw_series(LineSeries::new(v.clone(), color.stroke_width(2)))
            .map_err(plot_err)?
            .label(c.label.as_str())
            .legend(legend_line(color));
        chart
            .draw_series(v.into_iter().map(|p| Circle::new(p, 2, color.filled())))
            .map_err(plot_err)?;
    }
    draw_legend(chart, SeriesLabelPosition::UpperRight)
}

/// Per-time error curves, log scale, each curve's knots as dashed vertical lines in its colour.
pub fn per_t_png(path: &Path, title: &str, curves: &[Curve]) -> Result<()> {
    let (mut lo, mut hi) = (f64::INFINITY, 0.0f64);
    for c in curves {
        for &(_, v) in &c.points {
            if v > 0.0 && v.is_finite() {
                lo = lo.min(v);
                hi = hi.max(v);
            }
        }
    }
    if !lo.is_finite() {
        (lo, hi) = (1e-3, 1.0);
    }
    let (lo, hi) = (lo * 0.8, hi * 1.25);
    png(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 16))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(65)
            .build_cartesian_2d(0f64..1f64, (lo..hi).log_scale())
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("t (0 = noise, 1 = data)")
            .y_desc("velocity MSE (log scale)")
            .light_line_style(WHITE)
            .bold_line_style(MESH)
            .label_style((FONT, 14))
            .draw()
            .map_err(plot_err)?;
        draw_curves(&mut chart, curves, (lo, hi), |v| v > 0.0)
    })
}

/// Differences of per-time errors (linear scale, a zero line), knots as in [`per_t_png`].
pub fn per_t_difference_png(
    path: &Path,
    title: &str,
    y_desc: &str,
    curves: &[Curve],
) -> Result<()> {
    let vals = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1));
    let (lo, hi) = vals
        .filter(|v| v.is_finite())
        .fold((0f64, 0f64), |(a, b), v| (a.min(v), b.max(v)));
    let pad = 0.1 * (hi - lo).max(1e-9);
    let (lo, hi) = (lo - pad, hi + pad);
    png(path, |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(title, (FONT, 16))
            .margin(12)
            .x_label_area_size(45)
            .y_label_area_size(75)
            .build_cartesian_2d(0f64..1f64, lo..hi)
            .map_err(plot_err)?;
        chart
            .configure_mesh()
            .x_desc("t (0 = noise, 1 = data)")
            .y_desc(y_desc)
            .light_line_style(WHITE)
            .bold_line_style(MESH)
            .label_style((FONT, 14))
            .draw()
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                vec![(0.0, 0.0), (1.0, 0.0)],
                BLACK.stroke_width(1),
            ))
            .map_err(plot_err)?;
        draw_curves(&mut chart, curves, (lo, hi), f64::is_finite)
    })
}
