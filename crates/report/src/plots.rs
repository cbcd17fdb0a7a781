//! The plots, each drawn once per backend from the same code: SVG (inlined
//! in report.html) and an RGB bitmap encoded here as PNG. Text in bitmaps
//! uses the bundled DejaVu Sans, so a PNG does not depend on the fonts of
//! the machine that drew it.

use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::format::{final_step, Experiment, SampleRecord};
use crate::stats::Estimate;
use crate::tables::{column_estimate, combine_seeds, groups, Cell, Summary, JUDGE_PREFIX};

pub const WIDTH: u32 = 800;
pub const HEIGHT: u32 = 500;
const FONT: &str = "sans-serif";
/// DejaVu Sans 2.37 (fonts-dejavu-core); license in fonts/DejaVuSans-LICENSE.
static FONT_BYTES: &[u8] = include_bytes!("../fonts/DejaVuSans.ttf");

/// Tableau 10: distinct, colour-blind-friendlier than plotters' palette.
const PALETTE: [RGBColor; 10] = [
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
const GREY_TEXT: RGBColor = RGBColor(90, 90, 90);
/// The prior is the origin of every curve: drawn in black.
const PRIOR: &str = "prior";

fn register_font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        plotters::style::register_font(FONT, FontStyle::Normal, FONT_BYTES)
            .map_err(|_| "the bundled DejaVu Sans does not parse".to_string())
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e:?}")
}

/// One plot drawn both ways.
pub struct Rendered {
    pub svg: String,
    pub png: Vec<u8>,
}

/// Draws one plot into an SVG string and a PNG (the same drawing function,
/// instantiated for each backend).
fn render(
    svg_draw: impl Fn(&DrawingArea<SVGBackend, Shift>) -> anyhow::Result<()>,
    png_draw: impl Fn(&DrawingArea<BitMapBackend, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<Rendered> {
    register_font()?;
    let mut svg = String::new();
    {
        let area = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        svg_draw(&area)?;
        area.present().map_err(plot_err)?;
    }
    let mut rgb = vec![0u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let area = BitMapBackend::with_buffer(&mut rgb, (WIDTH, HEIGHT)).into_drawing_area();
        png_draw(&area)?;
        area.present().map_err(plot_err)?;
    }
    Ok(Rendered {
        svg,
        png: encode_png(WIDTH, HEIGHT, &rgb)?,
    })
}

/// A minimal RGB8 PNG (IHDR, one IDAT, IEND): deterministic bytes for
/// deterministic pixels, without an image library.
pub fn encode_png(width: u32, height: u32, rgb: &[u8]) -> anyhow::Result<Vec<u8>> {
    use std::io::Write;
    anyhow::ensure!(
        rgb.len() == (width * height * 3) as usize,
        "RGB buffer size"
    );
    let chunk = |out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]| {
        out.extend((data.len() as u32).to_be_bytes());
        out.extend(kind);
        out.extend(data);
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(data);
        out.extend(crc.sum().to_be_bytes());
    };
    let mut ihdr = Vec::new();
    ihdr.extend(width.to_be_bytes());
    ihdr.extend(height.to_be_bytes());
    ihdr.extend([8, 2, 0, 0, 0]); // 8-bit RGB, deflate, adaptive filters, no interlace
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    for row in rgb.chunks(width as usize * 3) {
        z.write_all(&[0])?; // filter: none (plots are flat colour; zlib copes)
        z.write_all(row)?;
    }
    let idat = z.finish()?;
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &idat);
    chunk(&mut out, b"IEND", &[]);
    Ok(out)
}

/// A point of the frontier: mean KL and reward with their intervals.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Point {
    pub step: usize,
    pub kl: Estimate,
    pub reward: Estimate,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Curve {
    pub run: String,
    pub points: Vec<Point>,
}

/// The reward–KL frontier: one curve per run through its eval steps (mean
/// over seeds), starting at the prior's point when there is a prior row.
/// `None` when no run has both `kl` and `reward`.
pub fn frontier(exp: &Experiment) -> Option<Vec<Curve>> {
    let rows = &exp.runs.rows;
    let mut curves = Vec::new();
    for (run, idx) in groups(rows) {
        let members: Vec<(usize, Vec<&SampleRecord>)> = idx
            .iter()
            .filter(|&&i| rows[i].columns.iter().any(|c| c == "kl"))
            .filter(|&&i| rows[i].columns.iter().any(|c| c == "reward"))
            .map(|&i| (i, exp.records_of(&rows[i])))
            .collect();
        let mut steps: Vec<usize> = Vec::new();
        for (i, recs) in &members {
            steps.extend(rows[*i].eval_steps.iter().copied());
            if rows[*i].eval_steps.is_empty() {
                steps.extend(final_step(&rows[*i], recs));
            }
        }
        steps.sort_unstable();
        steps.dedup();
        let points: Vec<Point> = steps
            .into_iter()
            .filter_map(|step| {
                let at = |col: &str| {
                    let per_seed: Vec<Estimate> = members
                        .iter()
                        .filter_map(|(_, recs)| column_estimate(recs, col, step))
                        .collect();
                    combine_seeds(&per_seed)
                };
                Some(Point {
                    step,
                    kl: at("kl")?,
                    reward: at("reward")?,
                })
            })
            .collect();
        if !points.is_empty() {
            curves.push(Curve { run, points });
        }
    }
    // The prior's final point is every curve's step 0 (the same policy,
    // evaluated once), replacing a run's own step-0 evaluation.
    if let Some(prior) = curves
        .iter()
        .find(|c| c.run == PRIOR)
        .and_then(|c| c.points.last().copied())
    {
        for c in curves
            .iter_mut()
            .filter(|c| c.run != PRIOR && c.points.len() > 1)
        {
            c.points.retain(|p| p.step != 0);
            c.points.insert(0, Point { step: 0, ..prior });
        }
    }
    (!curves.is_empty()).then_some(curves)
}

