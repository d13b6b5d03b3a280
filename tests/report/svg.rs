//! The report's charts taken apart: each `<figure class="chart">` with its inline SVG, the
//! SVG's shapes and texts, and assertions on what a bar chart, a funnel, a heat map and a
//! line chart must draw for given data. The expected data is worked out by the callers from
//! the published tables; only the geometry is read here.

use std::collections::{BTreeMap, BTreeSet};

use super::{attr, unescape};

/// One element of a chart's SVG: its tag, its start tag's text and, for `<text>`, its text.
pub(super) struct Shape {
    pub(super) tag: String,
    start: String,
    pub(super) text: String,
}

impl Shape {
    fn num(&self, name: &str) -> f64 {
        let v = attr(&self.start, name)
            .unwrap_or_else(|| panic!("<{} {}> has no {name}", self.tag, self.start));
        v.parse()
            .unwrap_or_else(|_| panic!("<{}> {name}={v} is not a number", self.tag))
    }

    pub(super) fn attr(&self, name: &str) -> String {
        attr(&self.start, name).unwrap_or_default()
    }

    fn points(&self) -> Vec<(f64, f64)> {
        self.attr("points")
            .split_whitespace()
            .map(|p| {
                let (x, y) = p.split_once(',').unwrap();
                (x.parse().unwrap(), y.parse().unwrap())
            })
            .collect()
    }

    /// Whether the point lies inside this `<rect>`.
    fn holds(&self, (x, y): (f64, f64)) -> bool {
        let (x0, y0) = (self.num("x"), self.num("y"));
        (x0..=x0 + self.num("width")).contains(&x) && (y0..=y0 + self.num("height")).contains(&y)
    }
}

/// A chart: its `data-chart` id and its SVG's elements in drawing order.
pub(super) struct Chart {
    pub(super) id: String,
    pub(super) shapes: Vec<Shape>,
}

impl Chart {
    pub(super) fn all(&self, tag: &str) -> Vec<&Shape> {
        self.shapes.iter().filter(|s| s.tag == tag).collect()
    }

    pub(super) fn texts(&self) -> Vec<String> {
        self.all("text").iter().map(|t| t.text.clone()).collect()
    }

    /// The `<rect>`s after the background (the first rect, the whole drawing).
    fn rects(&self) -> Vec<&Shape> {
        let rects = self.all("rect");
        let svg = &self.shapes[0];
        assert_eq!(
            (rects[0].num("width"), rects[0].num("height")),
            (svg.num("width"), svg.num("height")),
            "{}: the first rect is not the background",
            self.id
        );
        rects[1..].to_vec()
    }
}

/// Every chart of a report page, in page order, each with exactly one `<svg>`.
pub(super) fn charts(html: &str) -> Vec<Chart> {
    html.split("<figure class=\"chart\"")
        .skip(1)
        .map(|figure| {
            let id = attr(figure, "data-chart").expect("a chart without data-chart");
            let figure = &figure[..figure.find("</figure>").unwrap()];
            assert_eq!(figure.matches("<svg").count(), 1, "{id}: svgs");
            let svg = &figure[figure.find("<svg").unwrap()..figure.find("</svg>").unwrap()];
            Chart {
                shapes: shapes(svg),
                id,
            }
        })
        .collect()
}

fn shapes(svg: &str) -> Vec<Shape> {
    svg.split('<')
        .skip(1)
        .filter(|piece| !piece.starts_with('/'))
        .map(|piece| {
            let end = piece.find('>').unwrap();
            let tag_end = piece.find([' ', '/', '>']).unwrap();
            Shape {
                tag: piece[..tag_end].to_string(),
                start: format!(" {}", &piece[tag_end..end]),
                text: unescape(piece[end + 1..].trim()),
            }
        })
        .collect()
}

/// The number an axis tick shows: `12 %`, `200`, `2.5`, `40 k`, `1.5 M`.
fn tick_value(tick: &str) -> f64 {
    let (digits, scale) = match tick.rsplit_once(' ') {
        Some((d, "%")) => (d, 0.01),
        Some((d, "k")) => (d, 1e3),
        Some((d, "M")) => (d, 1e6),
        _ => (tick, 1.0),
    };
    digits
        .replace(',', "")
        .parse::<f64>()
        .unwrap_or_else(|_| panic!("tick `{tick}` is not a number"))
        * scale
}

/// A number as printed (`1,653`, `129.45`, `12.5 %`) and half a unit of its last digit.
fn printed(text: &str) -> (f64, f64) {
    let digits = text.trim_end_matches(" %");
    let decimals = digits.split_once('.').map_or(0, |(_, d)| d.len());
    let scale = if digits.len() < text.len() { 0.01 } else { 1.0 };
    let rounding = 0.5 * 10f64.powi(-(decimals as i32)) * scale;
    (tick_value(text), rounding * (1.0 + 1e-9))
}

