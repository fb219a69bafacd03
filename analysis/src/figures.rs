//! The report's figures, each written as SVG and PNG (plotters). Text is
//! drawn with DejaVu Sans embedded in the binary (`assets/`), so a PNG
//! looks the same on every host, fonts installed or not.
//!
//! Every `*` function below writes the figures its data supports and
//! returns them; data that cannot support a figure yields none.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::record::{ExperimentRecord, Injection, RecordedOutcome, RecordedScope, RecordedStrategy, RecordedWorkload};
use crate::stats::{median, Summary};
use crate::tables::{
    downtime_stats, failure_class, metric_points, stage_medians, DowntimeStats, StageMedians, PUBLISHED_REDUCTION,
    STAGE_NAMES,
};

/// Font family name the embedded font is registered under.
const FONT: &str = "sans-serif";
static DEJAVU_SANS: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");

/// Pixel size of every figure (SVG user units and PNG pixels).
pub const SIZE: (u32, u32) = (1000, 600);

/// Parameter and metric names the measurement figures read.
pub mod names {
    /// Metric: seconds from the start of a restore to a running guest.
    pub const RESTORE_S: &str = "restore_s";
    /// Parameter: guest RAM in MiB.
    pub const RAM_MB: &str = "ram_mb";
    /// Parameter: snapshot size reduction (`on`/`off`).
    pub const REDUCTION: &str = "reduction";
    /// Parameter: storage the snapshot is read from (a name, or MB/s).
    pub const STORAGE: &str = "storage";
    /// Parameter: restore path (`lazy`/`streamed`).
    pub const RESTORE_PATH: &str = "restore_path";
    /// Parameter: host page cache before the restore (`cold`/`warm`).
    pub const CACHE: &str = "cache";
    /// Metric: seconds from the workload clients' latest correct answer to
    /// the injection (the harness injects only soon after one).
    pub const ANSWERED_BEFORE_INJECTION_S: &str = "answered_before_injection_s";
    /// Parameter: the crash kernel reservation, MiB, of a guest booted for
    /// kexec-reboot (the others' have none).
    pub const CRASH_KERNEL_MIB: &str = "crash_kernel_mib";
    /// Parameter: the phase snapshot's boundary (the guest profile's:
    /// `userland` on tiny, `data-independent-services` on debian), where a
    /// phase restore starts from.
    pub const PHASE_BOUNDARY: &str = "phase_boundary";
    /// Parameter: which of the workload's answers counted for the downtime
    /// (`database-pages`: RUBiS pages that read or write the database).
    pub const DOWNTIME_ANSWERS: &str = "downtime_answers";
    /// Its value for RUBiS: the pages that read or write the database.
    pub const DATABASE_PAGES: &str = "database-pages";
    /// Metric: requests sent after the injection that failed or were
    /// answered wrongly (those the tracer's hold delayed left out).
    pub const ERRORS_AFTER_INJECTION: &str = "errors_after_injection";
    /// Metric: of those, complete answers that were wrong (status or body).
    pub const WRONG_ANSWERS: &str = "wrong_answers";
    /// Metric: the longest time from a failed request after the injection
    /// to the next correct answer, seconds.
    pub const LONGEST_OUTAGE_S: &str = "longest_outage_s";
    /// Metric: oops-like reports on the console in the watch (a record's
    /// events keep the first 16).
    pub const OOPS_REPORTS: &str = "oops_reports";
    /// Metric: requests sent after the failure's first event, within the
    /// watch, that were answered correctly (after an oops: whether the
    /// kernel kept serving).
    pub const CORRECT_AFTER_FAILURE: &str = "correct_after_failure";
    /// Metric: those that failed or were answered wrongly.
    pub const FAILED_AFTER_FAILURE: &str = "failed_after_failure";
    /// The series of the restore figures and tables: those of these
    /// parameters that vary (see `tables::metric_points`).
    pub const RESTORE_SERIES: &str = "restore_path,cache,reduction";
}

/// Errors drawing figures.
#[derive(Debug, thiserror::Error)]
pub enum FigureError {
    /// The embedded font did not load (a broken build).
    #[error("the embedded DejaVu Sans font could not be registered; the analysis crate's assets/ are damaged")]
    Font,
    /// Drawing or writing a file failed.
    #[error("cannot draw {path}: {message}; check that the figures directory is writable")]
    Draw {
        /// Figure file.
        path: PathBuf,
        /// What plotters reported.
        message: String,
    },
}

/// One figure written to disk.
#[derive(Debug, Clone, PartialEq)]
pub struct Figure {
    /// File stem, e.g. `downtime-apache-crash-sysrq`.
    pub name: String,
    /// What it shows (the caption).
    pub title: String,
    /// The SVG file.
    pub svg: PathBuf,
    /// The PNG file.
    pub png: PathBuf,
}

