//! A minimal raster plot of a monitor curve and its knots (no text: there is no font).
//!
//! Layout of [`monitor_png`], on a white 800×500 canvas, time `t ∈ [0, 1]` left to right and
//! `[0, 1]` bottom to top inside a dark frame with ticks every 0.1 in `t`:
//!
//! - light grey horizontal lines at `i/N` (the equidistribution targets of the cumulative);
//! - light blue bands: the bootstrap interval of each knot;
//! - dark vertical lines: the knots;
//! - blue polyline: the monitor `m(t)` normalised to its maximum (cell masses at cell centres);
//! - orange polyline: the normalised cumulative mass `C(t)/C(1)` at the grid points.

use std::path::Path;

use anyhow::Result;
use image::{Rgb, RgbImage};

pub const WIDTH: u32 = 800;
pub const HEIGHT: u32 = 500;
const MARGIN: i64 = 30;

const WHITE: Rgb<u8> = Rgb([255, 255, 255]);
const FRAME: Rgb<u8> = Rgb([60, 60, 60]);
const GUIDE: Rgb<u8> = Rgb([215, 215, 215]);
const BAND: Rgb<u8> = Rgb([214, 228, 245]);
const KNOT: Rgb<u8> = Rgb([40, 40, 40]);
const MONITOR: Rgb<u8> = Rgb([31, 119, 180]);
const CUMULATIVE: Rgb<u8> = Rgb([255, 127, 14]);

/// What [`monitor_png`] draws.
pub struct MonitorPlot<'a> {
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

struct Canvas {
    img: RgbImage,
}

impl Canvas {
    fn px(&mut self, x: i64, y: i64, c: Rgb<u8>) {
        if x >= 0 && y >= 0 && x < WIDTH as i64 && y < HEIGHT as i64 {
            self.img.put_pixel(x as u32, y as u32, c);
        }
    }

    /// Data coordinates (`[0, 1]²`, y up) to pixels.
    fn to_px(&self, t: f64, v: f64) -> (f64, f64) {
        let (w, h) = (
            (WIDTH as i64 - 2 * MARGIN) as f64,
            (HEIGHT as i64 - 2 * MARGIN) as f64,
        );
        (
            MARGIN as f64 + t.clamp(0.0, 1.0) * w,
            MARGIN as f64 + (1.0 - v.clamp(0.0, 1.0)) * h,
        )
    }

    /// A line of `width` pixels between two pixel positions.
    fn line_px(&mut self, a: (f64, f64), b: (f64, f64), width: i64, c: Rgb<u8>) {
        let steps = (b.0 - a.0).abs().max((b.1 - a.1).abs()).ceil().max(1.0) as i64;
        for s in 0..=steps {
            let f = s as f64 / steps as f64;
            let x = (a.0 + f * (b.0 - a.0)).round() as i64;
            let y = (a.1 + f * (b.1 - a.1)).round() as i64;
            for dx in 0..width {
                for dy in 0..width {
                    self.px(x + dx - width / 2, y + dy - width / 2, c);
                }
            }
        }
    }

    fn line(&mut self, a: (f64, f64), b: (f64, f64), width: i64, c: Rgb<u8>) {
        let (pa, pb) = (self.to_px(a.0, a.1), self.to_px(b.0, b.1));
        self.line_px(pa, pb, width, c);
    }

    fn polyline(&mut self, pts: &[(f64, f64)], c: Rgb<u8>) {
        for w in pts.windows(2) {
            self.line(w[0], w[1], 2, c);
        }
    }

    fn band(&mut self, lo: f64, hi: f64, c: Rgb<u8>) {
        let (x0, y0) = self.to_px(lo, 1.0);
        let (x1, y1) = self.to_px(hi, 0.0);
        for x in x0.floor() as i64..=x1.ceil() as i64 {
            for y in y0.round() as i64..=y1.round() as i64 {
                self.px(x, y, c);
            }
        }
    }
}

/// Render the plot to an image (see the module documentation for the layout).
pub fn render_monitor(p: &MonitorPlot) -> RgbImage {
    let mut cv = Canvas {
        img: RgbImage::from_pixel(WIDTH, HEIGHT, WHITE),
    };
    for &(lo, hi) in p.intervals {
        cv.band(lo, hi, BAND);
    }
    for i in 1..p.experts {
        let v = i as f64 / p.experts as f64;
        cv.line((0.0, v), (1.0, v), 1, GUIDE);
    }
    for &k in p.knots {
        cv.line((k, 0.0), (k, 1.0), 2, KNOT);
    }
    // Frame and ticks on the time axis.
    let corners = [(0.0, 0.0), (1.0, 0.0), (1.0, 1.0), (0.0, 1.0), (0.0, 0.0)];
    for w in corners.windows(2) {
        cv.line(w[0], w[1], 2, FRAME);
    }
    for i in 0..=10 {
        let (x, y) = cv.to_px(i as f64 / 10.0, 0.0);
        cv.line_px((x, y), (x, y + 6.0), 2, FRAME);
    }
    let max_m = p.mass.iter().cloned().fold(0.0, f64::max);
    if max_m > 0.0 {
        let pts: Vec<(f64, f64)> = p
            .grid
            .windows(2)
            .zip(p.mass)
            .map(|(w, m)| (0.5 * (w[0] + w[1]), m / max_m))
            .collect();
        cv.polyline(&pts, MONITOR);
    }
    let total = p.cumulative.last().copied().unwrap_or(0.0);
    if total > 0.0 {
        let pts: Vec<(f64, f64)> = p
            .grid
            .iter()
            .zip(p.cumulative)
            .map(|(&t, c)| (t, c / total))
            .collect();
        cv.polyline(&pts, CUMULATIVE);
    }
    cv.img
}

/// Write [`render_monitor`] as a PNG (crash-safe).
pub fn monitor_png(path: &Path, p: &MonitorPlot) -> Result<()> {
    let img = render_monitor(p);
    cbs_core::atomic::write_with_path(path, |tmp| {
        img.save_with_format(tmp, image::ImageFormat::Png)
    })?;
    Ok(())
}