/// `(lo, hi)` of finite values, padded by 6%; a degenerate span gets ±0.5.
fn span(values: impl IntoIterator<Item = f64>) -> (f64, f64) {
    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for v in values.into_iter().filter(|v| v.is_finite()) {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if hi - lo < 1e-12 {
        return (lo - 0.5, hi + 0.5);
    }
    let pad = (hi - lo) * 0.06;
    (lo - pad, hi + pad)
}

fn color_of(i: usize, run: &str) -> RGBColor {
    if run == PRIOR {
        BLACK
    } else {
        PALETTE[i % PALETTE.len()]
    }
}

/// Draws the frontier of `curves`.
fn draw_frontier<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    curves: &[Curve],
) -> anyhow::Result<()> {
    area.fill(&WHITE).map_err(plot_err)?;
    let points = || curves.iter().flat_map(|c| c.points.iter());
    let (x0, x1) = span(points().flat_map(|p| [p.kl.lo, p.kl.hi, p.kl.mean]));
    let (y0, y1) = span(points().flat_map(|p| [p.reward.lo, p.reward.hi, p.reward.mean]));
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(64)
        .build_cartesian_2d(x0..x1, y0..y1)
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .x_desc("KL(π‖prior), nats (Monte-Carlo, per completion)")
        .y_desc("mean reward")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .bold_line_style(RGBColor(215, 215, 215))
        .light_line_style(RGBColor(246, 246, 246))
        .draw()
        .map_err(plot_err)?;
    // Colours (and the legend) follow run order; single points (the prior,
    // reference rows) are drawn again at the end so the curves that start
    // there do not hide them.
    let mut colour = 0;
    let coloured: Vec<(RGBColor, &Curve)> = curves
        .iter()
        .map(|c| {
            let color = color_of(colour, &c.run);
            if c.run != PRIOR {
                colour += 1;
            }
            (color, c)
        })
        .collect();
    for &(color, c) in &coloured {
        let style = color.stroke_width(2);
        let radius = if c.points.len() > 1 { 4 } else { 6 };
        // Error bars: the 95% intervals in both directions.
        chart
            .draw_series(c.points.iter().flat_map(|p| {
                [
                    PathElement::new(
                        vec![(p.kl.lo, p.reward.mean), (p.kl.hi, p.reward.mean)],
                        color,
                    ),
                    PathElement::new(
                        vec![(p.kl.mean, p.reward.lo), (p.kl.mean, p.reward.hi)],
                        color,
                    ),
                ]
            }))
            .map_err(plot_err)?;
        if c.points.len() > 1 {
            chart
                .draw_series(LineSeries::new(
                    c.points.iter().map(|p| (p.kl.mean, p.reward.mean)),
                    style,
                ))
                .map_err(plot_err)?;
        }
        chart
            .draw_series(
                c.points
                    .iter()
                    .map(|p| Circle::new((p.kl.mean, p.reward.mean), radius, color.filled())),
            )
            .map_err(plot_err)?
            .label(c.run.as_str())
            .legend(move |(x, y)| {
                EmptyElement::at((x, y))
                    + PathElement::new(vec![(-8, 0), (8, 0)], style)
                    + Circle::new((0, 0), radius, color.filled())
            });
    }
    for (color, c) in coloured.iter().filter(|(_, c)| c.points.len() == 1) {
        chart
            .draw_series(
                c.points
                    .iter()
                    .map(|p| Circle::new((p.kl.mean, p.reward.mean), 6, color.filled())),
            )
            .map_err(plot_err)?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .label_font((FONT, 14))
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(180, 180, 180))
        .draw()
        .map_err(plot_err)?;
    Ok(())
}

pub fn frontier_plot(title: &str, curves: &[Curve]) -> anyhow::Result<Rendered> {
    render(
        |a| draw_frontier(a, title, curves),
        |a| draw_frontier(a, title, curves),
    )
}

/// A run's win rate at its final step: an interval, or a bare value (one
/// seed of several had the judge).
#[derive(Debug, Clone, PartialEq)]
pub struct Bar {
    pub run: String,
    pub mean: f64,
    pub interval: Option<(f64, f64)>,
}