fn ensure_font() -> Result<(), FigureError> {
    static REGISTERED: OnceLock<bool> = OnceLock::new();
    let ok = *REGISTERED.get_or_init(|| plotters::style::register_font(FONT, FontStyle::Normal, DEJAVU_SANS).is_ok());
    if ok {
        Ok(())
    } else {
        Err(FigureError::Font)
    }
}

type Drawn = Result<(), String>;

fn err<E: std::fmt::Display>(e: E) -> String {
    e.to_string()
}

/// Something that can draw itself on any backend.
trait Draw {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn;
}

fn render(fig: &impl Draw, dir: &Path, name: &str, title: &str) -> Result<Figure, FigureError> {
    ensure_font()?;
    std::fs::create_dir_all(dir).map_err(|e| FigureError::Draw { path: dir.to_path_buf(), message: e.to_string() })?;
    let svg = dir.join(format!("{name}.svg"));
    let png = dir.join(format!("{name}.png"));
    let draw_err = |path: &Path| {
        let path = path.to_path_buf();
        move |message| FigureError::Draw { path, message }
    };
    {
        let root = SVGBackend::new(&svg, SIZE).into_drawing_area();
        fig.draw(&root).and_then(|_| root.present().map_err(err)).map_err(draw_err(&svg))?;
    }
    {
        let root = BitMapBackend::new(&png, SIZE).into_drawing_area();
        fig.draw(&root).and_then(|_| root.present().map_err(err)).map_err(draw_err(&png))?;
    }
    Ok(Figure { name: name.into(), title: title.into(), svg, png })
}

/// File-name-safe form of a label.
fn slug(s: &str) -> String {
    let mut out = String::new();
    for c in s.chars() {
        if c.is_ascii_alphanumeric() {
            out.push(c.to_ascii_lowercase());
        } else if !out.ends_with('-') {
            out.push('-');
        }
    }
    out.trim_matches('-').to_string()
}

const PALETTE: [RGBColor; 8] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(23, 190, 207),
];

/// `None` (no recovery ran) gets a colour of its own.
fn strategy_color(s: Option<RecordedStrategy>) -> RGBColor {
    match s {
        Some(RecordedStrategy::FullReboot) => RGBColor(127, 127, 127),
        Some(RecordedStrategy::KexecReboot) => RGBColor(255, 127, 14),
        Some(RecordedStrategy::PhaseRestore) => RGBColor(31, 119, 180),
        Some(RecordedStrategy::ServiceRestore) => RGBColor(44, 160, 44),
        None => PALETTE[0],
    }
}

fn outcome_color(o: RecordedOutcome) -> RGBColor {
    match o {
        RecordedOutcome::ForcedCrash => RGBColor(148, 103, 189),
        RecordedOutcome::Panic => RGBColor(214, 39, 40),
        RecordedOutcome::VmExit => RGBColor(127, 39, 80),
        RecordedOutcome::Oops => RGBColor(255, 127, 14),
        RecordedOutcome::Hang => RGBColor(140, 86, 75),
        RecordedOutcome::ServiceError => RGBColor(227, 190, 40),
        RecordedOutcome::Benign => RGBColor(44, 160, 44),
        RecordedOutcome::NotActivated => RGBColor(190, 190, 190),
        RecordedOutcome::ActivationUnknown => RGBColor(150, 150, 200),
        RecordedOutcome::Restored => RGBColor(23, 190, 207),
        RecordedOutcome::HarnessError => RGBColor(0, 0, 0),
    }
}

/// A categorical axis: category `i` is centred on `i as f64`, labels sit
/// exactly under the centres.
#[derive(Clone)]
struct Categories(usize);

impl Ranged for Categories {
    type FormatOption = DefaultFormatting;
    type ValueType = f64;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let frac = (value + 0.5) / self.0.max(1) as f64;
        limit.0 + (frac * f64::from(limit.1 - limit.0)).round() as i32
    }

    fn key_points<H: KeyPointHint>(&self, _hint: H) -> Vec<f64> {
        (0..self.0).map(|i| i as f64).collect()
    }

    fn range(&self) -> Range<f64> {
        -0.5..self.0 as f64 - 0.5
    }
}

fn caption_font() -> TextStyle<'static> {
    (FONT, 24).into_font().color(&BLACK)
}

fn label_font() -> TextStyle<'static> {
    (FONT, 16).into_font().color(&BLACK)
}

fn desc_font() -> TextStyle<'static> {
    (FONT, 19).into_font().color(&BLACK)
}

/// One bar: the median of its values, the values as dots.
struct Bar {
    category: usize,
    slot: usize,
    values: Vec<f64>,
    color: RGBColor,
    label: String,
}

/// Bars per category, optionally several side by side (slots), with an
/// optional horizontal reference lines (dashed red, each in the legend).
struct Bars {
    title: String,
    x_desc: String,
    y_desc: String,
    categories: Vec<String>,
    slots: usize,
    bars: Vec<Bar>,
    legend: Vec<(String, RGBColor)>,
    references: Vec<(f64, String)>,
}

