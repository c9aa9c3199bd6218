//! Line plots of a run's curves with `plotters`: title, labelled axes, legend.
//!
//! Each series is drawn twice, as TensorBoard does: the raw values as a faint line and their
//! debiased exponential moving average ([`crate::metrics::Smoothed`]) as a solid one, so
//! the trend is visible without hiding the noise and without the lag of an EMA started at
//! the first value. Several series on one plot (several runs) get distinct colours and one
//! legend entry each. A log-scale y axis is an option (loss curves that fall by orders of
//! magnitude); its ticks are labelled with the values, not their logarithms.
//!
//! The same drawing code renders to a PNG (an `RgbImage`, for the run directory) and to SVG
//! (for `tessera report`'s page). Text is DejaVu Sans, embedded from the `dejavu` crate
//! and registered with plotters' `ab_glyph` font table once per process.

use std::sync::Once;

use image::RgbImage;
use plotters::coord::Shift;
use plotters::prelude::*;

use super::PictureError;
use crate::metrics::{StepMetrics, debiased_ema};

/// The font family name the plots use (registered by [`ensure_fonts`]).
pub(crate) const FONT: &str = "sans-serif";

/// Register the embedded DejaVu Sans as [`FONT`] (once per process).
pub(crate) fn ensure_fonts() {
    static FONTS: Once = Once::new();
    FONTS.call_once(|| {
        // The bytes are a valid TrueType file shipped by the `dejavu` crate; should it ever
        // be rejected, text is skipped and the lines are still drawn.
        let _ = plotters::style::register_font(FONT, FontStyle::Normal, dejavu::sans::regular());
        let _ = plotters::style::register_font(FONT, FontStyle::Bold, dejavu::sans::bold());
    });
}

/// Matplotlib's "tab10" colours, one per series.
const COLOURS: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];

/// One named curve: `(x, y)` points in x order.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// The legend entry (a run's name, a loss part).
    pub name: String,
    /// The points.
    pub points: Vec<(f64, f64)>,
}

/// A line plot of one or more series.
#[derive(Debug, Clone, PartialEq)]
pub struct Plot {
    /// Title above the plot.
    pub title: String,
    /// Label of the x axis.
    pub x_label: String,
    /// Label of the y axis.
    pub y_label: String,
    /// Logarithmic y axis (points with y <= 0 are left out).
    pub log_y: bool,
    /// TensorBoard's smoothing weight in `[0, 1)`: 0 draws the raw line only.
    pub smoothing: f64,
    /// The curves.
    pub series: Vec<Series>,
}

impl Plot {
    /// An empty plot with these labels, linear axes and smoothing 0.9.
    pub fn new(title: &str, x_label: &str, y_label: &str) -> Self {
        Plot {
            title: title.into(),
            x_label: x_label.into(),
            y_label: y_label.into(),
            log_y: false,
            smoothing: 0.9,
            series: Vec::new(),
        }
    }

    /// Add a series.
    pub fn with(mut self, name: &str, points: Vec<(f64, f64)>) -> Self {
        self.series.push(Series {
            name: name.into(),
            points,
        });
        self
    }

    /// The plot as a `width` x `height` image.
    pub fn png(&self, width: u32, height: u32) -> Result<RgbImage, PictureError> {
        let mut buf = vec![0u8; width as usize * height as usize * 3];
        {
            let root = BitMapBackend::with_buffer(&mut buf, (width, height)).into_drawing_area();
            self.draw(&root)?;
        }
        RgbImage::from_raw(width, height, buf).ok_or_else(|| PictureError::Shape {
            what: "plot buffer size".into(),
        })
    }

    /// The plot as an SVG document of `width` x `height` pixels.
    pub fn svg(&self, width: u32, height: u32) -> Result<String, PictureError> {
        let mut out = String::new();
        {
            let root = SVGBackend::with_string(&mut out, (width, height)).into_drawing_area();
            self.draw(&root)?;
        }
        Ok(out)
    }

    /// The series as drawn: y mapped to log10 on a log axis, non-finite (and, on a log axis,
    /// non-positive) points left out.
    fn drawn(&self) -> Vec<(String, Vec<(f64, f64)>)> {
        self.series
            .iter()
            .map(|s| {
                let pts = s
                    .points
                    .iter()
                    .filter(|(x, y)| x.is_finite() && y.is_finite() && (!self.log_y || *y > 0.0))
                    .map(|&(x, y)| (x, if self.log_y { y.log10() } else { y }))
                    .collect();
                (s.name.clone(), pts)
            })
            .collect()
    }

    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Result<(), PictureError> {
        ensure_fonts();
        let err = |e: DrawingAreaErrorKind<DB::ErrorType>| PictureError::Plot {
            title: self.title.clone(),
            message: e.to_string(),
        };
        root.fill(&WHITE).map_err(err)?;
        let series = self.drawn();
        let (x_range, y_range) = ranges(&series);
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, (FONT, 22).into_font())
            .margin(14)
            .x_label_area_size(44)
            .y_label_area_size(72)
            .build_cartesian_2d(x_range, y_range)
            .map_err(err)?;
        let log_y = self.log_y;
        let y_format = move |v: &f64| format_tick(if log_y { 10f64.powf(*v) } else { *v });
        let x_format = |v: &f64| format_tick(*v);
        chart
            .configure_mesh()
            .x_desc(self.x_label.as_str())
            .y_desc(if self.log_y {
                format!("{} (log scale)", self.y_label)
            } else {
                self.y_label.clone()
            })
            .label_style((FONT, 13))
            .axis_desc_style((FONT, 15))
            .x_label_formatter(&x_format)
            .y_label_formatter(&y_format)
            .light_line_style(RGBColor(235, 235, 235))
            .bold_line_style(RGBColor(215, 215, 215))
            .draw()
            .map_err(err)?;

