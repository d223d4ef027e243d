//! Report charts as SVG, drawn with plotters: bars for spending by
//! category, grouped bars for income against expense, lines for cash flow
//! and net worth. One panel per currency, each with its own axis and
//! legend, because amounts in different currencies are never put on one
//! scale (nor converted).
//!
//! **Money and floating point.** The chart's value axis is `i64` minor
//! units, so every tick and every printed amount is formatted from an exact
//! integer with [`Currency::format`]. The only place an amount becomes a
//! float is inside plotters, which maps an `i64` coordinate to a pixel
//! position; a rounding there moves a bar by a fraction of a pixel and
//! never changes a number anyone reads.
//!
//! Text is drawn as SVG `<text>` (plotters without its `ttf` feature lays
//! text out from an estimate and never loads a system font), so the
//! rendering needs no fonts on the server; the viewer's `sans-serif`
//! draws it.

use chrono::NaiveDate;
use freedumb_kit::money::Currency;
use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use crate::Money;
use crate::queries::{CashFlow, CategorySpending, IncomeExpense, NetWorth};
use crate::range::Range;

const WIDTH: u32 = 1000;
const TITLE_HEIGHT: u32 = 50;
const PANEL_HEIGHT: u32 = 340;
/// Categories shown as bars per panel; the rest are summed into "Other".
pub const MAX_BARS: usize = 12;
/// Axis labels longer than this are cut, so neighbours do not overlap.
const MAX_LABEL_CHARS: usize = 18;

/// The series colours, in order; a panel rarely has more than two.
const COLOURS: [RGBColor; 4] =
    [RGBColor(0x1f, 0x77, 0xb4), RGBColor(0xd6, 0x27, 0x28), RGBColor(0x2c, 0xa0, 0x2c), RGBColor(0xff, 0x7f, 0x0e)];

/// One named series of amounts, one per label or point.
#[derive(Debug, Clone)]
pub struct Series {
    pub name: String,
    pub values: Vec<i64>,
}

/// A bar panel: one currency, labels along the x axis, and one or more
/// series drawn side by side in each label's slot (grouped bars).
#[derive(Debug, Clone)]
pub struct BarPanel {
    pub currency: Currency,
    pub labels: Vec<String>,
    pub series: Vec<Series>,
}

/// A line panel: one currency, the dates of the points, one or more series.
#[derive(Debug, Clone)]
pub struct LinePanel {
    pub currency: Currency,
    pub dates: Vec<NaiveDate>,
    pub series: Vec<Series>,
}

#[derive(Debug, thiserror::Error)]
#[error("failed to draw the chart: {0}")]
pub struct ChartError(String);

fn err(e: impl std::fmt::Display) -> ChartError {
    ChartError(e.to_string())
}

/// The bars chart (a series per panel for plain bars, several for grouped).
pub fn bars(title: &str, x_desc: &str, panels: &[BarPanel]) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height(panels.len()))).into_drawing_area();
        let areas = frame(&root, title)?;
        if panels.is_empty() {
            no_data(&areas[0])?;
        }
        for (area, panel) in areas.iter().zip(panels) {
            bar_panel(area, x_desc, panel)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

/// The lines chart, dates along the x axis.
pub fn lines(title: &str, panels: &[LinePanel]) -> Result<String, ChartError> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height(panels.len()))).into_drawing_area();
        let areas = frame(&root, title)?;
        if panels.is_empty() {
            no_data(&areas[0])?;
        }
        for (area, panel) in areas.iter().zip(panels) {
            line_panel(area, panel)?;
        }
        root.present().map_err(err)?;
    }
    Ok(svg)
}

fn height(panels: usize) -> u32 {
    TITLE_HEIGHT + PANEL_HEIGHT * u32::try_from(panels.max(1)).unwrap_or(1)
}

type Area<'a> = DrawingArea<SVGBackend<'a>, Shift>;

