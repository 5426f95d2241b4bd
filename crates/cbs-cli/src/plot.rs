//! Charts: the monitor of `estimate-splits` (monitor.png), the loss against the Bayes floor
//! (`loss-floor`), and training-loss curves (`cbs plot`). Drawn with plotters into an RGB
//! buffer and written as PNG (crash-safe); text in DejaVu Sans, embedded in the binary.

use std::path::Path;
use std::sync::Once;

use anyhow::{anyhow, Result};
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