impl Draw for Bars {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        root.fill(&WHITE).map_err(err)?;
        let top = self
            .bars
            .iter()
            .flat_map(|b| b.values.iter().copied())
            .chain(self.references.iter().map(|r| r.0))
            .fold(0.0_f64, f64::max);
        let y_max = if top > 0.0 { top * 1.18 } else { 1.0 };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, caption_font())
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(Categories(self.categories.len()), 0.0..y_max)
            .map_err(err)?;
        let cats = &self.categories;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(cats.len())
            .x_label_formatter(&|v| cats.get(v.round().max(0.0) as usize).cloned().unwrap_or_default())
            .x_label_style(label_font())
            .y_label_style(label_font())
            .x_desc(&self.x_desc)
            .y_desc(&self.y_desc)
            .axis_desc_style(desc_font())
            .draw()
            .map_err(err)?;
        let width = 0.7 / self.slots.max(1) as f64;
        for b in &self.bars {
            let left = b.category as f64 - 0.35 + b.slot as f64 * width;
            let centre = left + width / 2.0;
            let Some(m) = median(b.values.iter().copied()) else { continue };
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(left + 0.01, 0.0), (left + width - 0.01, m)],
                    b.color.filled(),
                )))
                .map_err(err)?;
            chart.draw_series(b.values.iter().map(|v| Circle::new((centre, *v), 3, BLACK.filled()))).map_err(err)?;
            let top = b.values.iter().copied().fold(m, f64::max);
            chart
                .draw_series(std::iter::once(Text::new(
                    b.label.clone(),
                    (centre, top + y_max * 0.01),
                    label_font().pos(Pos::new(HPos::Center, VPos::Bottom)),
                )))
                .map_err(err)?;
        }
        let legend = &self.legend;
        for (k, (y, label)) in self.references.iter().enumerate() {
            let red = if k == 0 { RGBColor(200, 0, 0) } else { RGBColor(230, 120, 120) };
            chart
                .draw_series(DashedLineSeries::new(
                    [(-0.5, *y), (cats.len() as f64 - 0.5, *y)],
                    10,
                    6,
                    red.stroke_width(2),
                ))
                .map_err(err)?
                .label(label.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], red.stroke_width(2)));
        }
        for (name, color) in legend {
            let c = *color;
            chart
                .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())
                .map_err(err)?
                .label(name.clone())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], c.filled()));
        }
        if !legend.is_empty() || !self.references.is_empty() {
            chart
                .configure_series_labels()
                .label_font(label_font())
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(err)?;
        }
        Ok(())
    }
}

/// Points of one line.
type Points = Vec<(f64, f64)>;

/// Lines through points, optional raw dots and a vertical marker.
struct Lines {
    title: String,
    x_desc: String,
    y_desc: String,
    series: Vec<(String, RGBColor, Points)>,
    dots: Vec<(RGBColor, Points)>,
    marker: Option<(f64, String)>,
    markers_on_lines: bool,
}

impl Draw for Lines {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        root.fill(&WHITE).map_err(err)?;
        let all = || self.series.iter().flat_map(|s| s.2.iter()).chain(self.dots.iter().flat_map(|d| d.1.iter()));
        let (mut x0, mut x1) = all().fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), p| (a.min(p.0), b.max(p.0)));
        if let Some((x, _)) = &self.marker {
            x0 = x0.min(*x);
            x1 = x1.max(*x);
        }
        if !(x0.is_finite() && x1.is_finite()) {
            (x0, x1) = (0.0, 1.0);
        }
        let pad = if x1 > x0 { (x1 - x0) * 0.03 } else { 1.0 };
        let y_top = all().map(|p| p.1).fold(0.0_f64, f64::max);
        // Headroom for the legend in the upper right.
        let y_max = if y_top > 0.0 { y_top * 1.3 } else { 1.0 };
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, caption_font())
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d((x0 - pad)..(x1 + pad), 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_label_style(label_font())
            .y_label_style(label_font())
            .x_desc(&self.x_desc)
            .y_desc(&self.y_desc)
            .axis_desc_style(desc_font())
            .light_line_style(TRANSPARENT)
            .draw()
            .map_err(err)?;
        if let Some((x, label)) = &self.marker {
            chart
                .draw_series(DashedLineSeries::new([(*x, 0.0), (*x, y_max)], 8, 5, BLACK.stroke_width(1)))
                .map_err(err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    label.clone(),
                    (*x, y_max * 0.99),
                    label_font().pos(Pos::new(HPos::Left, VPos::Top)),
                )))
                .map_err(err)?;
        }
        for (color, pts) in &self.dots {
            let c = color.mix(0.45);
            chart.draw_series(pts.iter().map(|p| Circle::new(*p, 3, c.filled()))).map_err(err)?;
        }
        for (name, color, pts) in &self.series {
            let c = *color;
            chart
                .draw_series(LineSeries::new(pts.iter().copied(), c.stroke_width(2)))
                .map_err(err)?
                .label(name.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(3)));
            if self.markers_on_lines {
                chart.draw_series(pts.iter().map(|p| Circle::new(*p, 5, c.filled()))).map_err(err)?;
            }
        }
        if self.series.len() > 1 || self.series.first().is_some_and(|s| !s.0.is_empty()) {
            chart
                .configure_series_labels()
                .label_font(label_font())
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .position(SeriesLabelPosition::UpperRight)
                .draw()
                .map_err(err)?;
        }
        Ok(())
    }
}