/// The judges of a summary: `(judge name, column index)`.
pub fn judges(s: &Summary) -> Vec<(String, usize)> {
    s.columns
        .iter()
        .enumerate()
        .filter_map(|(j, c)| Some((c.strip_prefix(JUDGE_PREFIX)?.to_string(), j)))
        .collect()
}

/// One bar per run (mean over seeds when several) from the summary.
pub fn win_bars(s: &Summary, column: usize) -> Vec<Bar> {
    s.runs()
        .into_iter()
        .filter_map(|run| {
            let row = s.representative(run)?;
            let (mean, interval) = match row.cells[column] {
                Cell::Est(e) if !e.mean.is_nan() => (e.mean, Some((e.lo, e.hi))),
                Cell::Value(v) if !v.is_nan() => (v, None),
                _ => return None,
            };
            Some(Bar {
                run: run.to_string(),
                mean,
                interval,
            })
        })
        .collect()
}

fn value_text(b: &Bar) -> String {
    match b.interval {
        Some((lo, hi)) => format!("{:.3} [{lo:.3}, {hi:.3}]", b.mean),
        None => format!("{:.3}", b.mean),
    }
}

/// Horizontal bars, first run on top, with the 0.5 line (as good as gold).
fn draw_wins<DB: DrawingBackend>(
    area: &DrawingArea<DB, Shift>,
    title: &str,
    bars: &[Bar],
) -> anyhow::Result<()> {
    area.fill(&WHITE).map_err(plot_err)?;
    let n = bars.len().max(1);
    let longest = bars
        .iter()
        .map(|b| (b.run.chars().count() * 9).max(value_text(b).chars().count() * 8))
        .max()
        .unwrap_or(40);
    let label_width = (longest as u32 + 24).clamp(80, 360);
    let mut chart = ChartBuilder::on(area)
        .caption(title, (FONT, 22))
        .margin(14)
        .x_label_area_size(44)
        .y_label_area_size(label_width)
        .build_cartesian_2d(0f64..1f64, -0.5f64..(n as f64 - 0.5))
        .map_err(plot_err)?;
    chart
        .configure_mesh()
        .disable_y_mesh()
        .y_labels(0)
        .y_label_formatter(&|_| String::new())
        .x_desc("win rate against gold (ties count half), 95% interval")
        .label_style((FONT, 14))
        .axis_desc_style((FONT, 16))
        .bold_line_style(RGBColor(215, 215, 215))
        .light_line_style(RGBColor(246, 246, 246))
        .draw()
        .map_err(plot_err)?;
    let y_of = |k: usize| (n - 1 - k) as f64;
    let mut colour = 0;
    for (k, b) in bars.iter().enumerate() {
        let color = color_of(colour, &b.run);
        if b.run != PRIOR {
            colour += 1;
        }
        let y = y_of(k);
        chart
            .draw_series([Rectangle::new(
                [(0.0, y - 0.32), (b.mean, y + 0.32)],
                color.mix(0.75).filled(),
            )])
            .map_err(plot_err)?;
        if let Some((lo, hi)) = b.interval {
            // Clipped to [0, 1]; a clipped end gets no cap, so it does not
            // read as the interval's end.
            let whisker = BLACK.stroke_width(2);
            let (l, r) = (lo.max(0.0), hi.min(1.0));
            let mut parts = vec![PathElement::new(vec![(l, y), (r, y)], whisker)];
            for (end, clipped) in [(l, lo < 0.0), (r, hi > 1.0)] {
                if !clipped {
                    parts.push(PathElement::new(
                        vec![(end, y - 0.12), (end, y + 0.12)],
                        whisker,
                    ));
                }
            }
            chart.draw_series(parts).map_err(plot_err)?;
        }
        // Name and value in the label area: a whisker may leave the chart
        // (a t interval over two seeds is wide), the label never does.
        let (px, py) = chart.backend_coord(&(0.0, y));
        let right = Pos::new(HPos::Right, VPos::Center);
        let name_style = TextStyle::from((FONT, 15).into_font()).pos(right);
        area.draw_text(&b.run, &name_style, (px - 10, py - 9))
            .map_err(plot_err)?;
        let value_style = TextStyle::from((FONT, 13).into_font())
            .color(&GREY_TEXT)
            .pos(right);
        area.draw_text(&value_text(b), &value_style, (px - 10, py + 9))
            .map_err(plot_err)?;
    }
    chart
        .draw_series(DashedLineSeries::new(
            [(0.5, -0.5), (0.5, n as f64 - 0.5)],
            6,
            4,
            BLACK.stroke_width(1),
        ))
        .map_err(plot_err)?;
    Ok(())
}

pub fn win_plot(title: &str, bars: &[Bar]) -> anyhow::Result<Rendered> {
    render(|a| draw_wins(a, title, bars), |a| draw_wins(a, title, bars))
}