/// A white page with the title, split into one area per panel.
fn frame<'a>(root: &Area<'a>, title: &str) -> Result<Vec<Area<'a>>, ChartError> {
    root.fill(&WHITE).map_err(err)?;
    let (top, body) = root.split_vertically(TITLE_HEIGHT);
    top.draw(&Text::new(
        title.to_owned(),
        (i32::try_from(WIDTH / 2).unwrap_or(0), 14),
        ("sans-serif", 22).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
    ))
    .map_err(err)?;
    let rows = (body.dim_in_pixel().1 / PANEL_HEIGHT).max(1);
    Ok(body.split_evenly((usize::try_from(rows).unwrap_or(1), 1)))
}

fn no_data(area: &Area<'_>) -> Result<(), ChartError> {
    let (w, h) = area.dim_in_pixel();
    area.draw(&Text::new(
        "No data in this period",
        (i32::try_from(w / 2).unwrap_or(0), i32::try_from(h / 2).unwrap_or(0)),
        ("sans-serif", 18).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Center)),
    ))
    .map_err(err)?;
    Ok(())
}

/// The value axis: always includes zero, never empty, with a quarter of
/// headroom for the legend and the amounts over the bars.
fn value_range(series: &[Series]) -> std::ops::Range<i64> {
    let values = series.iter().flat_map(|s| s.values.iter().copied());
    let (low, high) = values.fold((0i64, 0i64), |(lo, hi), v| (lo.min(v), hi.max(v)));
    let pad = (high.saturating_sub(low) / 4).max(1);
    let low = if low < 0 { low.saturating_sub(pad) } else { 0 };
    let high = if high > 0 || low == 0 { high.saturating_add(pad) } else { 0 };
    low..high
}

fn short(label: &str) -> String {
    if label.chars().count() <= MAX_LABEL_CHARS {
        label.to_owned()
    } else {
        let cut: String = label.chars().take(MAX_LABEL_CHARS - 1).collect();
        format!("{cut}…")
    }
}

fn bar_panel(area: &Area<'_>, x_desc: &str, panel: &BarPanel) -> Result<(), ChartError> {
    let currency = panel.currency;
    // At least two slots: plotters maps a segmented range of one slot onto
    // a point, which puts the bar and its label askew.
    let slots = i32::try_from(panel.labels.len().max(2)).map_err(err)?;
    let mut chart = ChartBuilder::on(area)
        .caption(currency.code(), ("sans-serif", 16))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(100)
        .build_cartesian_2d((0..slots - 1).into_segmented(), value_range(&panel.series))
        .map_err(err)?;
    let labels: Vec<String> = panel.labels.iter().map(|l| short(l)).collect();
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_desc(x_desc)
        .y_desc(format!("Amount ({})", currency.code()))
        .x_labels(labels.len().max(1))
        .x_label_formatter(&|x| match x {
            SegmentValue::CenterOf(i) => {
                usize::try_from(*i).ok().and_then(|i| labels.get(i)).cloned().unwrap_or_default()
            }
            _ => String::new(),
        })
        .y_label_formatter(&|minor| currency.format(*minor))
        .draw()
        .map_err(err)?;

    // Each label's slot is shared by the series (grouped bars): every bar
    // spans the whole slot in coordinates and is narrowed by pixel margins.
    let (plot_px, _) = chart.plotting_area().dim_in_pixel();
    let slot_px = plot_px / u32::try_from(slots).unwrap_or(1);
    let groups = u32::try_from(panel.series.len().max(1)).unwrap_or(1);
    let gap = slot_px / 8;
    let bar_px = slot_px.saturating_sub(2 * gap) / groups;
    for (n, series) in panel.series.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let n = u32::try_from(n).unwrap_or(0);
        let left = gap + n * bar_px;
        let right = slot_px.saturating_sub(left + bar_px);
        chart
            .draw_series(series.values.iter().enumerate().map(|(i, &v)| {
                let i = i32::try_from(i).unwrap_or(0);
                // The last slot ends at `Last`, the segmented range's end.
                let end = if i + 1 == slots { SegmentValue::Last } else { SegmentValue::Exact(i + 1) };
                let mut bar = Rectangle::new([(SegmentValue::Exact(i), 0), (end, v)], colour.filled());
                bar.set_margin(0, 0, left, right);
                bar
            }))
            .map_err(err)?
            .label(format!("{} ({})", series.name, currency.code()))
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], colour.filled()));
        // The amount over each bar, from the exact integer; only for plain
        // bars, few enough that the labels do not collide.
        if panel.series.len() == 1 && panel.labels.len() <= MAX_BARS {
            chart
                .draw_series(series.values.iter().enumerate().map(|(i, &v)| {
                    let i = i32::try_from(i).unwrap_or(0);
                    Text::new(
                        currency.format(v),
                        (SegmentValue::CenterOf(i), v),
                        ("sans-serif", 11).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Bottom)),
                    )
                }))
                .map_err(err)?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperRight)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(err)?;
    Ok(())
}