/// Stacked bars per category with a legend beside the chart: shares to
/// 100% or seconds.
struct Stacked {
    title: String,
    x_desc: String,
    y_desc: String,
    /// What the layers are (the legend's heading).
    legend: String,
    categories: Vec<String>,
    /// Printed above each bar (`n=...`).
    tops: Vec<String>,
    /// The y axis' top: 105 for shares, above the tallest bar otherwise.
    y_max: f64,
    layers: Vec<(String, RGBColor, Vec<f64>)>,
}

impl Draw for Stacked {
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> Drawn {
        root.fill(&WHITE).map_err(err)?;
        let (w, _) = root.dim_in_pixel();
        let (left, right) = root.split_horizontally(w.saturating_sub(190));
        let mut chart = ChartBuilder::on(&left)
            .caption(&self.title, caption_font())
            .margin(20)
            .x_label_area_size(60)
            .y_label_area_size(80)
            .build_cartesian_2d(Categories(self.categories.len()), 0.0..self.y_max)
            .map_err(err)?;
        let cats = &self.categories;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(TRANSPARENT)
            .x_labels(cats.len())
            .x_label_formatter(&|v| cats.get(v.round().max(0.0) as usize).cloned().unwrap_or_default())
            .x_label_style(label_font())
            .y_label_style(label_font())
            .x_desc(&self.x_desc)
            .y_desc(&self.y_desc)
            .axis_desc_style(desc_font())
            .draw()
            .map_err(err)?;
        for (i, top) in self.tops.iter().enumerate() {
            let x = i as f64;
            let mut base = 0.0;
            for (_, color, shares) in &self.layers {
                let h = shares.get(i).copied().unwrap_or(0.0);
                if h > 0.0 {
                    chart
                        .draw_series(std::iter::once(Rectangle::new(
                            [(x - 0.35, base), (x + 0.35, base + h)],
                            color.filled(),
                        )))
                        .map_err(err)?;
                }
                base += h;
            }
            chart
                .draw_series(std::iter::once(Text::new(
                    top.clone(),
                    (x, base + self.y_max * 0.005),
                    label_font().pos(Pos::new(HPos::Center, VPos::Bottom)),
                )))
                .map_err(err)?;
        }
        let legend = right.margin(80, 20, 10, 10);
        legend
            .draw(&Text::new(self.legend.as_str(), (0, 0), label_font().pos(Pos::new(HPos::Left, VPos::Top))))
            .map_err(err)?;
        for (k, (name, color, _)) in self.layers.iter().enumerate().rev() {
            let y = 30 + 28 * (self.layers.len() - 1 - k) as i32;
            legend.draw(&Rectangle::new([(0, y), (18, y + 18)], color.filled())).map_err(err)?;
            legend
                .draw(&Text::new(name.clone(), (26, y + 9), label_font().pos(Pos::new(HPos::Left, VPos::Center))))
                .map_err(err)?;
        }
        Ok(())
    }
}

fn fmt_s(x: f64) -> String {
    if x >= 100.0 {
        format!("{x:.0} s")
    } else if x >= 10.0 {
        format!("{x:.1} s")
    } else {
        format!("{x:.2} s")
    }
}