/// Ticks of an axis from 0 to `max`: from 0, evenly spaced, every multiple of the step up
/// to `max` and none beyond.
fn assert_ticks(what: &str, ticks: &[String], max: f64) {
    let v: Vec<f64> = ticks.iter().map(|t| tick_value(t)).collect();
    assert!(v.len() >= 2 && v[0] == 0.0, "{what}: ticks {ticks:?}");
    let step = v[1] - v[0];
    let slack = step * 0.02;
    for (i, x) in v.iter().enumerate() {
        assert!(
            (x - step * i as f64).abs() <= slack,
            "{what}: ticks {ticks:?} not evenly spaced"
        );
    }
    let last = v[v.len() - 1];
    assert!(
        last <= max + slack && last + step > max - slack,
        "{what}: ticks {ticks:?} do not cover 0..{max}"
    );
}

/// Labels as drawn when at most about `most` fit: every `k`-th, from the first.
fn shown(labels: &[String], most: usize) -> Vec<String> {
    let step = (labels.len() / most).max(1);
    labels.iter().step_by(step).cloned().collect()
}

/// `digits` with thousands separators, as the report writes counts.
pub(super) fn thousands(n: i64) -> String {
    let digits = n.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    if n < 0 {
        format!("-{out}")
    } else {
        out
    }
}

/// Bar widths proportional to `values` (non-negative), given the widest.
fn assert_widths(what: &str, bars: &[&Shape], values: &[f64]) {
    assert_eq!(bars.len(), values.len(), "{what}: bars");
    let widest = values.iter().copied().fold(0.0, f64::max);
    let (i_max, _) = values
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1))
        .unwrap();
    let px_per_unit = bars[i_max].num("width") / widest.max(f64::MIN_POSITIVE);
    for (bar, v) in bars.iter().zip(values) {
        let w = bar.num("width");
        assert!(
            (w - v * px_per_unit).abs() <= 1.5,
            "{what}: a bar for {v} is {w} px wide ({px_per_unit} px per unit): {values:?}"
        );
    }
}

/// A bar chart of one row per label (the first on top) and one bar per series in each row:
/// the bars of a series in one colour, their widths in proportion to the values, the labels
/// in order, a legend naming the series when there are several, and value ticks from 0
/// covering the largest value.
pub(super) fn assert_bar_chart(chart: &Chart, labels: &[String], series: &[(&str, Vec<f64>)]) {
    let id = &chart.id;
    let (n, k) = (labels.len(), series.len());
    let rects = chart.rects();
    let legend = if k > 1 { k } else { 0 };
    assert_eq!(rects.len(), n * k + legend, "{id}: bars and legend keys");
    let mut colours = vec![];
    for (s, (name, _)) in series.iter().enumerate() {
        let bars = &rects[s * n..(s + 1) * n];
        let colour = bars[0].attr("fill");
        assert!(
            bars.iter().all(|b| b.attr("fill") == colour),
            "{id} {name}: not one colour"
        );
        assert!(
            bars.windows(2).all(|w| w[0].num("y") < w[1].num("y")),
            "{id} {name}: bars not in label order, top down"
        );
        colours.push(colour);
    }
    // One scale for every series.
    let values: Vec<f64> = series.iter().flat_map(|(_, v)| v.clone()).collect();
    assert_widths(id, &rects[..n * k], &values);
    let max = values.iter().copied().fold(0.0, f64::max);
    assert_eq!(
        colours.iter().collect::<BTreeSet<_>>().len(),
        k,
        "{id}: series share a colour"
    );
    let keys: Vec<String> = rects[n * k..].iter().map(|r| r.attr("fill")).collect();
    assert_eq!(keys, colours[..legend], "{id}: legend colours");

    // Texts: value ticks, the row labels, the series names of the legend.
    let texts = chart.texts();
    let names: Vec<String> = series[..legend]
        .iter()
        .map(|(name, _)| name.to_string())
        .collect();
    let labels = shown(labels, 40);
    assert!(texts.len() > labels.len() + legend, "{id}: texts {texts:?}");
    let ticks = &texts[..texts.len() - labels.len() - legend];
    assert_eq!(texts[ticks.len()..][..labels.len()], labels, "{id}: labels");
    assert_eq!(texts[texts.len() - legend..], names, "{id}: legend");
    assert_ticks(id, ticks, if max > 0.0 { max * 1.05 } else { 1.0 });
    // The two axis lines and a mark per tick.
    assert_eq!(chart.all("polyline").len(), ticks.len() + 2, "{id}: lines");
}