        let smooth = self.smoothing > 0.0;
        for (i, (name, pts)) in series.iter().enumerate() {
            let colour = COLOURS[i % COLOURS.len()];
            let raw_style = if smooth {
                colour.mix(0.3).stroke_width(1)
            } else {
                colour.stroke_width(2)
            };
            let raw = chart
                .draw_series(LineSeries::new(pts.iter().copied(), raw_style))
                .map_err(err)?;
            if !smooth {
                raw.label(name.as_str()).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
                continue;
            }
            if series.len() == 1 {
                raw.label(format!("{name} (raw)")).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.mix(0.3).stroke_width(2))
                });
            }
            // Smooth in the plotted units (log10 on a log axis, as TensorBoard does).
            let ys: Vec<f64> = pts.iter().map(|p| p.1).collect();
            let smoothed = debiased_ema(&ys, self.smoothing);
            let label = if series.len() == 1 {
                format!("{name} (smoothed {:.2}, debiased EMA)", self.smoothing)
            } else {
                name.clone()
            };
            chart
                .draw_series(LineSeries::new(
                    pts.iter().zip(smoothed).map(|(p, s)| (p.0, s)),
                    colour.stroke_width(2),
                ))
                .map_err(err)?
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2))
                });
        }
        if !series.is_empty() {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(RGBColor(180, 180, 180))
                .label_font((FONT, 13))
                .draw()
                .map_err(err)?;
        }
        root.present().map_err(err)
    }
}

/// Axis ranges covering every point, y padded by 5%; a unit range where there is none.
fn ranges(series: &[(String, Vec<(f64, f64)>)]) -> (std::ops::Range<f64>, std::ops::Range<f64>) {
    let pts = || series.iter().flat_map(|(_, p)| p.iter());
    let fold = |f: fn(&(f64, f64)) -> f64| {
        pts()
            .map(f)
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
                (lo.min(v), hi.max(v))
            })
    };
    let (x0, x1) = fold(|p| p.0);
    let (y0, y1) = fold(|p| p.1);
    let (x0, x1) = if x0.is_finite() { (x0, x1) } else { (0.0, 1.0) };
    let (y0, y1) = if y0.is_finite() { (y0, y1) } else { (0.0, 1.0) };
    let x1 = if x1 > x0 { x1 } else { x0 + 1.0 };
    let (y0, y1) = if y1 - y0 > 1e-12 {
        (y0, y1)
    } else {
        let d = (y0.abs() * 0.1).max(0.5);
        (y0 - d, y1 + d)
    };
    let pad = (y1 - y0) * 0.05;
    (x0..x1, (y0 - pad)..(y1 + pad))
}

/// A tick label: plain decimals for ordinary magnitudes, scientific otherwise.
fn format_tick(v: f64) -> String {
    if v == 0.0 {
        return "0".into();
    }
    let a = v.abs();
    if (1e-3..1e6).contains(&a) {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        format!("{v:.1e}")
    }
}

/// A run's records as named curves: `(name, records)` per run.
pub type Runs<'a> = [(&'a str, &'a [StepMetrics])];

fn curve(records: &[StepMetrics], y: impl Fn(&StepMetrics) -> Option<f64>) -> Vec<(f64, f64)> {
    records
        .iter()
        .filter_map(|m| y(m).map(|v| (m.step as f64, v)))
        .collect()
}

/// The training loss of each run against the step.
pub fn loss_plot(runs: &Runs<'_>, log_y: bool) -> Plot {
    let mut plot = Plot::new("Training loss", "optimiser step", "loss");
    plot.log_y = log_y;
    for (name, records) in runs {
        plot = plot.with(name, curve(records, |m| Some(m.loss)));
    }
    plot
}

/// The named loss parts of one run (VICReg's terms, ...), `None` when it has none.
pub fn parts_plot(records: &[StepMetrics]) -> Option<Plot> {
    let names: std::collections::BTreeSet<&String> =
        records.iter().flat_map(|m| m.parts.keys()).collect();
    if names.is_empty() {
        return None;
    }
    let mut plot = Plot::new("Loss parts", "optimiser step", "value");
    for name in names {
        plot = plot.with(name, curve(records, |m| m.parts.get(name).copied()));
    }
    Some(plot)
}

