//! A hand-written SVG chart: the cumulative distribution (CDF) of latency
//! samples, latency on a logarithmic axis, the share of operations on a
//! "nines" axis (0, 50, 90, 99, 99.9 % equally spaced as -log10(1 - p)), so
//! the tail is as visible as the median. No plotting crate: a few lines, axes
//! and a legend are all it takes.

use std::fmt::Write as _;
use std::time::Duration;

/// Line colours, one per pair of series (ours solid, floor dashed).
const COLORS: [&str; 4] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"];

const WIDTH: f64 = 760.0;
const HEIGHT: f64 = 440.0;
const LEFT: f64 = 64.0;
const RIGHT: f64 = 24.0;
const TOP: f64 = 44.0;
const BOTTOM: f64 = 56.0;

/// One line of the chart.
pub(crate) struct Series<'a> {
    label: &'a str,
    samples: &'a [Duration],
    color: usize,
    dashed: bool,
}

impl<'a> Series<'a> {
    pub(crate) fn new(
        label: &'a str,
        samples: &'a [Duration],
        color: usize,
        dashed: bool,
    ) -> Series<'a> {
        Series {
            label,
            samples,
            color,
            dashed,
        }
    }
}

fn micros(d: &Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// 1-2-5 ticks (in µs) from the largest at or below `lo` to the smallest at or
/// above `hi`.
fn ticks(lo: f64, hi: f64) -> Vec<f64> {
    let mut out = Vec::new();
    let mut decade = 10f64.powf(lo.max(1.0).log10().floor());
    // Bounded: at most 12 decades.
    for _ in 0..12 {
        for m in [1.0, 2.0, 5.0] {
            let t = m * decade;
            let below_lo = t <= lo;
            if below_lo {
                out.clear();
            }
            out.push(t);
            if t >= hi {
                return out;
            }
        }
        decade *= 10.0;
    }
    out
}

fn label(us: f64) -> String {
    if us >= 1000.0 {
        format!("{} ms", us / 1000.0)
    } else {
        format!("{us} µs")
    }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// The "nines" of a share `p` < 1: 0 for 0, 1 for 90 %, 2 for 99 %, ...
fn nines(p: f64) -> f64 {
    -(1.0 - p).log10()
}

/// The plotting position of the `i`-th of `n` sorted samples (Hazen's: never 1,
/// so the largest sample still has a finite height).
fn position(i: usize, n: usize) -> f64 {
    (i as f64 + 0.5) / n as f64
}

/// The SVG text of a CDF chart of `series` titled `title`.
pub(crate) fn cdf_svg(title: &str, series: &[Series<'_>]) -> String {
    let all = series.iter().flat_map(|s| s.samples.iter().map(micros));
    let (lo, hi) = all.fold((f64::MAX, 0f64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let (lo, hi) = if hi > 0.0 { (lo, hi) } else { (1.0, 10.0) };
    let ticks = ticks(lo, hi);
    let (x0, x1) = (ticks[0].log10(), ticks[ticks.len() - 1].log10());
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let x = |us: f64| LEFT + (us.max(ticks[0]).log10() - x0) / (x1 - x0) * plot_w;
    let most = series.iter().map(|s| s.samples.len()).max().unwrap_or(1);
    // Up to the largest sample's height (at least 99 %).
    let top = (nines(position(most.max(1) - 1, most.max(1))) * 1.03).max(2.0);
    let y = |p: f64| TOP + (1.0 - nines(p) / top) * plot_h;

    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(
        svg,
        r#"<rect width="{WIDTH}" height="{HEIGHT}" fill="white"/>"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="24" text-anchor="middle" font-size="14">{}</text>"#,
        WIDTH / 2.0,
        escape(title)
    );
    // Grid and axes.
    for &t in &ticks {
        let _ = writeln!(
            svg,
            r##"<line x1="{0:.1}" y1="{TOP}" x2="{0:.1}" y2="{1}" stroke="#ddd"/><text x="{0:.1}" y="{2}" text-anchor="middle">{3}</text>"##,
            x(t),
            TOP + plot_h,
            TOP + plot_h + 16.0,
            label(t)
        );
    }
    let mut levels = vec![(0.0, "0%".to_string()), (0.5, "50%".to_string())];
    let mut p = 0.9;
    for k in 1..=(top.floor() as u32) {
        levels.push((p, format!("{}%", 100.0 - 100.0 / 10f64.powi(k as i32))));
        p = 1.0 - (1.0 - p) / 10.0;
    }
    for (p, text) in levels {
        let _ = writeln!(
            svg,
            r##"<line x1="{LEFT}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="#ddd"/><text x="{2}" y="{3:.1}" text-anchor="end">{4}</text>"##,
            y(p),
            LEFT + plot_w,
            LEFT - 6.0,
            y(p) + 4.0,
            text
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#444"/>"##
    );
    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle">latency (log scale)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 14.0
    );
    let _ = writeln!(
        svg,
        r#"<text x="16" y="{}" text-anchor="middle" transform="rotate(-90 16 {})">operations at or below (nines scale)</text>"#,
        TOP + plot_h / 2.0,
        TOP + plot_h / 2.0
    );
    // The lines: a step function through the sorted samples.
    for s in series {
        let mut v: Vec<f64> = s.samples.iter().map(micros).collect();
        v.sort_by(f64::total_cmp);
        if v.is_empty() {
            continue;
        }
        let n = v.len();
        // Steps: right to the next sample, then up to its share. Steps less
        // than half a pixel to the right are merged (nothing visible is lost,
        // and the file stays small).
        let mut d = format!("M{:.1},{:.1}", x(v[0]), y(0.0));
        let mut drawn_x = x(v[0]);
        for (i, us) in v.iter().enumerate() {
            let (px, py) = (x(*us), y(position(i, n)));
            if px - drawn_x >= 0.5 || i == 0 || i == n - 1 {
                let _ = write!(d, "H{px:.1}");
                drawn_x = px;
            }
            // Merged steps only raise the line: the last rise of a run wins.
            let next_far = v.get(i + 1).is_none_or(|nx| x(*nx) - drawn_x >= 0.5);
            if next_far {
                let _ = write!(d, "V{py:.1}");
            }
        }
        let _ = writeln!(
            svg,
            r#"<path d="{d}" fill="none" stroke="{}" stroke-width="1.6"{}/>"#,
            COLORS[s.color % COLORS.len()],
            if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            }
        );
    }
    // Legend, bottom right (high latency at a low share: empty), with each
    // series' p50 and p99.
    let (lx, ly) = (
        LEFT + plot_w - 404.0,
        TOP + plot_h - 14.0 - 18.0 * series.len() as f64,
    );
    let _ = writeln!(
        svg,
        r##"<rect x="{}" y="{}" width="398" height="{}" fill="white" stroke="#bbb"/>"##,
        lx - 6.0,
        ly - 14.0,
        18.0 * series.len() as f64 + 8.0
    );
    for (i, s) in series.iter().enumerate() {
        let mut v: Vec<f64> = s.samples.iter().map(micros).collect();
        v.sort_by(f64::total_cmp);
        let pct = |p: f64| {
            v.get(((v.len().max(1) - 1) as f64 * p).round() as usize)
                .copied()
                .unwrap_or(0.0)
        };
        let yy = ly + 18.0 * i as f64;
        let _ = writeln!(
            svg,
            r#"<line x1="{lx}" y1="{0:.1}" x2="{1}" y2="{0:.1}" stroke="{2}" stroke-width="2"{3}/><text x="{4}" y="{5:.1}">{6} (p50 {7:.0} µs, p99 {8:.0} µs)</text>"#,
            yy - 4.0,
            lx + 28.0,
            COLORS[s.color % COLORS.len()],
            if s.dashed {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            },
            lx + 34.0,
            yy,
            escape(s.label),
            pct(0.5),
            pct(0.99)
        );
    }
    svg.push_str("</svg>\n");
    svg
}