/// A funnel: one bar per stage, widest value widest, each with its text beside it, and the
/// stage labels.
pub(super) fn assert_funnel(chart: &Chart, labels: &[String], values: &[f64], text: &[String]) {
    let rects = chart.rects();
    assert_widths(&chart.id, &rects, values);
    assert!(
        rects.windows(2).all(|w| w[0].num("y") < w[1].num("y")),
        "{}: stages not top down",
        chart.id
    );
    let expected: Vec<String> = text.iter().chain(labels).cloned().collect();
    assert_eq!(chart.texts(), expected, "{}: texts", chart.id);
}

/// A heat map as the data says it should be.
pub(super) struct Heat<'a> {
    /// Column labels, left to right.
    pub(super) columns: Vec<String>,
    /// Row labels, top down.
    pub(super) rows: Vec<String>,
    /// (row, column) -> the value that colours the cell and the number written in it.
    pub(super) cells: BTreeMap<(usize, usize), (f64, String)>,
    /// The axis titles: under the columns, over the rows.
    pub(super) axes: (&'a str, &'a str),
}

/// Where the rows and columns of a heat map are: the centre of the first row and column
/// label, and the distance from one row or column to the next.
struct Grid {
    first: (f64, f64),
    pitch: (f64, f64),
    size: (usize, usize),
}

impl Grid {
    /// From the labels drawn (every `step`-th row or column), `cell` for one cell's size.
    fn new(rows: &[&Shape], columns: &[&Shape], heat: &Heat<'_>, cell: &Shape) -> Grid {
        let size = (heat.rows.len(), heat.columns.len());
        let pitch = |labels: &[&Shape], coord: &str, n: usize, most: usize, own: f64| {
            let step = (n / most).max(1) as f64;
            match labels {
                [first, .., last] => {
                    (last.num(coord) - first.num(coord)) / (step * (labels.len() - 1) as f64)
                }
                _ => own,
            }
        };
        Grid {
            first: (rows[0].num("y"), columns[0].num("x")),
            pitch: (
                pitch(rows, "y", size.0, 40, cell.num("height")),
                pitch(columns, "x", size.1, 24, cell.num("width")),
            ),
            size,
        }
    }

    /// The (row, column) of a cell, from its centre.
    fn at(&self, cell: &Shape) -> (usize, usize) {
        let y = cell.num("y") + cell.num("height") / 2.0;
        let x = cell.num("x") + cell.num("width") / 2.0;
        let row = ((y - self.first.0) / self.pitch.0).round();
        let column = ((x - self.first.1) / self.pitch.1).round();
        assert!(
            (0.0..self.size.0 as f64).contains(&row) && (0.0..self.size.1 as f64).contains(&column),
            "a cell centred at ({x}, {y}) is off the grid: row {row}, column {column} of {:?}, \
             first row and column at {:?}, {:?} apart",
            self.size,
            self.first,
            self.pitch
        );
        (row as usize, column as usize)
    }
}

/// Red + green + blue of a shape's fill: lower is darker.
fn brightness(shape: &Shape) -> u32 {
    let hex = shape.attr("fill");
    (0..3)
        .map(|i| u32::from_str_radix(&hex[1 + 2 * i..3 + 2 * i], 16).unwrap())
        .sum()
}