/// Images per second of each run (wall clock, data wait included).
pub fn throughput_plot(runs: &Runs<'_>) -> Plot {
    let mut plot = Plot::new("Throughput", "optimiser step", "images / second");
    for (name, records) in runs {
        plot = plot.with(name, curve(records, |m| Some(m.images_per_second)));
    }
    plot
}

/// Share of each step spent waiting for data.
pub fn data_wait_plot(runs: &Runs<'_>) -> Plot {
    let mut plot = Plot::new(
        "Waiting for data",
        "optimiser step",
        "share of step time waiting",
    );
    for (name, records) in runs {
        plot = plot.with(name, curve(records, |m| Some(m.data_wait_fraction)));
    }
    plot
}

/// The learning rate of each run (no smoothing: a schedule is exact).
pub fn lr_plot(runs: &Runs<'_>) -> Plot {
    let mut plot = Plot::new("Learning rate", "optimiser step", "learning rate");
    plot.smoothing = 0.0;
    for (name, records) in runs {
        plot = plot.with(name, curve(records, |m| Some(m.lr)));
    }
    plot
}

#[cfg(test)]
mod tests {
    use super::*;

    fn falling() -> Vec<(f64, f64)> {
        (0..200)
            .map(|s| {
                let noise = if s % 2 == 0 { 0.05 } else { -0.05 };
                (s as f64, 2.0 / (1.0 + s as f64 * 0.05) + 0.3 + noise)
            })
            .collect()
    }

    #[test]
    fn png_has_the_size_asked_and_draws_text_and_lines() {
        let img = Plot::new("Training loss", "step", "loss")
            .with("run", falling())
            .png(640, 400)
            .unwrap();
        assert_eq!(img.dimensions(), (640, 400));
        // The smoothed line is tab10 blue; the faint raw line is a paler blue.
        let blue = img.pixels().filter(|p| p.0 == [31, 119, 180]).count();
        assert!(blue > 200, "smoothed line drawn ({blue} pixels)");
        // Text (title, tick labels, axis labels, legend) is dark grey to black.
        let dark = img.pixels().filter(|p| p.0.iter().all(|&c| c < 60)).count();
        assert!(dark > 500, "text and axes drawn ({dark} dark pixels)");
        let white = img.pixels().filter(|p| p.0 == [255, 255, 255]).count();
        assert!(white > 640 * 400 / 2, "mostly background");
    }

    #[test]
    fn several_series_get_their_own_colours_and_legend() {
        let other: Vec<(f64, f64)> = falling().iter().map(|&(x, y)| (x, y * 1.5)).collect();
        let svg = Plot::new("Training loss", "step", "loss")
            .with("mae-a", falling())
            .with("mae-b", other)
            .svg(640, 400)
            .unwrap();
        assert!(svg.starts_with("<svg"), "{}", &svg[..40]);
        for text in ["Training loss", "mae-a", "mae-b", "step", "loss"] {
            assert!(svg.contains(text), "{text} missing");
        }
        assert!(svg.contains("#1F77B4") || svg.contains("#1f77b4"));
        assert!(svg.contains("#FF7F0E") || svg.contains("#ff7f0e"));
    }

    #[test]
    fn log_scale_labels_ticks_with_values() {
        let pts: Vec<(f64, f64)> = (0..50)
            .map(|s| (s as f64, 10f64.powf(-(s as f64) / 10.0)))
            .collect();
        let mut plot = Plot::new("Training loss", "step", "loss").with("run", pts);
        plot.log_y = true;
        let svg = plot.svg(500, 300).unwrap();
        assert!(svg.contains("loss (log scale)"));
        // log10 ticks like -2 are labelled by their value 0.01.
        let texts: Vec<&str> = svg.lines().map(str::trim).collect();
        assert!(
            texts.contains(&"0.01") && texts.contains(&"0.1"),
            "value ticks"
        );
        assert!((plot.drawn()[0].1[10].1 + 1.0).abs() < 1e-12);
    }

    #[test]
    fn empty_and_flat_series_still_draw() {
        let img = Plot::new("nothing", "step", "loss").png(200, 150).unwrap();
        assert_eq!(img.dimensions(), (200, 150));
        let flat = Plot::new("flat", "step", "loss").with("x", vec![(0.0, 1.0), (1.0, 1.0)]);
        assert!(ranges(&flat.drawn()).1.start < 1.0);
        flat.png(200, 150).unwrap();
    }

    #[test]
    fn ticks_read_naturally() {
        assert_eq!(format_tick(0.25), "0.25");
        assert_eq!(format_tick(1500.0), "1500");
        assert_eq!(format_tick(2e-5), "2.0e-5");
    }
}