fn line_panel(area: &Area<'_>, panel: &LinePanel) -> Result<(), ChartError> {
    let currency = panel.currency;
    let (Some(&first), Some(&last)) = (panel.dates.first(), panel.dates.last()) else {
        return no_data(area);
    };
    // Days since the first date: an integer axis, labelled with the dates.
    let day = |d: NaiveDate| i32::try_from((d - first).num_days()).unwrap_or(i32::MAX);
    let span = day(last).max(1);
    let mut chart = ChartBuilder::on(area)
        .caption(currency.code(), ("sans-serif", 16))
        .margin(12)
        // Room for half of the last date label, which is centred on the
        // axis's end and was cut off at the edge.
        .margin_right(40)
        .x_label_area_size(40)
        .y_label_area_size(100)
        .build_cartesian_2d(0..span, value_range(&panel.series))
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc("Date")
        .y_desc(format!("Amount ({})", currency.code()))
        .x_labels(8)
        .x_label_formatter(&|d| {
            first
                .checked_add_days(chrono::Days::new(u64::try_from(*d).unwrap_or(0)))
                .map(|d| d.to_string())
                .unwrap_or_default()
        })
        .y_label_formatter(&|minor| currency.format(*minor))
        .draw()
        .map_err(err)?;
    for (n, series) in panel.series.iter().enumerate() {
        let colour = COLOURS[n % COLOURS.len()];
        let points: Vec<(i32, i64)> = panel.dates.iter().map(|&d| day(d)).zip(series.values.iter().copied()).collect();
        chart
            .draw_series(LineSeries::new(points, colour.stroke_width(2)))
            .map_err(err)?
            .label(format!("{} ({})", series.name, currency.code()))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .border_style(BLACK)
        .background_style(WHITE.mix(0.85))
        .draw()
        .map_err(err)?;
    Ok(())
}

// ---------------------------------------------------------------- the views as charts

fn currency_of(code: &str, amounts: impl IntoIterator<Item = Money>) -> Option<Currency> {
    amounts.into_iter().next().map(Money::currency).or_else(|| Currency::from_code(code))
}

fn title(what: &str, range: Range) -> String {
    format!("{what}, {} to {}", range.from(), range.to())
}

/// Bars of each top-level category's total (subcategories rolled up), the
/// largest [`MAX_BARS`]` - 1` by name and the rest summed as "Other".
pub fn spending_by_category(view: &CategorySpending, range: Range) -> Result<String, ChartError> {
    let panels: Vec<BarPanel> = view
        .currencies
        .iter()
        .filter_map(|c| {
            let currency = currency_of(&c.currency, c.categories.iter().map(|k| k.total))?;
            let mut labels = Vec::new();
            let mut values = Vec::new();
            let shown = if c.categories.len() > MAX_BARS { MAX_BARS - 1 } else { MAX_BARS };
            for category in c.categories.iter().take(shown) {
                labels.push(match (&category.name, category.category_id) {
                    (Some(name), _) => name.clone(),
                    (None, None) => "Uncategorised".to_owned(),
                    (None, Some(_)) => "(unnamed)".to_owned(),
                });
                values.push(category.total.minor());
            }
            let rest = &c.categories[shown.min(c.categories.len())..];
            if !rest.is_empty() {
                labels.push(format!("Other ({})", rest.len()));
                values.push(rest.iter().map(|k| k.total.minor()).fold(0i64, i64::saturating_add));
            }
            Some(BarPanel { currency, labels, series: vec![Series { name: "Spending".into(), values }] })
        })
        .collect();
    bars(&title("Spending by category", range), "Category", &panels)
}

/// Grouped bars: income and expense side by side for each month.
pub fn income_expense(view: &IncomeExpense, range: Range) -> Result<String, ChartError> {
    let panels: Vec<BarPanel> = view
        .currencies
        .iter()
        .filter_map(|c| {
            let currency = currency_of(&c.currency, [c.income])?;
            Some(BarPanel {
                currency,
                labels: c.months.iter().map(|m| m.month.clone()).collect(),
                series: vec![
                    Series { name: "Income".into(), values: c.months.iter().map(|m| m.income.minor()).collect() },
                    Series { name: "Expense".into(), values: c.months.iter().map(|m| m.expense.minor()).collect() },
                ],
            })
        })
        .collect();
    bars(&title("Income and expense", range), "Month", &panels)
}

/// Lines at each period's end: the closing balance and the period's net.
pub fn cash_flow(view: &CashFlow, range: Range) -> Result<String, ChartError> {
    let panels: Vec<LinePanel> = view
        .currencies
        .iter()
        .filter_map(|c| {
            let currency = currency_of(&c.currency, [c.opening_balance])?;
            Some(LinePanel {
                currency,
                dates: c.periods.iter().map(|p| p.end.get()).collect(),
                series: vec![
                    Series {
                        name: "Closing balance".into(),
                        values: c.periods.iter().map(|p| p.closing_balance.minor()).collect(),
                    },
                    Series { name: "Net".into(), values: c.periods.iter().map(|p| p.net.minor()).collect() },
                ],
            })
        })
        .collect();
    lines(&title("Cash flow", range), &panels)
}

/// Lines per day: the net worth, with accounts and investments apart when
/// there are investments at all.
pub fn net_worth(view: &NetWorth, range: Range) -> Result<String, ChartError> {
    let panels: Vec<LinePanel> = view
        .currencies
        .iter()
        .filter_map(|c| {
            let currency = currency_of(&c.currency, c.days.iter().map(|d| d.total))?;
            let mut series =
                vec![Series { name: "Net worth".into(), values: c.days.iter().map(|d| d.total.minor()).collect() }];
            if c.days.iter().any(|d| d.investments.minor() != 0) {
                series.push(Series {
                    name: "Accounts".into(),
                    values: c.days.iter().map(|d| d.accounts.minor()).collect(),
                });
                series.push(Series {
                    name: "Investments".into(),
                    values: c.days.iter().map(|d| d.investments.minor()).collect(),
                });
            }
            Some(LinePanel { currency, dates: c.days.iter().map(|d| d.date.get()).collect(), series })
        })
        .collect();
    lines(&title("Net worth", range), &panels)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_on_the_chart_are_formatted_from_the_exact_integers() {
        let jpy = Currency::from_code("JPY").unwrap();
        let kwd = Currency::from_code("KWD").unwrap();
        let svg = bars(
            "Spending & more",
            "Category",
            &[
                BarPanel {
                    currency: kwd,
                    labels: vec!["Rent <flat>".into(), "Food".into()],
                    series: vec![Series { name: "Spending".into(), values: vec![1_234_567, 1] }],
                },
                BarPanel {
                    currency: jpy,
                    labels: vec!["Travel".into()],
                    series: vec![Series { name: "Spending".into(), values: vec![5000] }],
                },
            ],
        )
        .unwrap();
        for text in [
            "Spending &amp; more",
            "Rent &lt;flat&gt;",
            "1234.567",
            "0.001",
            "Spending (KWD)",
            "Spending (JPY)",
            "5000",
        ] {
            assert!(svg.contains(text), "{text} is in the chart");
        }
    }

    #[test]
    fn a_chart_without_data_says_so() {
        assert!(lines("Net worth", &[]).unwrap().contains("No data in this period"));
    }
}