/// A heat map: a cell where the data has one, each at its row and column, colours darkening
/// as values grow, the numbers written in the cells when at most 30 rows and 16 columns
/// leave room, the row and column labels, the axis titles and a 20-step colour key from the
/// smallest to the largest value.
pub(super) fn assert_heat_map(chart: &Chart, heat: &Heat<'_>) {
    let id = &chart.id;
    let rects = chart.rects();
    let (cells, key) = rects.split_at(rects.len() - 20);
    assert_eq!(cells.len(), heat.cells.len(), "{id}: cells");
    let texts = chart.all("text");
    let numbered = heat.rows.len() <= 30 && heat.columns.len() <= 16;
    let in_cells = if numbered { cells.len() } else { 0 };
    let (rows, columns) = (shown(&heat.rows, 40), shown(&heat.columns, 24));
    let (row_labels, rest) = texts[in_cells..].split_at(rows.len());
    let grid = Grid::new(row_labels, &rest[..columns.len()], heat, cells[0]);

    let drawn: BTreeSet<(usize, usize)> = cells.iter().map(|c| grid.at(c)).collect();
    let data: BTreeSet<(usize, usize)> = heat.cells.keys().copied().collect();
    let (extra, missing): (Vec<_>, Vec<_>) = (
        drawn.difference(&data).collect(),
        data.difference(&drawn).collect(),
    );
    assert!(
        extra.is_empty() && missing.is_empty(),
        "{id}: cells (row, column) drawn without data {extra:?}, missing {missing:?}"
    );
    // Darker for larger values (cells without a value are grey).
    let mut by_value: Vec<(f64, u32)> = cells
        .iter()
        .map(|c| (heat.cells[&grid.at(c)].0, brightness(c)))
        .filter(|(v, _)| v.is_finite())
        .collect();
    by_value.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        by_value.windows(2).all(|w| w[0].1 >= w[1].1),
        "{id}: colours do not darken with the value: {by_value:?}"
    );
    assert!(key.windows(2).all(|w| brightness(w[0]) >= brightness(w[1])));
    for t in &texts[..in_cells] {
        let point = (t.num("x"), t.num("y"));
        let cell = cells.iter().find(|c| c.holds(point)).unwrap();
        let at = grid.at(cell);
        assert_eq!(t.text, heat.cells[&at].1, "{id}: cell {at:?}");
    }

    let mut labels = rows;
    labels.extend(columns);
    labels.extend([heat.axes.0.to_string(), heat.axes.1.to_string()]);
    let rest: Vec<String> = texts[in_cells..].iter().map(|t| t.text.clone()).collect();
    assert_eq!(rest[..rest.len() - 2], labels, "{id}: labels");
    let values = || {
        heat.cells
            .values()
            .map(|(v, _)| *v)
            .filter(|v| v.is_finite())
    };
    let lo = values().fold(f64::INFINITY, f64::min);
    let hi = values().fold(f64::NEG_INFINITY, f64::max);
    for (text, v) in rest[rest.len() - 2..].iter().zip([lo, hi]) {
        let (shown, rounding) = printed(text);
        assert!(
            (shown - v).abs() <= rounding,
            "{id}: colour key `{text}` for {v}"
        );
    }
}

/// Lines over periods 0, 1, 2, ...: one line per series (name, (period, value) points) in
/// order, each through its points at their periods, higher values higher up; a legend
/// naming the first and the last; period and value ticks covering the data.
pub(super) fn assert_line_chart(chart: &Chart, x_title: &str, lines: &[(String, Vec<(i64, f64)>)]) {
    let id = &chart.id;
    let drawn: Vec<Vec<(f64, f64)>> = chart
        .all("polyline")
        .iter()
        .filter(|p| p.attr("stroke-width") == "2")
        .map(|p| p.points())
        .collect();
    assert_eq!(drawn.len(), lines.len(), "{id}: lines");
    // x = x0 + period * px: fixed by the longest line.
    let longest = (0..lines.len()).max_by_key(|&i| lines[i].1.len()).unwrap();
    let ((p0, _), (p1, _)) = (lines[longest].1[0], *lines[longest].1.last().unwrap());
    let (x0, x1) = (drawn[longest][0].0, drawn[longest].last().unwrap().0);
    let px = (x1 - x0) / (p1 - p0) as f64;
    let mut heights = vec![];
    for ((name, points), line) in lines.iter().zip(&drawn) {
        assert_eq!(line.len(), points.len(), "{id} {name}: points");
        for ((period, value), (x, y)) in points.iter().zip(line) {
            let want = x0 + (period - p0) as f64 * px;
            assert!(
                (x - want).abs() <= 1.0,
                "{id} {name}: period {period} at x {x}"
            );
            heights.push((*value, *y));
        }
    }
    heights.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        heights.windows(2).all(|w| w[0].1 + 1.0 >= w[1].1),
        "{id}: a larger value drawn lower"
    );
    let texts = chart.texts();
    let names = [lines[0].0.clone(), lines[lines.len() - 1].0.clone()];
    assert_eq!(texts[0], x_title, "{id}: texts {texts:?}");
    assert_eq!(texts[texts.len() - 2..], names, "{id}: legend");
    assert_eq!(chart.rects().len(), 2, "{id}: legend keys");
    // Value ticks, then period ticks, each from 0.
    let ticks = &texts[1..texts.len() - 2];
    let split = 1 + ticks[1..]
        .iter()
        .position(|t| tick_value(t) == 0.0)
        .unwrap();
    let points = lines.iter().flat_map(|(_, p)| p.iter());
    let max_value = points.clone().map(|p| p.1).fold(0.0, f64::max);
    let max_period = points.map(|p| p.0).max().unwrap();
    assert_ticks(&format!("{id} values"), &ticks[..split], max_value * 1.05);
    assert_ticks(
        &format!("{id} periods"),
        &ticks[split..],
        max_period.max(1) as f64,
    );
    // A grid line and a mark per tick, and the two axis lines.
    assert_eq!(chart.all("line").len(), ticks.len(), "{id}: grid");
    let thin = chart.all("polyline").len() - lines.len();
    assert_eq!(thin, ticks.len() + 2, "{id}: axes and tick marks");
}