/// Downtime bars per strategy against full reboot, with the published
/// mark at 10% of full reboot's median: one figure per (workload, failure
/// class) with downtimes.
pub fn downtime_bars(records: &[ExperimentRecord], dir: &Path) -> Result<Vec<Figure>, FigureError> {
    let stats = downtime_stats(records);
    let mut groups: BTreeMap<(RecordedWorkload, String), Vec<&DowntimeStats>> = BTreeMap::new();
    for s in &stats {
        groups.entry((s.workload, s.failure.clone())).or_default().push(s);
    }
    let mut out = Vec::new();
    for ((workload, failure), group) in groups {
        let group: Vec<&DowntimeStats> = group.into_iter().filter(|s| s.summary.is_some()).collect();
        if group.is_empty() {
            continue;
        }
        let values = |strategy: RecordedStrategy| -> Vec<f64> {
            records
                .iter()
                .filter(|r| r.workload == workload && failure_class(r) == failure)
                .filter(|r| r.recovery.as_ref().is_some_and(|x| x.requested == strategy && x.recovered))
                .filter_map(|r| r.downtime_s)
                .collect()
        };
        let reference =
            group.iter().find(|s| s.strategy == RecordedStrategy::FullReboot).and_then(|s| s.summary).map(|s| {
                (s.median * (1.0 - PUBLISHED_REDUCTION), format!("published: −{:.0}%", PUBLISHED_REDUCTION * 100.0))
            });
        let bars = group
            .iter()
            .enumerate()
            .map(|(i, s)| {
                let m = s.summary.map_or(0.0, |x| x.median);
                let label = match s.reduction {
                    Some(r) if s.strategy != RecordedStrategy::FullReboot => {
                        format!("{} ({:+.1}%)", fmt_s(m), -100.0 * r)
                    }
                    _ => fmt_s(m),
                };
                Bar { category: i, slot: 0, values: values(s.strategy), color: strategy_color(Some(s.strategy)), label }
            })
            .collect();
        let title = format!("Client-seen downtime: {workload}, {failure} (median, dots: experiments)");
        let fig = Bars {
            title: title.clone(),
            x_desc: "recovery strategy".into(),
            y_desc: "client-seen downtime (s)".into(),
            categories: group.iter().map(|s| format!("{} (n={})", s.strategy, s.summary.map_or(0, |x| x.n))).collect(),
            slots: 1,
            bars,
            legend: Vec::new(),
            references: reference.into_iter().collect(),
        };
        let name = format!("downtime-{}-{}", slug(workload.name()), slug(&failure));
        out.push(render(&fig, dir, &name, &title)?);
    }
    Ok(out)
}

fn update_color(s: crate::update::RecordedUpdateStrategy) -> RGBColor {
    match s {
        crate::update::RecordedUpdateStrategy::Reboot => RGBColor(127, 127, 127),
        crate::update::RecordedUpdateStrategy::Kexec => RGBColor(255, 127, 14),
        crate::update::RecordedUpdateStrategy::ShadowReboot => RGBColor(44, 160, 44),
    }
}

/// A kernel-update campaign's figures: the downtime per strategy against
/// the reboot with the published band (91% and 98% below the reboot's
/// median), and the preparation each strategy did while the old kernel
/// served, labelled with the primary's throughput during it.
pub fn update_figures(
    records: &[crate::update::UpdateRecord],
    summary: &[crate::update::UpdateSummary],
    dir: &Path,
) -> Result<Vec<Figure>, FigureError> {
    use crate::update::{RecordedUpdateStrategy, PUBLISHED_REDUCTION};
    let shown: Vec<&crate::update::UpdateSummary> = summary.iter().filter(|s| s.downtime.is_some()).collect();
    if shown.is_empty() {
        return Ok(Vec::new());
    }
    let guest = records.first().map_or("?", |r| r.provenance.profile.name());
    let values =
        |strategy: RecordedUpdateStrategy, f: &dyn Fn(&crate::update::UpdateRecord) -> Option<f64>| -> Vec<f64> {
            records.iter().filter(|r| r.strategy == strategy && r.error.is_none()).filter_map(f).collect()
        };
    let reboot = shown.iter().find(|s| s.strategy == RecordedUpdateStrategy::Reboot).and_then(|s| s.downtime.as_ref());
    let references = reboot.map_or(Vec::new(), |b| {
        let (lo, hi) = PUBLISHED_REDUCTION;
        vec![
            (b.median * (1.0 - lo), format!("published: −{:.0}%", lo * 100.0)),
            (b.median * (1.0 - hi), format!("published: −{:.0}%", hi * 100.0)),
        ]
    });
    let categories: Vec<String> =
        shown.iter().map(|s| format!("{} (n={})", s.strategy, s.downtime.as_ref().map_or(0, |d| d.n))).collect();
    let bars = shown
        .iter()
        .enumerate()
        .map(|(i, s)| {
            let m = s.downtime.as_ref().map_or(0.0, |d| d.median);
            let label = match s.reduction_vs_reboot {
                Some(r) if s.strategy != RecordedUpdateStrategy::Reboot => {
                    format!("{} ({:+.1}%)", fmt_s(m), -100.0 * r)
                }
                _ => fmt_s(m),
            };
            Bar {
                category: i,
                slot: 0,
                values: values(s.strategy, &|r| r.downtime_s),
                color: update_color(s.strategy),
                label,
            }
        })
        .collect();
    let title = format!("Kernel update, client-seen downtime: {guest} guest (median, dots: updates)");
    let downtime = Bars {
        title: title.clone(),
        x_desc: "update strategy".into(),
        y_desc: "client-seen downtime (s)".into(),
        categories: categories.clone(),
        slots: 1,
        bars,
        legend: Vec::new(),
        references,
    };
    let mut out = vec![render(&downtime, dir, &format!("update-downtime-{}", slug(guest)), &title)?];
    let bars = shown
        .iter()
        .enumerate()
        .map(|(i, s)| Bar {
            category: i,
            slot: 0,
            values: values(s.strategy, &|r| r.prepare_s),
            color: update_color(s.strategy),
            label: s.prepare_throughput_ratio.map_or("-".into(), |r| format!("served {:.0}%", r * 100.0)),
        })
        .collect();
    let title = format!("Kernel update, work while the old kernel served: {guest} guest (label: its throughput then)");
    let prepare = Bars {
        title: title.clone(),
        x_desc: "update strategy".into(),
        y_desc: "preparation (s): kexec load, shadow boot + snapshot + standby".into(),
        categories,
        slots: 1,
        bars,
        legend: Vec::new(),
        references: Vec::new(),
    };
    out.push(render(&prepare, dir, &format!("update-prepare-{}", slug(guest)), &title)?);
    Ok(out)
}

