//! The report's charts: inline SVG drawn with plotters' SVG backend when the report is
//! made, so they show without scripts (in mail clients and in print too).
//!
//! plotters is built without a font engine: the SVG backend writes `<text>` elements and
//! the browser lays them out, so label areas are sized from the longest label. Category
//! labels are placed with the chart's own coordinate mapping (`backend_coord`).

use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::error::{Error, Result};

/// One palette for the whole report.
const BAR: RGBColor = RGBColor(37, 99, 235);
const BAR_2: RGBColor = RGBColor(245, 158, 11);
const INK: RGBColor = RGBColor(31, 41, 55);
const MUTED: RGBColor = RGBColor(107, 114, 128);
const GRID: RGBColor = RGBColor(229, 231, 235);
const FONT: &str = "sans-serif";
/// Light to dark blue: cell colours of the heat maps.
const RAMP: [RGBColor; 5] = [
    RGBColor(239, 246, 255),
    RGBColor(191, 219, 254),
    RGBColor(96, 165, 250),
    RGBColor(37, 99, 235),
    RGBColor(30, 58, 138),
];
const WIDTH: u32 = 760;

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;
type Area<'b> = DrawingArea<SVGBackend<'b>, plotters::coord::Shift>;

fn chart_err(chart: &str, e: impl std::fmt::Display) -> Error {
    Error::Report {
        section: chart.to_string(),
        message: format!("cannot draw the chart: {e}"),
    }
}

/// Pixels a label of `px` font size needs (browsers lay the text out; this is an estimate).
fn label_width(labels: &[String], px: u32) -> u32 {
    let longest = labels.iter().map(|l| l.chars().count()).max().unwrap_or(0) as u32;
    (longest * px * 6 / 10 + 14).clamp(40, 280)
}

fn finite_max(values: impl Iterator<Item = f64>) -> f64 {
    values.filter(|v| v.is_finite()).fold(0.0, f64::max)
}

fn text_style(px: u32, colour: RGBColor, h: HPos, v: VPos) -> TextStyle<'static> {
    // plotters' SVG backend writes font-size as the size / 1.24.
    TextStyle {
        font: (FONT, f64::from(px) * 1.24).into_font(),
        color: colour.to_backend_color(),
        pos: Pos::new(h, v),
    }
}

/// A colour from the ramp for `t` in [0, 1].
pub fn ramp(t: f64) -> RGBColor {
    let t = if t.is_finite() {
        t.clamp(0.0, 1.0)
    } else {
        0.0
    };
    let x = t * (RAMP.len() - 1) as f64;
    let i = (x.floor() as usize).min(RAMP.len() - 2);
    let f = x - i as f64;
    let (a, b) = (RAMP[i], RAMP[i + 1]);
    let mix = |p: u8, q: u8| (p as f64 + (q as f64 - p as f64) * f).round() as u8;
    RGBColor(mix(a.0, b.0), mix(a.1, b.1), mix(a.2, b.2))
}

/// An SVG `WIDTH` × `height` pixels on white, drawn by `draw`; its errors name `chart`.
fn draw_svg(
    chart: &str,
    height: u32,
    draw: impl FnOnce(&Area<'_>) -> Result<(), String>,
) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(|e| e.to_string())
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(|e| e.to_string()))
            .map_err(|e| chart_err(chart, e))?;
    }
    Ok(svg)
}

/// Writes `labels[i]` left of row `i` (row 0 on top) of a chart with `n` rows.
fn row_labels(area: &Area<'_>, c: &Chart<'_, '_>, labels: &[String], x: f64) -> Result<(), String> {
    let n = labels.len();
    let step = (n / 40).max(1);
    for (i, label) in labels.iter().enumerate().filter(|(i, _)| i % step == 0) {
        let (px, py) = c.backend_coord(&(x, (n - i) as f64 - 0.5));
        area.draw(&Text::new(
            label.clone(),
            (px - 6, py),
            text_style(12, INK, HPos::Right, VPos::Center),
        ))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Writes `labels[j]` under column `j` of a chart; `rotate`d labels read upwards, for
/// labels wider than their column.
fn column_labels(
    area: &Area<'_>,
    c: &Chart<'_, '_>,
    labels: &[String],
    y: f64,
    rotate: bool,
) -> Result<(), String> {
    let n = labels.len();
    let step = (n / 24).max(1);
    for (j, label) in labels.iter().enumerate().filter(|(j, _)| j % step == 0) {
        let (px, py) = c.backend_coord(&(j as f64 + 0.5, y));
        let style = if rotate {
            let mut s = text_style(11, INK, HPos::Right, VPos::Center);
            s.font = s.font.transform(FontTransform::Rotate270);
            s
        } else {
            text_style(11, INK, HPos::Center, VPos::Top)
        };
        area.draw(&Text::new(label.clone(), (px, py + 6), style))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

fn legend(area: &Area<'_>, names: &[&str], colours: &[RGBColor]) -> Result<(), String> {
    let mut x = 12;
    for (name, colour) in names.iter().zip(colours) {
        area.draw(&Rectangle::new([(x, 6), (x + 12, 18)], colour.filled()))
            .map_err(|e| e.to_string())?;
        area.draw(&Text::new(
            name.to_string(),
            (x + 18, 12),
            text_style(12, INK, HPos::Left, VPos::Center),
        ))
        .map_err(|e| e.to_string())?;
        x += 30 + (name.chars().count() as i32) * 7;
    }
    Ok(())
}

/// One series of a bar chart.
pub struct Bars<'a> {
    pub name: &'a str,
    pub values: Vec<f64>,
}

/// Horizontal bars: one row per label (the first on top), one bar per series in a row.
/// `fmt` writes the value axis ticks.
pub fn bar_chart(
    chart: &str,
    labels: &[String],
    series: &[Bars<'_>],
    fmt: &dyn Fn(f64) -> String,
) -> Result<String> {
    let n = labels.len();
    let k = series.len().max(1);
    let top = if k > 1 { 28 } else { 10 };
    let height = (n as u32) * (10 + 12 * k as u32) + 34 + top;
    let max = finite_max(series.iter().flat_map(|s| s.values.iter().copied()));
    let max = if max > 0.0 { max * 1.05 } else { 1.0 };
    draw_svg(chart, height, |root| {
        let mut c = ChartBuilder::on(root)
            .margin_top(top)
            .margin_right(24)
            .margin_bottom(4)
            .x_label_area_size(24)
            .y_label_area_size(label_width(labels, 12))
            .build_cartesian_2d(0f64..max, 0f64..n as f64)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .disable_y_mesh()
            .disable_x_mesh()
            .y_labels(0)
            .x_labels(6)
            .x_label_formatter(&|x| fmt(*x))
            .label_style(text_style(11, INK, HPos::Center, VPos::Top))
            .axis_style(MUTED)
            .draw()
            .map_err(|e| e.to_string())?;
        let band = 0.8 / k as f64;
        let colours = [BAR, BAR_2];
        for (s_i, s) in series.iter().enumerate() {
            let colour = colours[s_i.min(1)];
            c.draw_series(s.values.iter().take(n).enumerate().map(|(i, v)| {
                let row = (n - 1 - i) as f64;
                let hi = row + 0.9 - band * s_i as f64;
                let v = if v.is_finite() { v.max(0.0) } else { 0.0 };
                Rectangle::new([(0.0, hi - band), (v, hi)], colour.filled())
            }))
            .map_err(|e| e.to_string())?;
        }
        row_labels(root, &c, labels, 0.0)?;
        if k > 1 {
            let names: Vec<&str> = series.iter().map(|s| s.name).collect();
            legend(root, &names, &colours)?;
        }
        Ok(())
    })
}

/// A funnel: bars centred on one axis, widest first, each with its count beside it.
pub fn funnel(chart: &str, labels: &[String], values: &[f64], text: &[String]) -> Result<String> {
    let n = labels.len();
    let height = (n as u32) * 34 + 20;
    let max = finite_max(values.iter().copied());
    let max = if max > 0.0 { max } else { 1.0 };
    draw_svg(chart, height, |root| {
        let c = ChartBuilder::on(root)
            .margin(10)
            .margin_right(120)
            .y_label_area_size(label_width(labels, 12))
            .build_cartesian_2d(-max / 2.0..max / 2.0, 0f64..n as f64)
            .map_err(|e| e.to_string())?;
        let mut c = c;
        c.draw_series(values.iter().take(n).enumerate().map(|(i, v)| {
            let row = (n - 1 - i) as f64;
            let w = if v.is_finite() { v.max(0.0) } else { 0.0 } / 2.0;
            Rectangle::new(
                [(-w, row + 0.12), (w, row + 0.88)],
                ramp(0.45 + 0.5 * (i as f64 / n.max(1) as f64)).filled(),
            )
        }))
        .map_err(|e| e.to_string())?;
        for (i, t) in text.iter().take(n).enumerate() {
            let w = values
                .get(i)
                .copied()
                .filter(|v| v.is_finite())
                .unwrap_or(0.0)
                .max(0.0)
                / 2.0;
            let (px, py) = c.backend_coord(&(w, (n - i) as f64 - 0.5));
            root.draw(&Text::new(
                t.clone(),
                (px + 8, py),
                text_style(12, INK, HPos::Left, VPos::Center),
            ))
            .map_err(|e| e.to_string())?;
        }
        row_labels(root, &c, labels, -max / 2.0)?;
        Ok(())
    })
}

/// One cell of a heat map: column, row (0 on top), colour value, text written in the cell.
pub struct Cell {
    pub x: usize,
    pub y: usize,
    pub value: f64,
    pub text: String,
}

/// Where a cell value falls between the smallest and largest finite value of a heat map.
struct Scale {
    lo: f64,
    hi: f64,
    span: f64,
}

impl Scale {
    /// The range of the finite values of `cells`; 0 to 1 when there are none.
    fn of(cells: &[Cell]) -> Scale {
        let finite: Vec<f64> = cells
            .iter()
            .map(|c| c.value)
            .filter(|v| v.is_finite())
            .collect();
        let lo = finite.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = finite.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (lo, hi) = if lo.is_finite() { (lo, hi) } else { (0.0, 1.0) };
        let span = if hi > lo { hi - lo } else { 1.0 };
        Scale { lo, hi, span }
    }

    /// `v` in [0, 1] of the range (0 for a value that is not finite).
    fn t(&self, v: f64) -> f64 {
        if v.is_finite() {
            (v - self.lo) / self.span
        } else {
            0.0
        }
    }
}

/// The sizes of a heat map, in pixels.
struct HeatLayout {
    /// Columns and rows (at least one each).
    nx: usize,
    ny: usize,
    cell_h: u32,
    /// Height of the column label area; column labels are `rotate`d when wider than a cell.
    x_area: u32,
    y_area: u32,
    rotate: bool,
    height: u32,
}

impl HeatLayout {
    fn of(x_labels: &[String], y_labels: &[String]) -> HeatLayout {
        let (nx, ny) = (x_labels.len().max(1), y_labels.len().max(1));
        let cell_h: u32 = if ny > 30 { 12 } else { 26 };
        let y_area = label_width(y_labels, 12);
        let cell_w = (WIDTH - y_area - 16) / nx as u32;
        let rotate = label_width(x_labels, 11) > cell_w;
        let x_area = if rotate {
            label_width(x_labels, 10) + 20
        } else {
            40
        };
        let height = ny as u32 * cell_h + 46 + x_area;
        HeatLayout {
            nx,
            ny,
            cell_h,
            x_area,
            y_area,
            rotate,
            height,
        }
    }

    /// The cells that fall inside the map.
    fn inside<'c>(&self, cells: &'c [Cell]) -> impl Iterator<Item = &'c Cell> {
        let (nx, ny) = (self.nx, self.ny);
        cells.iter().filter(move |cell| cell.x < nx && cell.y < ny)
    }
}

/// A heat map: cells coloured by value between the smallest and largest finite value, with
/// a colour key; `fmt` writes the key's ends.
pub fn heat_map(
    chart: &str,
    x_labels: &[String],
    y_labels: &[String],
    cells: &[Cell],
    axes: (&str, &str),
    fmt: &dyn Fn(f64) -> String,
) -> Result<String> {
    let layout = HeatLayout::of(x_labels, y_labels);
    let scale = Scale::of(cells);
    draw_svg(chart, layout.height, |root| {
        let mut c = ChartBuilder::on(root)
            .margin_top(30)
            .margin_right(16)
            .margin_bottom(4)
            .x_label_area_size(layout.x_area)
            .y_label_area_size(layout.y_area)
            .build_cartesian_2d(0f64..layout.nx as f64, 0f64..layout.ny as f64)
            .map_err(|e| e.to_string())?;
        heat_cells(&mut c, &layout, &scale, cells)?;
        // Cell text where the cells are large enough to hold it.
        if layout.cell_h >= 20 && layout.nx <= 16 {
            heat_cell_texts(root, &c, &layout, &scale, cells)?;
        }
        row_labels(root, &c, y_labels, 0.0)?;
        column_labels(root, &c, x_labels, 0.0, layout.rotate)?;
        heat_axis_titles(root, &c, &layout, axes)?;
        colour_key(root, &scale, fmt)?;
        Ok(())
    })
}

/// The cells of a heat map, coloured from the ramp (grey where the value is not finite).
fn heat_cells(
    c: &mut Chart<'_, '_>,
    layout: &HeatLayout,
    scale: &Scale,
    cells: &[Cell],
) -> Result<(), String> {
    c.draw_series(layout.inside(cells).map(|cell| {
        let row = (layout.ny - 1 - cell.y) as f64;
        let colour = if cell.value.is_finite() {
            ramp(scale.t(cell.value))
        } else {
            GRID
        };
        Rectangle::new(
            [(cell.x as f64, row), (cell.x as f64 + 1.0, row + 1.0)],
            ShapeStyle::from(colour).filled().stroke_width(0),
        )
    }))
    .map_err(|e| e.to_string())?;
    Ok(())
}

/// Each cell's text, centred in it: white on the dark end of the ramp.
fn heat_cell_texts(
    area: &Area<'_>,
    c: &Chart<'_, '_>,
    layout: &HeatLayout,
    scale: &Scale,
    cells: &[Cell],
) -> Result<(), String> {
    for cell in layout.inside(cells) {
        let ink = if scale.t(cell.value) > 0.55 {
            WHITE
        } else {
            INK
        };
        let (px, py) = c.backend_coord(&(cell.x as f64 + 0.5, (layout.ny - cell.y) as f64 - 0.5));
        area.draw(&Text::new(
            cell.text.clone(),
            (px, py),
            text_style(11, ink, HPos::Center, VPos::Center),
        ))
        .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The axis titles: `axes.0` under the column labels, `axes.1` top left.
fn heat_axis_titles(
    area: &Area<'_>,
    c: &Chart<'_, '_>,
    layout: &HeatLayout,
    axes: (&str, &str),
) -> Result<(), String> {
    let (x0, _) = c.backend_coord(&(0.0, 0.0));
    let (x1, y1) = c.backend_coord(&(layout.nx as f64, 0.0));
    area.draw(&Text::new(
        axes.0.to_string(),
        ((x0 + x1) / 2, y1 + layout.x_area as i32 - 16),
        text_style(12, MUTED, HPos::Center, VPos::Top),
    ))
    .map_err(|e| e.to_string())?;
    area.draw(&Text::new(
        axes.1.to_string(),
        (4, 8),
        text_style(12, MUTED, HPos::Left, VPos::Top),
    ))
    .map_err(|e| e.to_string())
}

/// Colour key, top right: the ramp from lowest to highest, its ends written with `fmt`.
fn colour_key(area: &Area<'_>, scale: &Scale, fmt: &dyn Fn(f64) -> String) -> Result<(), String> {
    let key_x = WIDTH as i32 - 100 - 160;
    for s in 0..20 {
        let x = key_x + s * 8;
        area.draw(&Rectangle::new(
            [(x, 8), (x + 8, 20)],
            ramp(s as f64 / 19.0).filled(),
        ))
        .map_err(|e| e.to_string())?;
    }
    area.draw(&Text::new(
        fmt(scale.lo),
        (key_x - 6, 14),
        text_style(11, INK, HPos::Right, VPos::Center),
    ))
    .map_err(|e| e.to_string())?;
    area.draw(&Text::new(
        fmt(scale.hi),
        (key_x + 166, 14),
        text_style(11, INK, HPos::Left, VPos::Center),
    ))
    .map_err(|e| e.to_string())
}

/// One line of a line chart.
pub struct Line {
    pub name: String,
    pub points: Vec<(f64, f64)>,
}

/// Lines over a shared x axis, coloured from light (first) to dark (last); `fmt` writes the
/// y ticks. The first and last lines are named in a key.
pub fn line_chart(
    chart: &str,
    lines: &[Line],
    x_title: &str,
    fmt: &dyn Fn(f64) -> String,
) -> Result<String> {
    let height = 340;
    let finite = |p: &&(f64, f64)| p.0.is_finite() && p.1.is_finite();
    let x_max = finite_max(lines.iter().flat_map(|l| l.points.iter().map(|p| p.0)));
    let y_max = finite_max(lines.iter().flat_map(|l| l.points.iter().map(|p| p.1)));
    let (x_max, y_max) = (x_max.max(1.0), if y_max > 0.0 { y_max * 1.05 } else { 1.0 });
    draw_svg(chart, height, |root| {
        let mut c = ChartBuilder::on(root)
            .margin_top(28)
            .margin_right(24)
            .margin_bottom(4)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max)
            .map_err(|e| e.to_string())?;
        c.configure_mesh()
            .light_line_style(TRANSPARENT)
            .bold_line_style(GRID)
            .x_labels(12)
            .y_labels(6)
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| fmt(*y))
            .x_desc(x_title)
            .label_style(text_style(11, INK, HPos::Center, VPos::Center))
            .axis_desc_style(text_style(12, MUTED, HPos::Center, VPos::Center))
            .axis_style(MUTED)
            .draw()
            .map_err(|e| e.to_string())?;
        let n = lines.len().max(2) - 1;
        let colour = |i: usize| ramp(0.2 + 0.8 * i as f64 / n as f64);
        for (i, line) in lines.iter().enumerate() {
            let points: Vec<(f64, f64)> = line.points.iter().filter(finite).copied().collect();
            c.draw_series(LineSeries::new(points, colour(i).stroke_width(2)))
                .map_err(|e| e.to_string())?;
        }
        if let (Some(first), Some(last)) = (lines.first(), lines.last()) {
            legend(
                root,
                &[first.name.as_str(), last.name.as_str()],
                &[colour(0), colour(lines.len().saturating_sub(1))],
            )?;
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bar_chart_is_one_svg_with_a_bar_per_value_and_its_labels() {
        let labels = vec!["Champions".to_string(), "Lost".to_string()];
        let svg = bar_chart(
            "t",
            &labels,
            &[Bars {
                name: "customers",
                values: vec![3.0, 1.0],
            }],
            &|v| format!("{v:.0}"),
        )
        .unwrap();
        assert!(svg.starts_with("<svg"), "{svg}");
        assert_eq!(svg.matches("<svg").count(), 1);
        let texts: Vec<&str> = svg
            .split("<text")
            .skip(1)
            .map(|t| t[t.find('>').unwrap() + 1..t.find("</text>").unwrap()].trim())
            .collect();
        assert!(
            texts.contains(&"Champions") && texts.contains(&"Lost"),
            "{texts:?}"
        );
        assert!(svg.contains("font-size=\"12\""), "{svg}");
        // Two bars in the bar colour.
        assert_eq!(svg.matches("fill=\"#2563EB\"").count(), 2, "{svg}");
    }

    #[test]
    fn charts_of_empty_or_odd_data_still_draw() {
        let fmt = |v: f64| format!("{v}");
        let none: Vec<String> = vec![];
        let one = vec!["a".to_string()];
        bar_chart("t", &none, &[], &fmt).unwrap();
        bar_chart(
            "t",
            &one,
            &[Bars {
                name: "x",
                values: vec![f64::NAN, 2.0],
            }],
            &fmt,
        )
        .unwrap();
        funnel("t", &none, &[], &[]).unwrap();
        funnel("t", &one, &[-1.0], &["x".to_string()]).unwrap();
        heat_map("t", &none, &none, &[], ("x", "y"), &fmt).unwrap();
        let cells = [Cell {
            x: 3,
            y: 0,
            value: f64::INFINITY,
            text: "out of range".to_string(),
        }];
        heat_map("t", &one, &one, &cells, ("x", "y"), &fmt).unwrap();
        line_chart("t", &[], "x", &fmt).unwrap();
        line_chart(
            "t",
            &[Line {
                name: "l".to_string(),
                points: vec![(0.0, f64::NAN), (1.0, 1.0)],
            }],
            "x",
            &fmt,
        )
        .unwrap();
    }

    #[test]
    fn the_ramp_runs_from_light_to_dark() {
        assert_eq!(ramp(0.0), RAMP[0]);
        assert_eq!(ramp(1.0), RAMP[4]);
        assert_eq!(ramp(f64::NAN), RAMP[0]);
    }
}