/// Bin width of a set of timelines: the smallest gap between bin starts.
fn bin_width(records: &[&ExperimentRecord]) -> f64 {
    let mut w = f64::INFINITY;
    for r in records {
        for pair in r.timeline.windows(2) {
            let d = pair[1].t_s - pair[0].t_s;
            if d > 1e-9 {
                w = w.min(d);
            }
        }
    }
    if w.is_finite() {
        w
    } else {
        0.1
    }
}

/// Throughput of one strategy around the failure.
#[derive(Debug, Clone, PartialEq)]
pub struct Throughput {
    /// Strategy requested (`None` without a recovery).
    pub strategy: Option<RecordedStrategy>,
    /// Experiments averaged.
    pub experiments: usize,
    /// `(seconds relative to the failure, correct answers per second)`.
    pub points: Vec<(f64, f64)>,
}

/// Mean correct answers per second per bin and strategy, for one group of
/// records with timelines (bins aligned by their start over the group's
/// bin width).
pub fn throughput_series(records: &[&ExperimentRecord]) -> Vec<Throughput> {
    let w = bin_width(records);
    // `None` sorts first: experiments without a recovery, then the
    // strategies in table order.
    let mut by: BTreeMap<Option<RecordedStrategy>, Vec<&ExperimentRecord>> = BTreeMap::new();
    for r in records {
        by.entry(r.recovery.as_ref().map(|x| x.requested)).or_default().push(r);
    }
    by.into_iter()
        .map(|(s, rs)| {
            let mut bins: BTreeMap<i64, (f64, u32)> = BTreeMap::new();
            for r in &rs {
                for b in &r.timeline {
                    let e = bins.entry((b.t_s / w).round() as i64).or_default();
                    e.0 += b.correct as f64 / w;
                    e.1 += 1;
                }
            }
            let pts = bins.into_iter().map(|(k, (sum, n))| (k as f64 * w, sum / f64::from(n))).collect();
            Throughput { strategy: s, experiments: rs.len(), points: pts }
        })
        .collect()
}

/// Throughput around the failure, one line per strategy: one figure per
/// (workload, failure class) with timelines.
pub fn throughput_timelines(records: &[ExperimentRecord], dir: &Path) -> Result<Vec<Figure>, FigureError> {
    let mut groups: BTreeMap<(RecordedWorkload, String), Vec<&ExperimentRecord>> = BTreeMap::new();
    for r in records.iter().filter(|r| !r.timeline.is_empty()) {
        groups.entry((r.workload, failure_class(r))).or_default().push(r);
    }
    let mut out = Vec::new();
    for ((workload, failure), rs) in groups {
        let series: Vec<_> = throughput_series(&rs)
            .into_iter()
            .map(|t| {
                let name = t.strategy.map_or("none", RecordedStrategy::name);
                (format!("{name} (n={})", t.experiments), strategy_color(t.strategy), t.points)
            })
            .collect();
        let title = format!("Throughput around the failure: {workload}, {failure}");
        let fig = Lines {
            title: title.clone(),
            x_desc: "time relative to failure (s)".into(),
            y_desc: "correct answers per second (mean)".into(),
            series,
            dots: Vec::new(),
            marker: Some((0.0, " failure".into())),
            markers_on_lines: false,
        };
        let name = format!("throughput-{}-{}", slug(workload.name()), slug(&failure));
        out.push(render(&fig, dir, &name, &title)?);
    }
    Ok(out)
}

/// A stacked chart's layers: name, colour, share per bar.
type Layers = Vec<(String, RGBColor, Vec<f64>)>;

/// The bars and layers of a 100%-stacked chart: per fault model, the share
/// of each class (`class` of a record, `None` to leave it out), classes in
/// their table order (`Ord`). `None` when no record has a class.
fn shares_per_model<C: Ord + Copy + std::fmt::Display>(
    records: &[ExperimentRecord],
    color: fn(C) -> RGBColor,
    class: impl Fn(&ExperimentRecord) -> Option<C>,
) -> Option<(Vec<String>, Vec<u64>, Layers)> {
    let mut by: BTreeMap<String, BTreeMap<C, u64>> = BTreeMap::new();
    for r in records {
        if let Some(c) = class(r) {
            *by.entry(r.injection.label()).or_default().entry(c).or_default() += 1;
        }
    }
    if by.is_empty() {
        return None;
    }
    let mut classes: Vec<C> = by.values().flat_map(|m| m.keys().copied()).collect();
    classes.sort();
    classes.dedup();
    let totals: Vec<u64> = by.values().map(|m| m.values().sum()).collect();
    let layers = classes
        .iter()
        .map(|c| {
            let shares = by
                .values()
                .zip(&totals)
                .map(|(m, t)| 100.0 * m.get(c).copied().unwrap_or(0) as f64 / *t as f64)
                .collect();
            (c.to_string(), color(*c), shares)
        })
        .collect();
    Some((by.into_keys().collect(), totals, layers))
}

/// Outcome shares per fault model (forced crashes as `crash:<kind>`), as
/// 100%-stacked bars.
pub fn outcome_bars(records: &[ExperimentRecord], dir: &Path) -> Result<Vec<Figure>, FigureError> {
    let Some((categories, totals, layers)) =
        shares_per_model(records, outcome_color, |r| (!matches!(r.injection, Injection::None)).then_some(r.outcome))
    else {
        return Ok(Vec::new());
    };
    let title = "Outcomes per fault model".to_string();
    let fig = Stacked {
        title: title.clone(),
        x_desc: "fault model".into(),
        y_desc: "share of experiments (%)".into(),
        legend: "outcome".into(),
        categories,
        tops: totals.iter().map(|t| format!("n={t}")).collect(),
        y_max: 105.0,
        layers,
    };
    Ok(vec![render(&fig, dir, "outcomes", &title)?])
}

/// Error propagation scope shares per fault model (traced faults), as
/// 100%-stacked bars.
pub fn scope_bars(records: &[ExperimentRecord], dir: &Path) -> Result<Vec<Figure>, FigureError> {
    let Some((categories, totals, layers)) =
        shares_per_model(records, scope_color, |r| crate::tables::propagation(r).map(|p| p.scope))
    else {
        return Ok(Vec::new());
    };
    let title = "Error propagation scope per fault model (published: mostly process-local)".to_string();
    let fig = Stacked {
        title: title.clone(),
        x_desc: "fault model".into(),
        y_desc: "share of traced faults (%)".into(),
        legend: "scope".into(),
        categories,
        tops: totals.iter().map(|t| format!("n={t}")).collect(),
        y_max: 105.0,
        layers,
    };
    Ok(vec![render(&fig, dir, "propagation-scope", &title)?])
}

fn scope_color(s: RecordedScope) -> RGBColor {
    match s {
        RecordedScope::Masked => RGBColor(170, 170, 170),
        RecordedScope::Latent => RGBColor(120, 150, 200),
        RecordedScope::ProcessLocal => RGBColor(44, 160, 44),
        RecordedScope::KernelGlobal => RGBColor(214, 39, 40),
        RecordedScope::Unknown => RGBColor(255, 187, 120),
    }
}

/// Restore time against guest RAM, one line per `reduction` value.
pub fn restore_vs_ram(records: &[ExperimentRecord], dir: &Path) -> Result<Vec<Figure>, FigureError> {
    let points = metric_points(records, names::RESTORE_S, names::RAM_MB, Some(names::RESTORE_SERIES));
    let numeric: Vec<_> =
        points.into_iter().filter_map(|(s, v, ms)| v.parse::<f64>().ok().map(|x| (s, x, ms))).collect();
    if numeric.is_empty() {
        return Ok(Vec::new());
    }
    let mut by: BTreeMap<String, Vec<(f64, Vec<f64>)>> = BTreeMap::new();
    for (s, x, ms) in numeric {
        by.entry(s).or_default().push((x, ms));
    }
    let mut series = Vec::new();
    let mut dots = Vec::new();
    for (i, (s, pts)) in by.into_iter().enumerate() {
        let color = match s.as_str() {
            "on" => RGBColor(44, 160, 44),
            "off" => RGBColor(127, 127, 127),
            _ => PALETTE[i % PALETTE.len()],
        };
        let means = pts.iter().filter_map(|(x, ms)| Summary::of(ms).map(|m| (*x, m.mean))).collect();
        dots.push((color, pts.iter().flat_map(|(x, ms)| ms.iter().map(move |m| (*x, *m))).collect()));
        let name = if s == "–" { "restore (mean)".to_string() } else { format!("{} (mean)", series_label(&s)) };
        series.push((name, color, means));
    }
    let title = "Restore time vs guest RAM".to_string();
    let fig = Lines {
        title: title.clone(),
        x_desc: "guest RAM (MiB)".into(),
        y_desc: "restore time (s)".into(),
        series,
        dots,
        marker: None,
        markers_on_lines: true,
    };
    Ok(vec![render(&fig, dir, "restore-vs-ram", &title)?])
}

/// Restore time per storage kind or speed, side-by-side bars per
/// `reduction` value when there are several.
pub fn restore_vs_storage(records: &[ExperimentRecord], dir: &Path) -> Result<Vec<Figure>, FigureError> {
    let points = metric_points(records, names::RESTORE_S, names::STORAGE, Some(names::RESTORE_SERIES));
    if points.is_empty() {
        return Ok(Vec::new());
    }
    let mut categories: Vec<String> = Vec::new();
    let mut series: Vec<String> = Vec::new();
    for (s, v, _) in &points {
        if !categories.contains(v) {
            categories.push(v.clone());
        }
        if !series.contains(s) {
            series.push(s.clone());
        }
    }
    // Numeric storage values are speeds; order them and say so.
    let numeric = categories.iter().all(|c| c.parse::<f64>().is_ok());
    if numeric {
        categories.sort_by(|a, b| a.parse::<f64>().unwrap_or(0.0).total_cmp(&b.parse::<f64>().unwrap_or(0.0)));
    }
    let color_of = |i: usize, s: &str| match s {
        "on" => RGBColor(44, 160, 44),
        "off" => RGBColor(127, 127, 127),
        _ => PALETTE[i % PALETTE.len()],
    };
    let bars = points
        .iter()
        .filter_map(|(s, v, ms)| {
            let slot = series.iter().position(|x| x == s)?;
            let category = categories.iter().position(|x| x == v)?;
            let m = median(ms.iter().copied())?;
            Some(Bar { category, slot, values: ms.clone(), color: color_of(slot, s), label: fmt_s(m) })
        })
        .collect();
    let legend = if series.len() > 1 {
        series.iter().enumerate().map(|(i, s)| (series_label(s), color_of(i, s))).collect()
    } else {
        Vec::new()
    };
    let title = "Restore time vs storage (median, dots: experiments)".to_string();
    let fig = Bars {
        title: title.clone(),
        x_desc: if numeric { "storage read speed (MB/s)".into() } else { "storage".into() },
        y_desc: "restore time (s)".into(),
        categories,
        slots: series.len(),
        bars,
        legend,
        references: Vec::new(),
    };
    Ok(vec![render(&fig, dir, "restore-vs-storage", &title)?])
}

/// A restore series' legend text: a bare value is a reduction setting.
fn series_label(s: &str) -> String {
    if s.contains('=') {
        s.to_string()
    } else {
        format!("reduction={s}")
    }
}

/// The recovery stages as stacked bars of their medians, one bar per
/// strategy that ran: one figure per (workload, failure class) whose
/// records keep stages (see [`crate::tables::stage_medians`]).
pub fn recovery_stage_bars(records: &[ExperimentRecord], dir: &Path) -> Result<Vec<Figure>, FigureError> {
    let mut groups: BTreeMap<(RecordedWorkload, String), Vec<StageMedians>> = BTreeMap::new();
    for m in stage_medians(records) {
        groups.entry((m.workload, m.failure.clone())).or_default().push(m);
    }
    let colors = [PALETTE[7], PALETTE[0], PALETTE[2], PALETTE[1], PALETTE[4]];
    let mut out = Vec::new();
    for ((workload, failure), rows) in groups {
        let layers: Layers = STAGE_NAMES
            .iter()
            .zip(colors)
            .enumerate()
            .map(|(k, (name, color))| {
                (name.to_string(), color, rows.iter().map(|m| m.stages[k].unwrap_or(0.0)).collect())
            })
            .collect();
        let totals: Vec<f64> = rows.iter().map(|m| m.stages.iter().flatten().sum()).collect();
        let top = totals.iter().copied().fold(0.0_f64, f64::max);
        let title = format!("Recovery stages (medians): {workload}, {failure}");
        let fig = Stacked {
            title: title.clone(),
            x_desc: "strategy that ran".into(),
            y_desc: "seconds".into(),
            legend: "stage".into(),
            categories: rows.iter().map(|m| m.strategy.to_string()).collect(),
            tops: rows.iter().zip(&totals).map(|(m, t)| format!("{} (n={})", fmt_s(*t), m.n)).collect(),
            y_max: if top > 0.0 { top * 1.12 } else { 1.0 },
            layers,
        };
        out.push(render(&fig, dir, &format!("stages-{}-{}", slug(&workload.to_string()), slug(&failure)), &title)?);
    }
    Ok(out)
}

/// Every figure the records support, in report order.
pub fn write_figures(records: &[ExperimentRecord], dir: &Path) -> Result<Vec<Figure>, FigureError> {
    let mut out = downtime_bars(records, dir)?;
    out.extend(recovery_stage_bars(records, dir)?);
    out.extend(throughput_timelines(records, dir)?);
    out.extend(outcome_bars(records, dir)?);
    out.extend(scope_bars(records, dir)?);
    out.extend(restore_vs_ram(records, dir)?);
    out.extend(restore_vs_storage(records, dir)?);
    Ok(out)
}
